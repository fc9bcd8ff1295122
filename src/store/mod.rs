//! The store: the one public type, and everything about an operation that is the same on every
//! engine.
//!
//! [`Store`] is a cheap `Arc` handle over an [`Engine`] chosen at open (see `engine/`). This module
//! checks arguments, applies the TTL defaults, serves replays from the replay cache, waits for keys
//! in flight, reports to `observe`, and turns the engine's decisions into the public types. The
//! engine keeps the data durable and decides nothing itself: the pure rules do.
//!
//! `close` stops the engine; any handle or lease used afterwards gets [`Error::Closed`].

mod builder;
mod bulk;
mod compaction;
mod health_watch;
mod rate;
mod replay_cache;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::notify::Notifier;
use crate::engine::write_counters::Counters;
use crate::status::{Health, Stats};
pub(crate) use builder::Settings;
pub use builder::{
    BeginOptions, DEFAULT_CACHE_SIZE, DEFAULT_COMPACTION_BATCH, DEFAULT_COMPACTION_INTERVAL,
    DEFAULT_LEASE_TTL, DEFAULT_LOG_MEMORY, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RECORD_TTL,
    DEFAULT_REDIS_TIMEOUT, DEFAULT_REPLAY_CACHE_SIZE, MAX_RESPONSE_BYTES_LIMIT, StoreBuilder,
};
pub use compaction::Reclaimed;
pub use health_watch::HealthWatch;

use crate::engine::embedded::Embedded;
use crate::engine::embedded::Location;
use crate::engine::{BeginRequest, Early, Engine, Seen};
use crate::error::{Error, Result};
use crate::idempotency::machine::{BeginDecision, BeginParams, Resolution, begin as decide};
use crate::idempotency::{Begin, Digest, Fingerprint, IdempotencyKey, Lease, RecordInfo, Replay};
use crate::observe::BeginOutcome;
use replay_cache::ReplayCache;

/// An open tollgate store. `Clone + Send + Sync`; clones share one engine (one file and its
/// writer, or one node's connections to a PostgreSQL schema).
///
/// # Examples
///
/// ```
/// use tollgate::{Store, idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse}};
/// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
/// # let path = dir.path().join("tollgate.redb");
/// let store = Store::open(&path)?;
/// let key = IdempotencyKey::new("user:42", "order-7f3a")?;
/// let request = Fingerprint::of(b"POST /orders {\"sku\":\"A1\"}");
///
/// match store.begin(&key, &request)? {
///     Begin::Acquired(lease) => lease.complete(StoredResponse::new(201, b"order 1".to_vec()))?,
///     _ => unreachable!("first request"),
/// }
/// // The retry is answered from the store.
/// let Begin::Replay(replay) = store.begin(&key, &request)? else { unreachable!() };
/// assert_eq!(replay.response().body, b"order 1");
/// store.close()?;
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    engine: Engine,
    /// The rate counters, when they live elsewhere than on `engine`.
    #[cfg(feature = "redis")]
    redis: Option<crate::engine::redis::Redis>,
    settings: Settings,
    notifier: Arc<Notifier>,
    counters: Arc<Counters>,
    /// Finished records for the replay fast path (`None`: disabled).
    replays: Option<ReplayCache>,
}

/// Rate counters that live elsewhere than on the store's engine, opened before it.
struct Elsewhere {
    #[cfg(feature = "redis")]
    redis: Option<crate::engine::redis::Redis>,
}

impl Elsewhere {
    #[cfg_attr(
        not(feature = "redis"),
        allow(unused_variables, clippy::unnecessary_wraps)
    )]
    fn open(builder: &StoreBuilder) -> Result<Elsewhere> {
        Ok(Elsewhere {
            #[cfg(feature = "redis")]
            redis: builder
                .redis_options()
                .map(|options| {
                    crate::engine::redis::Redis::open(
                        &options,
                        Arc::clone(&builder.clock),
                        builder.crash_policy,
                    )
                })
                .transpose()?,
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("epoch", &self.shared.engine.epoch())
            .field("closed", &self.shared.engine.is_closed())
            .finish_non_exhaustive()
    }
}

/// An open's error for the file at `path`, with the path in its message where the error does
/// not name it already (what it is, and its variant, stay the same).
fn naming(path: &Path, error: Error) -> Error {
    let shown = path.display().to_string();
    let named = |reason: String| {
        if reason.contains(&shown) {
            reason
        } else {
            format!("{shown}: {reason}")
        }
    };
    match error {
        Error::NotAStore(reason) => Error::NotAStore(named(reason)),
        Error::Corrupted(reason) => Error::Corrupted(named(reason)),
        Error::Storage(storage) if !storage.to_string().contains(&shown) => {
            Error::storage(AtPath {
                path: shown,
                source: storage.into_inner(),
            })
        }
        other => other,
    }
}

/// A storage error of the open of the file at `path`: "`path`: the error", the error its source.
#[derive(Debug)]
struct AtPath {
    path: String,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl std::fmt::Display for AtPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.source)
    }
}

