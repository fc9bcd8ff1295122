//! Store configuration: [`StoreBuilder`] for the store, [`BeginOptions`] per call.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock, duration_to_nanos};
use crate::error::{Error, Result};
use crate::ratelimit::{CrashPolicy, RateDurability};

mod embedded;
mod postgres;
mod redis;
#[cfg(target_os = "linux")]
mod shared;

use redis::RedisSettings;

/// Default time a finished record is kept: 24 hours.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default lease duration: 30 seconds.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// Default largest stored response: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default [`StoreBuilder::log_memory`]: 4 MiB.
pub const DEFAULT_LOG_MEMORY: usize = 4 * 1024 * 1024;
/// The write-ahead log's segment size: 4 MiB, so a frame holds a default-sized response.
pub(crate) const LOG_SEGMENT_BYTES: u32 = 4 * 1024 * 1024;
/// Largest `max_response_bytes` accepted: 256 MiB, well inside the engine's value limit.
pub const MAX_RESPONSE_BYTES_LIMIT: usize = 256 * 1024 * 1024;
/// Default page cache: 64 MiB.
pub const DEFAULT_CACHE_SIZE: usize = 64 * 1024 * 1024;
/// Default budget of the replay cache: 16 MiB.
pub const DEFAULT_REPLAY_CACHE_SIZE: usize = 16 * 1024 * 1024;
/// Default time between background compaction sweeps: 60 s.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(60);
/// Default most removals in one compaction step (one write transaction): 1,000.
pub const DEFAULT_COMPACTION_BATCH: usize = 1000;
/// Default bound on every Redis call (`StoreBuilder::redis_timeout`): 250 ms.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Options for one [`Store::begin_with`](crate::Store::begin_with) call. `Default` takes the store's TTLs and does not wait.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tollgate::BeginOptions;
/// let options = BeginOptions { wait: Some(Duration::from_secs(2)), ..BeginOptions::default() };
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BeginOptions {
    /// How long the finished record is kept. Default = the store's `record_ttl`.
    pub record_ttl: Option<Duration>,
    /// How long the lease lasts before another request may take over. Default = the store's
    /// `lease_ttl`.
    pub lease_ttl: Option<Duration>,
    /// While the key is in flight, wait up to this long for it to finish (or for its lease to be
    /// released or to expire) instead of returning [`Begin::InFlight`](crate::idempotency::Begin::InFlight)
    /// at once. Default = no waiting.
    pub wait: Option<Duration>,
}

/// The settings an open store runs with, in the units the writer uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub record_ttl: u64,
    pub lease_ttl: u64,
    pub max_records: Option<u64>,
    pub max_response_bytes: usize,
    pub compaction_batch: usize,
}

impl Settings {
    /// The TTLs for one call, in nanoseconds.
    pub(crate) fn ttls(&self, options: &BeginOptions) -> Result<(u64, u64)> {
        let pick = |given: Option<Duration>, default: u64, what: &str| match given {
            Some(ttl) if ttl.is_zero() => Err(Error::InvalidArgument(format!(
                "{what} must be greater than zero"
            ))),
            Some(ttl) => Ok(duration_to_nanos(ttl)),
            None => Ok(default),
        };
        Ok((
            pick(options.lease_ttl, self.lease_ttl, "lease_ttl")?,
            pick(options.record_ttl, self.record_ttl, "record_ttl")?,
        ))
    }
}

