//! Rate counters on Redis (feature `redis`): a [`CounterEngine`] for fleets, whose records stay
//! on the store's own engine (a file, or PostgreSQL).
//!
//! - **One round trip, decided in Redis.** Every operation is one call of `counters.lua`, which
//!   runs the three algorithms in integer microseconds on Redis's `TIME`, so every node decides on
//!   one clock. `check_all` checks every limit before it charges any, in the same call.
//! - **Pipelined.** Each server has one I/O thread ([`link`]) that sends every waiting operation
//!   in one pipeline, grouped per cluster slot into shared script calls.
//! - **Cluster-ready.** Keys carry a hash tag per bucket ([`namespace`]); a subject's counters and
//!   the sentinel of its bucket share a slot; the store routes slots to masters itself
//!   ([`topology`]).
//! - **Data loss mints nothing.** Every bucket has a sentinel, created with the namespace. A
//!   missing one (a restart without persistence, a failover to an empty replica, a flush) means
//!   the bucket's counters were lost: with [`CrashPolicy::DrainOnRecovery`] the bucket is treated
//!   as fully spent from the moment the loss is found, as the embedded store treats its counters
//!   after a crash. A secret that changed under a running store is a loss too.
//! - **Bounded.** Every call has the store's Redis timeout; a server that fails opens a circuit
//!   breaker, and checks are refused at once with [`Error::Unavailable`] until a probe succeeds.
//!
//! [`CrashPolicy::DrainOnRecovery`]: crate::ratelimit::CrashPolicy::DrainOnRecovery

mod denials;
mod link;
mod namespace;
mod script;
mod server;

use server::{addr_of, cluster_slots, connect, put_secret, secret, server_error};
mod topology;

#[cfg(test)]
mod differential;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::clock::{Clock, system_time_to_nanos};
use crate::engine::CounterEngine;
use crate::error::{Error, Result};
use crate::ratelimit::charge::{OpKind, RateOutcome};
use crate::ratelimit::{CrashPolicy, Evaluation, Limit};
use denials::{Denial, DenialCache, Key};
use link::{Failure, Link, LinkConfig};
pub(crate) use namespace::check_namespace;
use namespace::{CLUSTER_BUCKETS, MicroSpec, Namespace};
use script::{Code, Op, Reply, ScriptTime, Status, Target};
use topology::Routes;

/// With the store's clock deciding (`redis_client_time`): how much later than its idle time a
/// counter expires, for a client clock up to a minute behind Redis's.
const CLIENT_TIME_EXPIRY_MARGIN_MS: u64 = 60_000;

/// How often an operation is tried again after the namespace or the cluster changed under it.
const ATTEMPTS: usize = 4;

/// The time a test set for the scripts (µs), or none: read on every operation, so an atomic.
#[derive(Debug)]
struct TestClock(AtomicU64);

impl Default for TestClock {
    fn default() -> Self {
        TestClock(AtomicU64::new(u64::MAX))
    }
}

impl TestClock {
    fn get(&self) -> Option<u64> {
        let now = self.0.load(Ordering::Acquire);
        (now != u64::MAX).then_some(now)
    }

    #[cfg(any(test, feature = "test-support"))]
    fn set(&self, now: u64) {
        self.0.store(now.min(u64::MAX - 1), Ordering::Release);
    }
}

/// What a store's builder says about its counters on Redis.
#[derive(Debug, Clone)]
pub(crate) struct RedisOptions {
    pub url: String,
    pub namespace: String,
    pub timeout: Duration,
    /// Scripts take the time from the store's clock instead of Redis `TIME`.
    pub client_time: bool,
    /// Denials of cost-1 checks are remembered and answered here until their retry time.
    pub denial_cache: bool,
    /// The CA (PEM) `rediss://` trusts instead of the system's.
    pub ca_certificate: Option<Vec<u8>>,
}