impl std::error::Error for AtPath {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl Store {
    /// A new, empty store in memory with default settings: nothing is durable (see
    /// [`StoreBuilder::open_in_memory`]).
    ///
    /// # Errors
    /// As for [`StoreBuilder::open_in_memory`].
    pub fn in_memory() -> Result<Store> {
        StoreBuilder::default().open_in_memory()
    }

    /// The write-ahead log of the store file at `path`: `<path>.log` beside it. It is part of
    /// the store (it may hold acknowledged changes the file does not have yet): back up, copy or
    /// move the two together, and never delete one of them alone. See
    /// [`StoreBuilder::write_ahead_log`].
    ///
    /// ```
    /// # use std::path::Path;
    /// assert_eq!(
    ///     tollgate::Store::log_path(Path::new("/var/lib/app/orders.redb")),
    ///     Path::new("/var/lib/app/orders.redb.log")
    /// );
    /// ```
    pub fn log_path(path: impl AsRef<Path>) -> std::path::PathBuf {
        crate::engine::embedded::log_path(path.as_ref())
    }

    /// Opens the store at `path` with default settings, creating it if needed.
    ///
    /// # Errors
    /// As for [`StoreBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::builder().open(path)
    }

    /// A builder for a store with non-default settings.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    pub(crate) fn open_embedded(builder: &StoreBuilder, location: Location) -> Result<Store> {
        let settings = builder.settings()?;
        let elsewhere = Elsewhere::open(builder)?;
        let notifier = Arc::new(Notifier::default());
        let counters = Arc::new(Counters::default());
        let path = if let Location::File(path) = &location {
            Some(path.clone())
        } else {
            None
        };
        let engine = Embedded::open(
            &builder.embedded_options(&settings),
            location,
            Arc::clone(&notifier),
            Arc::clone(&counters),
        )
        .map_err(|error| match &path {
            Some(path) => naming(path, error),
            None => error,
        })?;
        Ok(Store::with_engine(
            builder,
            settings,
            Engine::Embedded(engine),
            elsewhere,
            notifier,
            counters,
        ))
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn open_postgres(builder: &StoreBuilder, conn: &str) -> Result<Store> {
        let settings = builder.settings()?;
        let elsewhere = Elsewhere::open(builder)?;
        let notifier = Arc::new(Notifier::default());
        let counters = Arc::new(Counters::default());
        let engine = crate::engine::postgres::Postgres::open(
            &builder.postgres_options(&settings),
            conn,
            &notifier,
            Arc::clone(&counters),
        )?;
        Ok(Store::with_engine(
            builder,
            settings,
            Engine::Postgres(engine),
            elsewhere,
            notifier,
            counters,
        ))
    }

    #[cfg_attr(not(feature = "redis"), allow(clippy::needless_pass_by_value))]
    fn with_engine(
        builder: &StoreBuilder,
        settings: Settings,
        engine: Engine,
        elsewhere: Elsewhere,
        notifier: Arc<Notifier>,
        counters: Arc<Counters>,
    ) -> Store {
        #[cfg(not(feature = "redis"))]
        let Elsewhere {} = elsewhere;
        Store {
            shared: Arc::new(Shared {
                engine,
                #[cfg(feature = "redis")]
                redis: elsewhere.redis,
                settings,
                notifier,
                counters,
                replays: ReplayCache::new(builder.replay_cache_size),
            }),
        }
    }

    /// Starts (or replays, or refuses) the request identified by `key` with the store's default
    /// TTLs and no waiting. See [`Store::begin_with`].
    ///
    /// # Errors
    /// As for [`Store::begin_with`].
    pub fn begin(&self, key: &IdempotencyKey, fingerprint: &Fingerprint) -> Result<Begin> {
        self.begin_with(key, fingerprint, &BeginOptions::default())
    }

