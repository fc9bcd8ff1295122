//! Store configuration: [`StoreBuilder`] for the store, [`BeginOptions`] per call.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::Store;
use crate::clock::{Clock, SystemClock, duration_to_nanos};
use crate::engine::embedded::Location;
use crate::error::{Error, Result};
use crate::ratelimit::{CrashPolicy, RateDurability};

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

/// Options for one [`Store::begin_with`] call. `Default` takes the store's TTLs and does not wait.
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

/// Configures and opens a [`Store`]. Made by [`Store::builder`].
#[must_use]
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
    /// The rate-counter secret of a newly created file (test support only; `None`: random).
    pub(crate) rate_secret: Option<(u64, u64)>,
    /// Rate counters on Redis.
    pub(crate) redis: RedisSettings,
}

/// What the builder says about rate counters on Redis.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    /// The URL (`None`: the counters live on the store's own engine).
    url: Option<String>,
    /// The namespace of every key on Redis (`None`: `tollgate`).
    namespace: Option<String>,
    /// The bound on every Redis call.
    timeout: Duration,
    /// Redis scripts decide on this store's clock instead of Redis `TIME`.
    client_time: bool,
    /// Denials from Redis are remembered and answered locally until their retry time.
    denial_cache: bool,
    /// The certificate authority (PEM) `rediss://` trusts instead of the system's.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    ca_certificate: Option<Vec<u8>>,
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
    /// [`Error::CapacityExceeded`] (expired records are removed first; live ones never are).
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
    /// expired records still behave as absent; they are removed by [`Store::compact_now`], or,
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

    /// redb's quick-repair: every commit also writes the allocator state, so that opening after a
    /// crash needs no repair walk over the whole file (which takes time proportional to the file).
    /// The price is a second fsync per commit, roughly halving the durable commit rate. Default =
    /// off: crashes are rare and repair runs once, commits run all the time. See
    /// `docs/BENCHMARKS.md` for measured open times.
    pub fn quick_repair(mut self, enabled: bool) -> Self {
        self.quick_repair = enabled;
        self
    }

    /// Acknowledge each change once it is in the write-ahead log (`<file>.log`, beside the
    /// store's file) and write it into redb later, in large transactions on a thread of their
    /// own. Every change is still durable before it is acknowledged (the log is synced first);
    /// what moves off the caller's path is redb's copy-on-write B-tree work, and a request begun
    /// and completed between two applications is written to the B-tree once. Reads see the
    /// acknowledged state at once (an in-memory overlay holds what redb has not yet). Default =
    /// on. A store that was opened with the log keeps one (its file is format 3): turning it off
    /// later still replays and applies it at open, then writes redb directly. In-memory stores
    /// ignore it (they have no log file); on the test-support simulated disk it is off unless
    /// set. See `docs/DESIGN.md`, "The write-ahead log".
    pub fn write_ahead_log(mut self, enabled: bool) -> Self {
        self.write_ahead_log = Some(enabled);
        self
    }

    /// The most bytes of acknowledged changes that wait in memory for redb (and, rounded up to
    /// whole 4 MiB segments, the size of the log's ring on disk). When the applier falls behind
    /// this, writers wait for it rather than memory growing. Default = 4 MiB (about 13,000
    /// short requests, each charged its response plus 256 bytes: a third of a second of the
    /// engine's fastest writes); the log's ring is at
    /// least 8 MiB (two segments). A larger cap lets the applier lag further behind bursts; it
    /// also bounds what an open after a crash replays (see `docs/BENCHMARKS.md`).
    pub fn log_memory(mut self, bytes: usize) -> Self {
        self.log_memory = bytes;
        self
    }

    /// Test support: the log's segment size (small segments make a small ring, cheap on a
    /// simulated disk). Not a stable API.
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn log_segment_bytes_for_tests(mut self, bytes: u32) -> Self {
        self.log_segment_bytes = bytes;
        self
    }

    /// Verify the checksum of every page when opening, not only after a crash. A file damaged
    /// outside tollgate (a failing disk, a stray write, a bad copy) then fails to open with
    /// [`Error::Corrupted`] instead of being trusted. Without it, redb may panic on such a file:
    /// tollgate turns a panic into [`Error::Corrupted`] or [`Error::Storage`], but the `open_corrupt`
    /// fuzz target found damage that makes redb abort the process (a panic while unwinding), which
    /// no library can catch. The price is reading the whole file at open (see
    /// `docs/BENCHMARKS.md`). Default = off: crashes and power loss need no verification (redb
    /// detects torn commits by itself); this is for files whose media you do not trust.
    pub fn verify_on_open(mut self, enabled: bool) -> Self {
        self.verify_on_open = enabled;
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

    /// Opens the existing store at `path` for reads only, writing nothing, ever: no epoch is
    /// bumped, no table made, no log recovered into the file (the log's frames not yet in the
    /// file are read and shown, as a degraded store shows them). `get`, `list_records`, `stats`,
    /// `peek` and replays answer; every write is refused with [`Error::ReadOnly`]. For tools
    /// that look at a store (the `tollgate` CLI), and for copies of a store that must stay as
    /// they are. The file must not be open for writing elsewhere: a store served by a running
    /// process is refused with [`Error::AlreadyOpen`] (redb locks the file; read-only opens share
    /// it with each other).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
    /// # let path = dir.path().join("orders.redb");
    /// use tollgate::Store;
    /// use tollgate::idempotency::{Fingerprint, IdempotencyKey};
    ///
    /// let key = IdempotencyKey::new("orders", "o-1")?;
    /// let store = Store::open(&path)?;
    /// let _ = store.begin(&key, &Fingerprint::of(b"POST /orders"))?; // a lease, RUNNING
    /// store.close()?;
    /// # let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| tollgate::Error::InvalidArgument(e.to_string()));
    /// let before = read(&path)?;
    /// let view = Store::builder().open_read_only(&path)?;
    /// assert!(view.get(&key)?.is_some());
    /// assert!(view.begin(&IdempotencyKey::new("orders", "o-2")?, &Fingerprint::of(b"x")).is_err());
    /// view.close()?;
    /// assert!(read(&path)? == before, "a read-only open writes nothing");
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::Storage`] naming the path if there is no file at `path`.
    /// - [`Error::AlreadyOpen`] if a process has the file open for writing.
    /// - [`Error::NotAStore`], [`Error::IncompatibleFormat`], [`Error::Corrupted`] (a missing or
    ///   foreign log among them), as for [`StoreBuilder::open`].
    pub fn open_read_only(mut self, path: impl AsRef<Path>) -> Result<Store> {
        self.read_only = true;
        self.compaction_interval = None;
        Store::open_embedded(&self, Location::File(path.as_ref().to_owned()))
    }

    /// Opens the store at `path`, creating the file if it does not exist.
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`] for a zero TTL, a zero `max_records`, a `max_response_bytes`
    ///   over 256 MiB, a zero Batched `max_delay`, or a zero compaction interval or batch.
    /// - [`Error::AlreadyOpen`] if another process or `Store` has the file open.
    /// - [`Error::NotAStore`] if the file is not a tollgate store;
    ///   [`Error::IncompatibleFormat`] if a newer tollgate wrote it. Neither changes the file.
    /// - [`Error::Storage`] for I/O errors.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Store> {
        Store::open_embedded(&self, Location::File(path.as_ref().to_owned()))
    }

    /// Opens a store that lives in memory only: the embedded engine with the same semantics as
    /// a file (the same writer, decisions, replays and rate counters), on redb's in-memory
    /// backend. **Nothing is durable**: everything is gone when the store is dropped or closed,
    /// and each call makes a new, empty store. For tests of code that uses tollgate, where a
    /// temporary file adds nothing.
    ///
    /// ```
    /// use tollgate::Store;
    /// use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
    ///
    /// let store = Store::builder().open_in_memory()?;
    /// let key = IdempotencyKey::new("user:1", "order-1")?;
    /// let request = Fingerprint::of(b"POST /orders");
    /// if let Begin::Acquired(lease) = store.begin(&key, &request)? {
    ///     lease.complete(StoredResponse::new(201, b"created".to_vec()))?;
    /// }
    /// assert!(matches!(store.begin(&key, &request)?, Begin::Replay(_)));
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the settings [`StoreBuilder::open`] refuses.
    pub fn open_in_memory(self) -> Result<Store> {
        Store::open_embedded(&self, Location::memory())
    }

    /// Opens the store on a simulated disk (crash and I/O-failure tests only).
    ///
    /// # Errors
    /// As for [`StoreBuilder::open`]; a disk whose power is cut or whose operations fail gives
    /// [`Error::Storage`].
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn open_simulated(self, disk: &crate::testing::SimDisk) -> Result<Store> {
        Store::open_embedded(&self, Location::Simulated(disk.clone()))
    }

    /// Opens a store on PostgreSQL: records and counters in tables of one schema, shared by
    /// every store (every *node*) opened on it. `conn` is a libpq connection string or URL
    /// (`host=db user=app dbname=orders sslmode=verify-full sslrootcert=/etc/ca.pem`, or
    /// `postgresql://app@db/orders?sslmode=require`); `connect_timeout` defaults to 5 s, TCP
    /// keepalives to `keepalives_idle=5 keepalives_interval=2 keepalives_retries=3` and
    /// `tcp_user_timeout` to 10 s (so that a connection to a vanished host fails within seconds),
    /// each unless the string sets it.
    ///
    /// The schema is created, or checked and migrated, at open. Decisions are taken on the
    /// database server's clock: a `clock` set on this builder does not decide here. Rate counters
    /// are always [`RateDurability::Immediate`](crate::ratelimit::RateDurability::Immediate).
    /// Calls block on the network: in async code, call them from `spawn_blocking` (the tower
    /// layers do).
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`] for a bad connection string, schema name or node id, for
    ///   `RateDurability::Batched` or `max_records` (not available on PostgreSQL), and for the
    ///   settings [`StoreBuilder::open`] refuses.
    /// - [`Error::Unavailable`] if the server cannot be reached within the connect timeout.
    /// - [`Error::AlreadyOpen`] if a live store already runs with this `node_id` on the schema.
    /// - [`Error::IncompatibleFormat`] if a newer tollgate created the schema.
    /// - [`Error::Storage`] for anything else the server refuses (a permission, say).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn open_postgres(self, conn: &str) -> Result<Store> {
        Store::open_postgres(&self, conn)
    }

    /// The PostgreSQL schema for tollgate's tables (see [`StoreBuilder::open_postgres`]): 1 to
    /// 63 characters of `a-z`, `0-9` and `_`. Stores on different schemas never see each other's
    /// data. Default = `tollgate`.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_schema(mut self, name: &str) -> Self {
        self.postgres_schema = Some(name.to_string());
        self
    }

    /// Whether [`StoreBuilder::open_postgres`] creates its schema and tables when they do not
    /// exist (and upgrades an older schema). With `false`, such a schema is an error that names
    /// it, and nothing is created: for tools that look at a schema (the `tollgate` CLI), where a
    /// mistyped name must not become a new schema. Default = `true`.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_create_schema(mut self, create: bool) -> Self {
        self.postgres_create_schema = create;
        self
    }

    /// A stable name for this node on PostgreSQL (1 to 64 characters of `A-Z a-z 0-9 . _ : -`).
    /// Each open of a name starts a new epoch: RUNNING records left by its earlier runs are
    /// taken over at once by whoever meets them. Only one live store may use a name on a schema.
    /// Default = a random name per open (then only lease expiry frees its leases).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn node_id(mut self, id: &str) -> Self {
        self.node_id = Some(id.to_string());
        self
    }

    /// How many connections (each with its worker thread) a PostgreSQL store keeps: its writers
    /// ([`postgres_writers`](Self::postgres_writers)), which put the changes of the moment into
    /// one transaction each, and the others for reads and maintenance (plus one more, held for
    /// the node's lock). At least 2; default 4 (two writers, two for reads).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_pool_size(mut self, connections: usize) -> Self {
        self.postgres_pool_size = Some(connections);
        self
    }

    /// How many of a PostgreSQL store's connections are writers. Each writer gathers the changes
    /// queued while it is free (begins, resolutions, rate changes) into one transaction, so with
    /// two, one batch's commit waits for its flush while the next batch is locked and decided
    /// on another connection. Default 2 (1 if the pool has only 2 connections); it must leave
    /// at least one connection of [`postgres_pool_size`](Self::postgres_pool_size) for reads.
    /// A server further away (round trips of milliseconds) gains from more.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_writers(mut self, writers: usize) -> Self {
        self.postgres_writers = Some(writers);
        self
    }

    /// Keeps this store's rate counters in Redis (feature `redis`): every `check`, `check_n`,
    /// `check_all`, `peek`, `refund` and `reset` is decided by one script call on the server, on
    /// Redis's clock, so every store (every node) using the same server and namespace counts the
    /// same counters. The idempotency records stay on the engine the store is opened on (a file,
    /// or PostgreSQL). `url` is `redis://[user:password@]host:port[/db]`, or the address of any
    /// node of a Redis Cluster (the store finds the others).
    ///
    /// Every decision is made by Redis when it is taken: [`RateDurability`] does not apply (an
    /// explicit `Batched` is refused at open) and the counters last as long as Redis keeps them.
    /// When Redis loses them (a restart without persistence, a failover to an empty replica, a
    /// flush), the store notices and applies its [`CrashPolicy`](crate::ratelimit::CrashPolicy).
    ///
    /// ```no_run
    /// use tollgate::Store;
    /// use tollgate::ratelimit::{Limit, Quota};
    ///
    /// let store = Store::builder()
    ///     .rate_counters_redis("redis://127.0.0.1:6379")
    ///     .redis_namespace("shop-api")
    ///     .open_in_memory()?; // records in memory here; a file or PostgreSQL in production
    /// let login = Limit::new("login", Quota::per_minute(5))?;
    /// assert!(store.check(&login, "user:42")?.allowed());
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn rate_counters_redis(mut self, url: &str) -> Self {
        self.redis.url = Some(url.to_string());
        self
    }

    /// The namespace of every key the store writes to Redis (see
    /// [`StoreBuilder::rate_counters_redis`]): 1 to 64 characters of `A-Z a-z 0-9 _ - . :`.
    /// Stores on different namespaces never see each other's counters; every key of one starts
    /// with `<namespace>:`. Default = `tollgate`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_namespace(mut self, namespace: &str) -> Self {
        self.redis.namespace = Some(namespace.to_string());
        self
    }

    /// The longest a rate operation waits for Redis (to connect, send and be answered) before
    /// it fails with [`Error::Unavailable`] (or [`Error::InDoubt`] for a charge that was sent):
    /// never a silent allow. After such a failure the store stops sending to that server (a
    /// circuit breaker) and refuses at once until a probe finds it back. Default = 250 ms.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis.timeout = timeout;
        self
    }

    /// Decide on this store's clock instead of Redis's `TIME`, for deployments whose Redis
    /// refuses `TIME` inside scripts (some proxies and managed services). Then nodes whose clocks
    /// disagree decide differently: keep them synchronized. Default = `false`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_client_time(mut self, enabled: bool) -> Self {
        self.redis.client_time = enabled;
        self
    }

    /// Remember denials: a check of cost 1 on one counter that Redis denied is denied again
    /// by this store, without asking Redis, until the retry time Redis gave, for at most one
    /// second after Redis said so. A flood of denied requests (a bot guessing passwords) then
    /// costs Redis one call per subject per second per node. The cache never allows anything;
    /// after a `refund` or `reset` of that counter on *another* node it may deny for up to that
    /// second what Redis would now allow (one here drops the entry at once). `peek` and
    /// multi-limit checks always ask Redis. Default = `true`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_denial_cache(mut self, enabled: bool) -> Self {
        self.redis.denial_cache = enabled;
        self
    }

    /// For `rediss://` URLs: trust the certificate authority in `pem` (one or more PEM
    /// certificates) instead of the system's trust store, for a Redis whose certificate a private
    /// CA signed. The server's name is checked against its certificate either way. Default =
    /// the system's store (which honours `SSL_CERT_FILE`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.redis.ca_certificate = Some(pem.into());
        self
    }

    /// The Redis engine's options, if the counters live there.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_options(&self) -> Option<crate::engine::redis::RedisOptions> {
        let url = self.redis.url.clone()?;
        Some(crate::engine::redis::RedisOptions {
            url,
            namespace: self
                .redis
                .namespace
                .clone()
                .unwrap_or_else(|| "tollgate".to_string()),
            timeout: self.redis.timeout,
            client_time: self.redis.client_time,
            denial_cache: self.redis.denial_cache,
            ca_certificate: self.redis.ca_certificate.clone(),
        })
    }

    /// Whether the rate counters live elsewhere than on the store's engine.
    /// The embedded engine's options, from this builder and its checked `settings`.
    pub(crate) fn embedded_options(&self, settings: &Settings) -> crate::engine::embedded::Options {
        crate::engine::embedded::Options {
            clock: Arc::clone(&self.clock),
            rate_flush_every: match self.rate_durability.unwrap_or_default() {
                // Counters on another engine: this one keeps none (and no cache for them).
                _ if self.counters_elsewhere() => None,
                RateDurability::Batched { max_delay } => Some(max_delay),
                RateDurability::Immediate => None,
            },
            crash_policy: self.crash_policy,
            write_ahead_log: self.write_ahead_log,
            log_memory: self.log_memory,
            log_segment_bytes: self.log_segment_bytes,
            cache_size: self.cache_size,
            quick_repair: self.quick_repair,
            verify_on_open: self.verify_on_open,
            rate_secret: self.rate_secret,
            read_only: self.read_only,
            compaction_interval: self.compaction_interval,
            compaction_batch: settings.compaction_batch,
            max_records: settings.max_records,
        }
    }

    /// The PostgreSQL engine's options, from this builder and its checked `settings`.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres_options(&self, settings: &Settings) -> crate::engine::postgres::Options {
        crate::engine::postgres::Options {
            schema: self.postgres_schema.clone(),
            create_schema: self.postgres_create_schema,
            node_id: self.node_id.clone(),
            pool_size: self.postgres_pool_size,
            writers: self.postgres_writers,
            rate_secret: self.rate_secret,
            batched_rates: matches!(self.rate_durability, Some(RateDurability::Batched { .. })),
            max_records: settings.max_records.is_some(),
            compaction_interval: self.compaction_interval,
            compaction_batch: settings.compaction_batch,
        }
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