/// Rate counters in one namespace of a Redis server or cluster.
pub(crate) struct Redis {
    name: String,
    timeout: Duration,
    cluster: bool,
    drain: bool,
    config: LinkConfig,
    /// Each bucket's cluster slot (a key's slot never changes).
    slots: Vec<u16>,
    namespace: RwLock<Arc<Namespace>>,
    routes: RwLock<Arc<Routes>>,
    /// Held while the secret is checked after a loss, and while the cluster map is read.
    settling: Mutex<()>,
    closed: AtomicBool,
    /// The time scripts decide at, set by tests (µs).
    test_now: Arc<TestClock>,
    denials: Option<DenialCache>,
    /// The denial cache's clock when no test sets one.
    started: std::time::Instant,
}

impl Redis {
    /// Connects, reads (or creates) the namespace's secret, and maps the buckets to servers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad URL, namespace or timeout; [`Error::Unavailable`] if
    /// Redis cannot be reached within the timeout; [`Error::Storage`] if it refuses (a wrong
    /// password, say); [`Error::Corrupted`] for a malformed secret.
    pub(crate) fn open(
        options: &RedisOptions,
        clock: Arc<dyn Clock>,
        policy: CrashPolicy,
    ) -> Result<Redis> {
        check_namespace(&options.namespace)?;
        if options.timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "redis_timeout must be greater than zero".into(),
            ));
        }
        let client = match &options.ca_certificate {
            Some(pem) => redis::Client::build_with_tls(
                options.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(options.url.as_str()),
        }
        .map_err(|e| Error::InvalidArgument(format!("a bad Redis URL or certificate: {e}")))?;
        let info = client.get_connection_info().clone();
        let timeout = options.timeout;
        let test_now = Arc::new(TestClock::default());
        let now = {
            let test_now = Arc::clone(&test_now);
            let client_time = options.client_time;
            Arc::new(move || {
                if let Some(now) = test_now.get() {
                    // A test's clock stands still while Redis's runs on.
                    return ScriptTime {
                        now: Some(now),
                        expiry_margin_ms: 86_400_000,
                    };
                }
                if client_time {
                    return ScriptTime {
                        now: Some(system_time_to_nanos(clock.now()) / 1000),
                        expiry_margin_ms: CLIENT_TIME_EXPIRY_MARGIN_MS,
                    };
                }
                ScriptTime {
                    now: None,
                    expiry_margin_ms: 0,
                }
            })
        };
        let config = LinkConfig {
            info: info.clone(),
            timeout,
            now,
            // Redis decides every charge itself, so there is no reservation to bound a loss of
            // its data: every policy but TrustLastFlush drains.
            drain: policy != CrashPolicy::TrustLastFlush,
        };
        let mut setup = connect(&info, timeout)?;
        let info_text: String = redis::cmd("INFO")
            .arg("cluster")
            .query(&mut setup)
            .map_err(server_error)?;
        let cluster = info_text.contains("cluster_enabled:1");
        let (secret, created) = secret(&info, timeout, &options.namespace)?;
        let buckets = if cluster { CLUSTER_BUCKETS } else { 1 };
        let namespace = Arc::new(Namespace::new(&options.namespace, secret, buckets)?);
        let (slots, routes) = if cluster {
            let mut pipe = redis::pipe();
            for sentinel in namespace.sentinels() {
                pipe.cmd("CLUSTER").arg("KEYSLOT").arg(&**sentinel);
            }
            let slots: Vec<u16> = pipe.query(&mut setup).map_err(server_error)?;
            let routes = Routes::cluster(&slots, &cluster_slots(&mut setup)?, None, &config)?;
            (slots, routes)
        } else {
            let addr = addr_of(&info);
            let link = Link::start(addr, &config).map_err(Error::storage)?;
            (
                vec![0; usize::from(buckets)],
                Routes::standalone(Arc::new(link)),
            )
        };
        let redis = Redis {
            name: options.namespace.clone(),
            timeout,
            cluster,
            drain: config.drain,
            config,
            slots,
            namespace: RwLock::new(Arc::clone(&namespace)),
            routes: RwLock::new(Arc::new(routes)),
            settling: Mutex::new(()),
            closed: AtomicBool::new(false),
            test_now,
            denials: options.denial_cache.then(DenialCache::new),
            started: std::time::Instant::now(),
        };
        if created {
            redis.on_every_bucket(&namespace, Code::Init)?;
        }
        Ok(redis)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Stops deciding at Redis's `TIME`: scripts decide at `at` (test support).
    pub(crate) fn set_clock_for_tests(&self, at: u64) {
        self.test_now.set(at / 1000);
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Moves the scripts' test clock forward by `by` (from Redis's time if it was not set).
    pub(crate) fn advance_clock_for_tests(&self, by: Duration) {
        let from = self
            .test_now
            .get()
            .unwrap_or_else(|| system_time_to_nanos(std::time::SystemTime::now()) / 1000);
        self.test_now
            .set(from.saturating_add(u64::try_from(by.as_micros()).unwrap_or(u64::MAX)));
    }

    /// `Ok` while the engine is open.
    fn check_usable(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Whether the counters can be reached: `Unreachable` while a server's breaker is open.
    pub(crate) fn health(&self) -> crate::Health {
        if self.closed.load(Ordering::Acquire) {
            return crate::Health::Closed;
        }
        let routes = Arc::clone(&self.routes.read());
        for link in &routes.links {
            if let Some(reason) = link.open_reason() {
                return crate::Health::Unreachable {
                    reason: format!("Redis at {}: {reason}", link.addr),
                };
            }
        }
        crate::Health::Ready
    }

    /// Stops every I/O thread after the operations queued before. Twice does nothing.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let routes = Arc::clone(&self.routes.read());
        for link in &routes.links {
            link.close();
        }
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Script calls and pipelines sent so far, over every server (tests and benchmarks).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let routes = Arc::clone(&self.routes.read());
        routes.links.iter().fold((0, 0), |(calls, pipes), link| {
            let (c, p) = link.counts();
            (calls + c, pipes + p)
        })
    }

    /// Runs `code` on every bucket's sentinel (creating a namespace, marking a loss).
    fn on_every_bucket(&self, namespace: &Arc<Namespace>, code: Code) -> Result<()> {
        let routes = Arc::clone(&self.routes.read());
        let id = Arc::clone(&namespace.secret_id);
        let mut groups: HashMap<(usize, u16), Vec<Op>> = HashMap::new();
        for bucket in 0..namespace.buckets() {
            let Some((slot, link)) = routes.route(bucket) else {
                continue;
            };
            let index = routes
                .links
                .iter()
                .position(|l| Arc::ptr_eq(l, link))
                .unwrap_or(0);
            groups.entry((index, slot)).or_default().push(Op::on_bucket(
                code,
                namespace.sentinel(bucket),
                Arc::clone(&id),
            ));
        }
        let pending: Vec<_> = groups
            .into_iter()
            .filter_map(|((index, slot), ops)| {
                let link = routes.links.get(index)?;
                Some(link.submit(ops, slot, self.timeout))
            })
            .collect();
        for pending in pending {
            pending.wait().map_err(failure_error)?;
        }
        Ok(())
    }

    /// After a bucket was found lost or foreign: makes sure the namespace's secret is the one in
    /// Redis (putting this store's back if it is gone). Returns whether it stayed the same; if
    /// another node's secret replaced it, this store adopts that one and, since the change means
    /// the namespace was lost, drains every bucket (`DrainOnRecovery`).
    fn settle(&self, seen: &Arc<Namespace>) -> Result<bool> {
        let _settling = self.settling.lock();
        let current = Arc::clone(&self.namespace.read());
        if !Arc::ptr_eq(&current, seen) {
            return Ok(false); // settled meanwhile by another caller
        }
        let stored = put_secret(&self.config.info, self.timeout, &self.name, current.secret)?;
        if stored == current.secret {
            return Ok(true);
        }
        let adopted = Arc::new(Namespace::new(&self.name, stored, current.buckets())?);
        *self.namespace.write() = Arc::clone(&adopted);
        crate::observe::redis_namespace_lost(&self.name);
        if self.drain {
            self.on_every_bucket(&adopted, Code::Mark)?;
        }
        Ok(false)
    }

    /// Reads the cluster's map again (after `MOVED` or `ASK`).
    fn refresh_routes(&self) -> Result<()> {
        let _settling = self.settling.lock();
        let old = Arc::clone(&self.routes.read());
        let mut last = Error::Unavailable("no Redis Cluster master answered".into());
        for link in &old.links {
            let Some((host, port)) = link.addr.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            let info = self
                .config
                .info
                .clone()
                .set_addr(redis::ConnectionAddr::Tcp(host.to_string(), port));
            let ranges = connect(&info, self.timeout).and_then(|mut c| cluster_slots(&mut c));
            match ranges {
                Ok(ranges) => {
                    let routes = Routes::cluster(&self.slots, &ranges, Some(&old), &self.config)?;
                    *self.routes.write() = Arc::new(routes);
                    return Ok(());
                }
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// The denial cache's clock (µs): a test's clock when one is set, else monotonic time.
    fn cache_now(&self) -> u64 {
        if let Some(now) = self.test_now.get() {
            return now;
        }
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A cost-1 check of one counter that the denial cache can answer: a denial Redis gave,
    /// counted down.
    fn cached_denial(&self, kind: OpKind, key: &Key, limit: &Limit) -> Option<RateOutcome> {
        if kind != (OpKind::Charge { cost: 1 }) {
            return None;
        }
        let answer = self.denials.as_ref()?.answer(key, self.cache_now())?;
        Some(RateOutcome {
            allowed: false,
            deciding: 0,
            evaluation: Evaluation {
                allowed: false,
                state: limit.spec.fresh(0),
                remaining: 0,
                reset_after: answer.reset_after.saturating_mul(1000),
                retry_after: Some(answer.retry_after.saturating_mul(1000)),
            },
        })
    }

    /// Keeps what Redis answered a single-counter operation for the denial cache: a denied
    /// cost-1 check is remembered; any other change of the counter forgets it.
    fn remember(&self, kind: OpKind, key: &Key, reply: &Reply, asked_at: u64) {
        let Some(denials) = &self.denials else { return };
        match (kind, reply.allowed, reply.retry_after) {
            (OpKind::Charge { cost: 1 }, false, Some(retry)) => {
                denials.insert(key, Denial::new(asked_at, retry, reply.reset_after));
            }
            (OpKind::Peek, _, _) => {}
            _ => denials.forget(key),
        }
    }

    /// Whether the store is open and the operation is one Redis can run. (Each limit's spec in
    /// the script's units is checked where its target is made, before anything is sent.)
    fn check_operation(&self, checks: &[(&Limit, &str)]) -> Result<()> {
        self.check_usable()?;
        if checks.len() > script::MAX_TARGETS {
            return Err(Error::InvalidArgument(format!(
                "counters on Redis take at most {} limits in one check_all; got {}",
                script::MAX_TARGETS,
                checks.len()
            )));
        }
        if self.cluster {
            check_one_slot(checks)?;
        }
        Ok(())
    }

    fn run_op(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
        self.check_operation(checks)?;
        let (code, amount) = Code::of(kind);
        let (mut recover, mut replace) = (false, false);
        for _ in 0..ATTEMPTS {
            let namespace = Arc::clone(&self.namespace.read());
            let mut targets = Vec::with_capacity(checks.len());
            // The first counter's bucket and hash (its name for the denial cache).
            let mut first = None;
            for (limit, subject) in checks {
                let bucket = namespace.bucket(subject)?;
                let (counter, hash) = namespace.counter_key(limit.name(), subject, bucket)?;
                first.get_or_insert((bucket, hash));
                targets.push(Target {
                    counter,
                    sentinel: namespace.sentinel(bucket),
                    spec: MicroSpec::of(&limit.spec)?,
                });
            }
            let single = first.map(|(_, hash)| hash).filter(|_| targets.len() == 1);
            if let (Some(key), [(limit, _)]) = (&single, checks) {
                if let Some(outcome) = self.cached_denial(kind, key, limit) {
                    return Ok(outcome);
                }
            }
            let asked_at = self.cache_now();
            let id = Arc::clone(&namespace.secret_id);
            let bucket = first.map_or(0, |(bucket, _)| bucket);
            let mut ops = Vec::with_capacity(1 + usize::from(replace) * checks.len());
            if replace {
                let mut buckets = checks
                    .iter()
                    .map(|(_, subject)| namespace.bucket(subject))
                    .collect::<Result<Vec<u16>>>()?;
                buckets.sort_unstable();
                buckets.dedup();
                for &bucket in &buckets {
                    ops.push(Op::on_bucket(
                        Code::Replace,
                        namespace.sentinel(bucket),
                        Arc::clone(&id),
                    ));
                }
            }
            ops.push(Op {
                code,
                amount,
                recover,
                secret_id: id,
                targets,
            });
            let routes = Arc::clone(&self.routes.read());
            let Some((slot, link)) = routes.route(bucket) else {
                return Err(Error::Unavailable(format!(
                    "no Redis server for bucket {bucket}"
                )));
            };
            let replies = match link.call(ops, slot, self.timeout) {
                Ok(replies) => replies,
                Err(Failure::Refused { code, message }) => match code.as_deref() {
                    Some("MOVED" | "ASK" | "READONLY") if self.cluster => {
                        self.refresh_routes()?;
                        continue;
                    }
                    Some("TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "BUSY" | "MASTERDOWN") => {
                        return Err(Error::Unavailable(format!("Redis: {message}")));
                    }
                    _ => return Err(Error::storage(format!("Redis refused a call: {message}"))),
                },
                Err(failure) => return Err(failure_error(failure)),
            };
            let Some(reply) = replies.last() else {
                return Err(Error::storage("Redis answered no operation"));
            };
            match reply.status {
                Status::Done => {
                    if let Some(key) = &single {
                        self.remember(kind, key, reply, asked_at);
                    }
                    return outcome(reply, checks);
                }
                Status::Lost => {
                    crate::observe::redis_bucket_lost(&self.name);
                    recover = self.settle(&namespace)?;
                }
                Status::Foreign => replace = self.settle(&namespace)?,
            }
        }
        Err(Error::Unavailable(format!(
            "the Redis namespace {:?} kept changing under the operation",
            self.name
        )))
    }
}

impl CounterEngine for Redis {
    fn run(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
        self.run_op(kind, checks)
    }

    fn flush(&self) -> Result<()> {
        self.check_usable() // every change is in Redis when its call returns
    }
}

/// On a cluster, the limits of one operation must share a slot: their subjects' slot parts.
fn check_one_slot(checks: &[(&Limit, &str)]) -> Result<()> {
    let mut parts = checks
        .iter()
        .map(|(_, subject)| namespace::slot_part(subject));
    let first = parts.next();
    if parts.all(|part| Some(part) == first) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "on a Redis Cluster, the subjects of one check_all must share a slot: give them a \
             common hash tag, like \"{user:42}\" and \"{user:42}:uploads\" (see the README)"
                .into(),
        ))
    }
}

/// A reply as the store's outcome (times back in nanoseconds).
fn outcome(reply: &Reply, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
    let Some((limit, _)) = checks.get(reply.deciding) else {
        return Err(Error::storage(format!(
            "Redis named limit {} of {} as deciding",
            reply.deciding,
            checks.len()
        )));
    };
    Ok(RateOutcome {
        allowed: reply.allowed,
        deciding: reply.deciding,
        evaluation: Evaluation {
            allowed: reply.allowed,
            // Redis keeps the state; the store's decision uses only the numbers.
            state: limit.spec.fresh(0),
            remaining: reply.remaining,
            reset_after: reply.reset_after.saturating_mul(1000),
            retry_after: reply.retry_after.map(|r| r.saturating_mul(1000)),
        },
    })
}

fn failure_error(failure: Failure) -> Error {
    match failure {
        Failure::NotSent(why) => Error::Unavailable(format!("Redis: {why}")),
        Failure::InDoubt(why) => Error::InDoubt(format!("Redis: {why}")),
        Failure::Refused { message, .. } => {
            Error::storage(format!("Redis refused a call: {message}"))
        }
    }
}