    /// Starts the request identified by `key`:
    /// - no record, or an expired one: [`Begin::Acquired`] with a fresh lease;
    /// - RUNNING under a live lease: [`Begin::InFlight`] (or, with `options.wait`, wait for it);
    /// - RUNNING under an expired lease, or one from before the store was last opened: taken over,
    ///   [`Begin::Acquired`] with [`Lease::recovered`] set;
    /// - COMPLETED or FAILED: [`Begin::Replay`];
    /// - any record whose fingerprint differs: [`Begin::Mismatch`].
    ///
    /// A lease is durable before it is returned. Replays, mismatches and in-flight answers for
    /// committed records are served from a read transaction, without the writer.
    ///
    /// # Errors
    /// - [`Error::CapacityExceeded`] if a new record would exceed `max_records`.
    /// - [`Error::InvalidArgument`] for a zero TTL in `options`.
    /// - [`Error::Corrupted`] if the stored record cannot be decoded.
    /// - [`Error::Closed`], [`Error::Poisoned`], [`Error::Storage`].
    pub fn begin_with(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: &BeginOptions,
    ) -> Result<Begin> {
        let request = self.begin_request(fingerprint, options)?;
        let digest = key.digest();
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        loop {
            let seen = self.shared.notifier.generation();
            let outcome = self.begin_once(digest, request)?;
            match (outcome, deadline) {
                (Begin::InFlight { retry_after }, Some(deadline)) if Instant::now() < deadline => {
                    // Wake at the first of: a commit here, the lease's expiry, the caller's
                    // deadline, and the engine's poll (commits of other nodes wake nobody).
                    let mut wake = Instant::now()
                        .checked_add(retry_after)
                        .map_or(deadline, |expiry| expiry.min(deadline));
                    if let Some(poll) = self.shared.engine.records().wait_poll() {
                        wake = wake.min(Instant::now() + poll);
                    }
                    self.shared.notifier.wait_past(seen, wake);
                }
                (outcome, _) => return Ok(outcome),
            }
        }
    }