/// Configures and opens a [`Store`](crate::Store). Made by [`Store::builder`](crate::Store::builder).
#[must_use]
#[derive(Clone)]
// Independent switches of the open, each with its own setter: not a state machine.
#[allow(clippy::struct_excessive_bools)]
pub struct StoreBuilder {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) record_ttl: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) max_records: Option<u64>,
    pub(crate) max_response_bytes: usize,
    pub(crate) cache_size: usize,
    pub(crate) replay_cache_size: usize,
    /// `None`: never set (each engine has its default).
    pub(crate) rate_durability: Option<RateDurability>,
    pub(crate) crash_policy: CrashPolicy,
    pub(crate) compaction_interval: Option<Duration>,
    pub(crate) compaction_batch: usize,
    pub(crate) quick_repair: bool,
    pub(crate) verify_on_open: bool,
    /// Changes are acknowledged at the write-ahead log and applied to redb in the background
    /// (`None`: the default for the location, on for files, off for simulated disks).
    pub(crate) write_ahead_log: Option<bool>,
    /// Set by [`StoreBuilder::open_read_only`]: nothing is written, ever.
    pub(crate) read_only: bool,
    /// The most bytes of acknowledged changes not yet in redb (the overlay's cap).
    pub(crate) log_memory: usize,
    /// The log's segment size (test support shrinks it); its segments follow from `log_memory`.
    pub(crate) log_segment_bytes: u32,
    /// The PostgreSQL schema (`None`: `tollgate`).
    pub(crate) postgres_schema: Option<String>,
    /// Whether `open_postgres` may create (or upgrade) its schema.
    pub(crate) postgres_create_schema: bool,
    /// This node's stable name on PostgreSQL (`None`: a random one per open).
    pub(crate) node_id: Option<String>,
    /// Connections (worker threads) per PostgreSQL store.
    pub(crate) postgres_pool_size: Option<usize>,
    /// How many of them write (`None`: the engine's default for the pool's size).
    pub(crate) postgres_writers: Option<usize>,
    /// Whether a lone caller's change goes to PostgreSQL in one round trip.
    pub(crate) postgres_one_round_trip: bool,
    /// The rate-counter secret of a newly created file (test support only; `None`: random).
    pub(crate) rate_secret: Option<(u64, u64)>,
    /// Rate counters on Redis.
    pub(crate) redis: RedisSettings,
}

impl Default for StoreBuilder {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            record_ttl: DEFAULT_RECORD_TTL,
            lease_ttl: DEFAULT_LEASE_TTL,
            max_records: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            cache_size: DEFAULT_CACHE_SIZE,
            replay_cache_size: DEFAULT_REPLAY_CACHE_SIZE,
            rate_durability: None,
            read_only: false,
            crash_policy: CrashPolicy::default(),
            compaction_interval: Some(DEFAULT_COMPACTION_INTERVAL),
            compaction_batch: DEFAULT_COMPACTION_BATCH,
            quick_repair: false,
            verify_on_open: false,
            write_ahead_log: None,
            log_memory: DEFAULT_LOG_MEMORY,
            log_segment_bytes: LOG_SEGMENT_BYTES,
            postgres_schema: None,
            postgres_create_schema: true,
            node_id: None,
            postgres_pool_size: None,
            postgres_writers: None,
            postgres_one_round_trip: true,
            rate_secret: None,
            redis: RedisSettings {
                url: None,
                namespace: None,
                timeout: DEFAULT_REDIS_TIMEOUT,
                client_time: false,
                denial_cache: true,
                ca_certificate: None,
            },
        }
    }
}

impl std::fmt::Debug for StoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("record_ttl", &self.record_ttl)
            .field("lease_ttl", &self.lease_ttl)
            .field("max_records", &self.max_records)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("cache_size", &self.cache_size)
            .field("replay_cache_size", &self.replay_cache_size)
            .field("rate_durability", &self.rate_durability)
            .field("crash_policy", &self.crash_policy)
            .field("compaction_interval", &self.compaction_interval)
            .field("compaction_batch", &self.compaction_batch)
            .field("quick_repair", &self.quick_repair)
            .field("write_ahead_log", &self.write_ahead_log)
            .field("log_memory", &self.log_memory)
            .field("verify_on_open", &self.verify_on_open)
            .field("postgres_schema", &self.postgres_schema)
            .field("postgres_create_schema", &self.postgres_create_schema)
            .field("node_id", &self.node_id)
            .field("postgres_pool_size", &self.postgres_pool_size)
            .field("postgres_writers", &self.postgres_writers)
            .field("postgres_one_round_trip", &self.postgres_one_round_trip)
            .field("redis_counters", &self.redis.url.is_some())
            .field("redis_namespace", &self.redis.namespace)
            .field("redis_timeout", &self.redis.timeout)
            .field("redis_client_time", &self.redis.client_time)
            .field("redis_denial_cache", &self.redis.denial_cache)
            .finish_non_exhaustive()
    }
}