    /// [`Store::begin`] if memory can answer it, without waiting for any I/O: `Some` with the
    /// answer `begin` would give, or `None` when the answer needs the disk or the network.
    /// Memory answers a replay or a mismatch for a finished record in the replay cache
    /// ([`StoreBuilder::replay_cache_size`]); a begin that would take a lease, or a key the cache
    /// does not hold, answers `None`. Never writes.
    ///
    /// For callers on an async executor: answer on the worker when this says `Some`, hand
    /// `begin` to a blocking thread otherwise (the tower [`IdempotencyLayer`] does).
    ///
    /// ```
    /// use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
    /// use tollgate::{BeginOptions, Store};
    ///
    /// let store = Store::in_memory()?;
    /// let (key, request) = (IdempotencyKey::new("user:1", "k")?, Fingerprint::of(b"pay 10"));
    /// let options = BeginOptions::default();
    /// // A new key needs a lease, which is a write: memory cannot answer.
    /// assert!(store.try_begin(&key, &request, &options)?.is_none());
    /// if let Begin::Acquired(lease) = store.begin(&key, &request)? {
    ///     lease.complete(StoredResponse::new(201, b"paid".to_vec()))?;
    /// }
    /// store.begin(&key, &request)?; // the first replay reads the record and caches it
    /// let Some(Begin::Replay(replay)) = store.try_begin(&key, &request, &options)? else {
    ///     panic!("a cached replay is answered from memory");
    /// };
    /// assert_eq!(replay.response().body, b"paid");
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`Store::begin_with`].
    ///
    /// [`IdempotencyLayer`]: crate::tower::IdempotencyLayer
    pub fn try_begin(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: &BeginOptions,
    ) -> Result<Option<Begin>> {
        let request = self.begin_request(fingerprint, options)?;
        let digest = key.digest();
        Ok(match self.begin_from_cache(digest, request)? {
            FromCache::Answer(decision) => Some(self.to_begin(digest, decision)),
            FromCache::MustWrite | FromCache::NotCached => None,
        })
    }

    /// A begin of `fingerprint` with `options`' TTLs (or the store's defaults).
    fn begin_request(
        &self,
        fingerprint: &Fingerprint,
        options: &BeginOptions,
    ) -> Result<BeginRequest> {
        let (lease_ttl, record_ttl) = self.shared.settings.ttls(options)?;
        Ok(BeginRequest {
            fingerprint: fingerprint.0,
            lease_ttl,
            record_ttl,
        })
    }

    /// What the replay cache says about a begin of `digest`.
    fn begin_from_cache(&self, digest: Digest, request: BeginRequest) -> Result<FromCache> {
        let Some(cached) = self.shared.replays.as_ref().and_then(|c| c.get(&digest)) else {
            return Ok(FromCache::NotCached);
        };
        if self.shared.engine.is_closed() {
            return Err(Error::Closed);
        }
        self.shared.engine.check_usable()?;
        let params = BeginParams {
            fingerprint: request.fingerprint,
            now: self.shared.engine.records().now(),
            epoch: self.shared.engine.epoch(),
            owner_epoch: self.shared.engine.epoch(),
            lease_ttl: request.lease_ttl,
            record_ttl: request.record_ttl,
            next_token: 0,
        };
        Ok(match decide(Some(&cached), &params) {
            BeginDecision::Acquired { .. } => FromCache::MustWrite,
            decision => FromCache::Answer(decision),
        })
    }

    fn begin_once(&self, digest: Digest, request: BeginRequest) -> Result<Begin> {
        let records = self.shared.engine.records();
        // Fast path: a finished record in the replay cache is answered from memory (its answer
        // depends on nothing but the clock), then the engine may answer without writing.
        let cached = self.begin_from_cache(digest, request)?;
        if let FromCache::Answer(decision) = cached {
            return Ok(self.to_begin(digest, decision));
        }
        if let FromCache::NotCached = cached {
            let generation = self.shared.replays.as_ref().map(ReplayCache::generation);
            match records.begin_without_writing(&digest, request)? {
                Early::Answer(decision, record) => {
                    if let (Some(cache), Some(generation)) = (&self.shared.replays, generation) {
                        if matches!(decision, BeginDecision::Replay { .. }) {
                            cache.insert(digest, record, generation);
                        }
                    }
                    return Ok(self.to_begin(digest, decision));
                }
                Early::Write(seen) => {
                    let decision = records.begin(digest, request, seen)?;
                    return Ok(self.to_begin(digest, decision));
                }
            }
        }
        let decision = records.begin(digest, request, Seen::Nothing)?;
        Ok(self.to_begin(digest, decision))
    }

    fn to_begin(&self, digest: Digest, decision: BeginDecision) -> Begin {
        let (outcome, attempt) = match &decision {
            BeginDecision::Acquired { grant, .. } if grant.recovered => {
                (BeginOutcome::Takeover, grant.attempt)
            }
            BeginDecision::Acquired { grant, .. } => (BeginOutcome::Acquired, grant.attempt),
            BeginDecision::Replay { .. } => (BeginOutcome::Replay, 0),
            BeginDecision::InFlight { .. } => (BeginOutcome::InFlight, 0),
            BeginDecision::Mismatch => (BeginOutcome::Mismatch, 0),
        };
        crate::observe::begin(&digest, outcome, attempt);
        match decision {
            BeginDecision::Acquired { grant, .. } => Begin::Acquired(Lease {
                store: self.clone(),
                digest,
                token: grant.token,
                attempt: grant.attempt,
                recovered: grant.recovered,
                checkpoint: grant.checkpoint,
                expires_at: grant.lease_expires_at,
            }),
            BeginDecision::Replay { outcome, response } => {
                Begin::Replay(Replay { outcome, response })
            }
            BeginDecision::InFlight { retry_after } => Begin::InFlight {
                retry_after: Duration::from_nanos(retry_after),
            },
            BeginDecision::Mismatch => Begin::Mismatch,
        }
    }

    /// The state of `key`'s record, or `None` if there is none or it has expired.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the record cannot be decoded; [`Error::Closed`],
    /// [`Error::Poisoned`], [`Error::Storage`].
    pub fn get(&self, key: &IdempotencyKey) -> Result<Option<RecordInfo>> {
        let records = self.shared.engine.records();
        // Read first: an engine on a server refreshes its clock with the read.
        let record = records.read(&key.digest())?;
        let now = records.now();
        Ok(record
            .filter(|record| !record.is_expired(now))
            .map(|record| record.info()))
    }

    /// Up to `limit` records in digest order, starting after the digest `after` (pass the last
    /// digest of one page to get the next), each with its state and times, expired ones included.
    /// Raw keys are not stored, so records are named by their digest. A record that cannot be
    /// decoded is listed with its error.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::Storage`].
    pub fn list_records(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<(Digest, Result<RecordInfo>)>> {
        Ok(self
            .shared
            .engine
            .records()
            .list(after, limit)?
            .into_iter()
            .map(|(digest, record)| (digest, record.map(|r| r.info())))
            .collect())
    }

    /// Whether the store can serve now, for a readiness probe: [`Health::Ready`], or why not
    /// (closed; failed after an I/O error on its file; its database unreachable). On PostgreSQL
    /// this is one round trip to the server on a pooled connection (bounded like every call,
    /// [`POSTGRES_CALL_TIMEOUT`](crate::POSTGRES_CALL_TIMEOUT)); on the embedded engine it reads
    /// two flags. A failed probe is reported, never returned as an error.
    ///
    /// ```
    /// use tollgate::{Health, Store};
    ///
    /// let store = Store::in_memory()?;
    /// assert!(store.health().is_ready());
    /// store.clone().close()?;
    /// assert_eq!(store.health(), Health::Closed);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn health(&self) -> Health {
        let health = self.shared.engine.health();
        #[cfg(feature = "redis")]
        if let (Health::Ready, Some(redis)) = (&health, &self.shared.redis) {
            return redis.health();
        }
        health
    }

    /// Reads [`Store::health`] every `every` on a thread of its own, for readiness probes on an
    /// async runtime: [`HealthWatch::latest`] answers from memory, where `health()` may wait for
    /// a round trip to PostgreSQL or Redis. The watch holds a clone of the store until it is
    /// dropped (which stops and joins its thread).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `every`; [`Error::Storage`] if the thread cannot
    /// start.
    pub fn watch_health(&self, every: Duration) -> Result<HealthWatch> {
        HealthWatch::start(self, every)
    }

    /// Flushes, stops the writer thread, and releases the file, which can be opened again at once.
    /// Every clone of this store and every lease still alive gets [`Error::Closed`] afterwards.
    /// Closing a store that a clone already closed does nothing.
    ///
    /// # Errors
    /// [`Error::Storage`] if closing the file failed; [`Error::Poisoned`] if the writer thread had
    /// panicked; on a store that could not write (degraded: [`Health::Degraded`]), the error of
    /// the cause ([`Error::StorageFull`], [`Error::ReadOnly`], [`Error::Poisoned`]): its final
    /// commit (the clock's mark, Batched counters not yet written) could not be made, so the
    /// next open treats the session as one that crashed.
    pub fn close(self) -> Result<()> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            redis.close();
        }
        self.shared.engine.close()
    }

    /// Writes every batched rate counter changed so far, durably, and drops idle counters from
    /// memory. Batched mode does this by itself at least every `max_delay`; call it for a durable
    /// point of your choosing (before maintenance, at the end of a test). In Immediate mode there is
    /// nothing to flush.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`] (including when this flush failed).
    pub fn flush(&self) -> Result<()> {
        self.counter_engine().flush()
    }

    /// The store's numbers: records by state, rate counters and file size on disk, the writer's
    /// commits and writes since this open (`writes / commits` is the group-commit factor), and the
    /// last compaction sweep. Cheap: maintained counters, no scan.
    ///
    /// # Errors
    /// [`Error::Closed`] after `close`; [`Error::Storage`] if the file cannot be read.
    pub fn stats(&self) -> Result<Stats> {
        self.shared.engine.stats()
    }

    /// A view of the writer's command queue that outlives `close` (test support: lets a test see
    /// commands queued behind a held commit). `None` once closed. Drop it once the test has seen
    /// what it waited for: while it lives the queue stays connected, so a command sent after the
    /// writer stopped would wait for an answer instead of getting `Closed`.
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn command_queue_for_tests(&self) -> Option<crate::testing::CommandQueue> {
        match &self.shared.engine {
            Engine::Embedded(engine) => engine.command_queue().map(crate::testing::CommandQueue),
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => None,
        }
    }

    /// Holds (or releases) the embedded engine's log applier (test support): while held, what
    /// the write-ahead log acknowledges stays in the log and the overlay, out of redb, so a copy
    /// of the files is a crash image with a log to recover. Returns whether the store has a log.
    /// While held, whatever waits for redb to catch up waits too (`stats`, compaction, bulk
    /// loads, a full overlay); `close` releases it (and applies everything first).
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn hold_log_applier_for_tests(&self, hold: bool) -> bool {
        match &self.shared.engine {
            Engine::Embedded(engine) => engine.hold_applier(hold),
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => false,
        }
    }

    /// Moves the store's clock forward by `by` (test support): on the embedded engine, nothing
    /// (move the builder's `ManualClock`); on PostgreSQL, the schema's clock, for every node;
    /// for counters on Redis, the time this store's scripts decide at.
    ///
    /// # Errors
    /// [`Error::Closed`]; on PostgreSQL, [`Error::Unavailable`].
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn advance_database_clock_for_tests(&self, by: Duration) -> Result<()> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            redis.advance_clock_for_tests(by);
        }
        match &self.shared.engine {
            Engine::Embedded(_) => {
                let _ = by;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.advance_clock(by),
        }
    }

    /// Stops the store's clock at `at` (test support): on the embedded engine, nothing (set the
    /// builder's `ManualClock`); on PostgreSQL, the schema's clock, for every node, until it is
    /// set or advanced again; for counters on Redis, the time this store's scripts decide at. It may go back; the store's own estimate between round trips does
    /// not.
    ///
    /// # Errors
    /// [`Error::Closed`]; on PostgreSQL, [`Error::Unavailable`].
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn set_database_clock_for_tests(&self, at: std::time::SystemTime) -> Result<()> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            redis.set_clock_for_tests(crate::clock::system_time_to_nanos(at));
        }
        match &self.shared.engine {
            Engine::Embedded(_) => {
                let _ = at;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.set_clock(crate::clock::system_time_to_nanos(at)),
        }
    }

    /// Script calls and pipelines this store sent to Redis (test support: shows that concurrent
    /// checks share them). `None` without counters on Redis.
    #[cfg(all(feature = "redis", any(test, feature = "test-support")))]
    #[doc(hidden)]
    pub fn redis_calls_for_tests(&self) -> Option<(u64, u64)> {
        self.shared
            .redis
            .as_ref()
            .map(crate::engine::redis::Redis::counts)
    }

    /// Which engine the store runs on: `"embedded"` or `"postgres"`.
    pub fn engine_name(&self) -> &'static str {
        match &self.shared.engine {
            Engine::Embedded(_) => "embedded",
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => "postgres",
        }
    }

    /// The boot epoch of this open: one more than the previous open's.
    pub fn epoch(&self) -> u64 {
        self.shared.engine.epoch()
    }

    /// The default lease length ([`StoreBuilder::lease_ttl`]): a lease taken without
    /// [`BeginOptions::lease_ttl`] lapses this long after it was taken or last extended.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_nanos(self.shared.settings.lease_ttl)
    }

    /// The configured `max_response_bytes`.
    pub fn max_response_bytes(&self) -> usize {
        self.shared.settings.max_response_bytes
    }

    /// The engine that keeps the rate counters.
    pub(crate) fn counter_engine(&self) -> &dyn crate::engine::CounterEngine {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            return redis;
        }
        self.shared.engine.counters()
    }

    pub(crate) fn resolve(
        &self,
        digest: Digest,
        token: u64,
        resolution: Resolution,
    ) -> Result<Option<u64>> {
        let kind = match &resolution {
            Resolution::Complete(_) => "complete",
            Resolution::Fail(_) => "fail",
            Resolution::Release => "release",
            Resolution::Extend(_) => "extend",
            Resolution::SaveCheckpoint(_) => "checkpoint",
        };
        let resolved = self
            .shared
            .engine
            .records()
            .resolve(digest, token, resolution);
        match resolved {
            Ok(expiry) => {
                crate::observe::resolution(&digest, kind, token, false);
                Ok(expiry)
            }
            Err(Error::LeaseLost) => {
                crate::observe::resolution(&digest, kind, token, true);
                Err(Error::LeaseLost)
            }
            Err(error) => Err(error),
        }
    }
}

/// What the replay cache says about a begin.
// Returned once per begin and matched at once: boxing the answer would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum FromCache {
    /// The begin's answer (a replay or a mismatch), decided on the cached finished record.
    Answer(BeginDecision),
    /// The cached record has expired: the begin takes a new lease, through the engine's writer.
    MustWrite,
    /// The cache does not hold the key.
    NotCached,
}