impl StoreBuilder {
    /// The time source. Default = [`SystemClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long a finished record is replayed (and how long an abandoned RUNNING record is
    /// remembered after its lease expires). Default = 24 hours.
    pub fn record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl;
        self
    }

    /// How long a lease lasts before another request may take the record over. Default = 30 s.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// The most records the store holds; a `begin` that would create one more fails with
    /// [`Error::CapacityExceeded`](crate::Error::CapacityExceeded) (expired records are removed first; live ones never are).
    /// Default = unlimited.
    pub fn max_records(mut self, limit: u64) -> Self {
        self.max_records = Some(limit);
        self
    }

    /// The largest response (and checkpoint) stored, as counted by
    /// [`StoredResponse::size`](crate::idempotency::StoredResponse::size). Default = 1 MiB; at most
    /// 256 MiB.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The storage engine's page cache, in bytes. Default = 64 MiB.
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Memory for finished records kept decoded, so that replays of recent keys skip the storage
    /// engine (a finished record never changes until it expires, so the copy is always current).
    /// Counted as the responses' sizes plus 128 bytes each; below 64 KiB there is no cache.
    /// Default = 16 MiB.
    pub fn replay_cache_size(mut self, bytes: usize) -> Self {
        self.replay_cache_size = bytes;
        self
    }

    /// When rate-limit decisions become durable. Default =
    /// `RateDurability::Batched { max_delay: 50 ms }`.
    pub fn rate_durability(mut self, durability: RateDurability) -> Self {
        self.rate_durability = Some(durability);
        self
    }

    /// How rate counters are treated after an unclean shutdown of a batched session. Default =
    /// [`CrashPolicy::DrainOnRecovery`].
    pub fn crash_policy(mut self, policy: CrashPolicy) -> Self {
        self.crash_policy = policy;
        self
    }

    /// How often the background thread sweeps expired records and idle rate counters. Default =
    /// 60 s.
    pub fn compaction_interval(mut self, interval: Duration) -> Self {
        self.compaction_interval = Some(interval);
        self
    }

    /// Whether to run the background compaction thread at all. Default = `true`. Without it,
    /// expired records still behave as absent; they are removed by [`Store::compact_now`](crate::Store::compact_now), or,
    /// at `max_records`, by the capacity check.
    pub fn background_compaction(mut self, enabled: bool) -> Self {
        if enabled {
            self.compaction_interval
                .get_or_insert(DEFAULT_COMPACTION_INTERVAL);
        } else {
            self.compaction_interval = None;
        }
        self
    }

    /// The most removals in one compaction step, that is in one write transaction shared with
    /// foreground requests. Smaller steps stall foreground writes less; larger ones sweep faster.
    /// Default = 1,000.
    pub fn compaction_batch(mut self, batch: usize) -> Self {
        self.compaction_batch = batch;
        self
    }

    /// Fixes the secret that keys rate counters when this open creates the file, instead of drawing
    /// it at random, so that a test image is byte for byte the same in every process (fuzz
    /// regression inputs flip bytes at fixed offsets). Test support only: a known secret lets
    /// anyone craft colliding subjects.
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn rate_secret_for_tests(mut self, secret: (u64, u64)) -> Self {
        self.rate_secret = Some(secret);
        self
    }

    pub(crate) fn counters_elsewhere(&self) -> bool {
        self.redis.url.is_some()
    }

    pub(crate) fn settings(&self) -> Result<Settings> {
        if self.counters_elsewhere() {
            if let Some(RateDurability::Batched { .. }) = self.rate_durability {
                return Err(Error::InvalidArgument(
                    "RateDurability::Batched does not apply to counters on Redis: Redis decides \
                     every check when it is made (leave rate_durability unset)"
                        .into(),
                ));
            }
        }
        if self.record_ttl.is_zero() || self.lease_ttl.is_zero() {
            return Err(Error::InvalidArgument(
                "record_ttl and lease_ttl must be greater than zero".into(),
            ));
        }
        if self.max_records == Some(0) {
            return Err(Error::InvalidArgument(
                "max_records must be at least 1".into(),
            ));
        }
        if let Some(RateDurability::Batched { max_delay }) = self.rate_durability {
            if max_delay.is_zero() {
                return Err(Error::InvalidArgument(
                    "Batched max_delay must be greater than zero; use Immediate for no delay"
                        .into(),
                ));
            }
        }
        if self.compaction_batch == 0 || self.compaction_interval.is_some_and(|i| i.is_zero()) {
            return Err(Error::InvalidArgument(
                "compaction_batch and compaction_interval must be greater than zero".into(),
            ));
        }
        if self.postgres_pool_size == Some(0) {
            return Err(Error::InvalidArgument(
                "postgres_pool_size must be at least 1".into(),
            ));
        }
        if self.max_response_bytes > MAX_RESPONSE_BYTES_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "max_response_bytes is {}; at most {MAX_RESPONSE_BYTES_LIMIT} is allowed",
                self.max_response_bytes
            )));
        }
        Ok(Settings {
            record_ttl: duration_to_nanos(self.record_ttl),
            lease_ttl: duration_to_nanos(self.lease_ttl),
            max_records: self.max_records,
            max_response_bytes: self.max_response_bytes,
            compaction_batch: self.compaction_batch,
        })
    }
}
