//! The store: the one public type, and everything about an operation that is the same on every
//! engine.
//!
//! [`Store`] is a cheap `Arc` handle over an [`Engine`] chosen at open (see `engine/`). This module
//! checks arguments, applies the TTL defaults, serves replays from the replay cache, waits for keys
//! in flight, reports to `observe`, and turns the engine's decisions into the public types. The
//! engine keeps the data durable and decides nothing itself: the pure rules do.
//!
//! `close` stops the engine; any handle or lease used afterwards gets [`Error::Closed`](crate::Error::Closed).

mod begin;
mod builder;
mod bulk;
mod compaction;
mod health_watch;
mod lease;
mod opening;
mod rate;
mod replay_cache;
#[cfg(any(test, feature = "test-support"))]
mod test_hooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

use crate::engine::Engine;
use crate::error::Result;
use crate::idempotency::{Digest, IdempotencyKey, RecordInfo};
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

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("epoch", &self.shared.engine.epoch())
            .field("closed", &self.shared.engine.is_closed())
            .finish_non_exhaustive()
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

    /// The state of `key`'s record, or `None` if there is none or it has expired.
    ///
    /// # Errors
    /// [`Error::Corrupted`](crate::Error::Corrupted) if the record cannot be decoded; [`Error::Closed`](crate::Error::Closed),
    /// [`Error::Poisoned`](crate::Error::Poisoned), [`Error::Storage`](crate::Error::Storage).
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
    /// [`Error::Closed`](crate::Error::Closed), [`Error::Poisoned`](crate::Error::Poisoned), [`Error::Storage`](crate::Error::Storage).
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
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero `every`; [`Error::Storage`](crate::Error::Storage) if the thread cannot
    /// start.
    pub fn watch_health(&self, every: Duration) -> Result<HealthWatch> {
        HealthWatch::start(self, every)
    }

    /// Flushes, stops the writer thread, and releases the file, which can be opened again at once.
    /// Every clone of this store and every lease still alive gets [`Error::Closed`](crate::Error::Closed) afterwards.
    /// Closing a store that a clone already closed does nothing.
    ///
    /// # Errors
    /// [`Error::Storage`](crate::Error::Storage) if closing the file failed; [`Error::Poisoned`](crate::Error::Poisoned) if the writer thread had
    /// panicked; on a store that could not write (degraded: [`Health::Degraded`]), the error of
    /// the cause ([`Error::StorageFull`](crate::Error::StorageFull), [`Error::ReadOnly`](crate::Error::ReadOnly), [`Error::Poisoned`](crate::Error::Poisoned)): its final
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
    /// [`Error::Closed`](crate::Error::Closed), [`Error::Poisoned`](crate::Error::Poisoned) (including when this flush failed).
    pub fn flush(&self) -> Result<()> {
        self.counter_engine().flush()
    }

    /// The store's numbers: records by state, rate counters and file size on disk, the writer's
    /// commits and writes since this open (`writes / commits` is the group-commit factor), and the
    /// last compaction sweep. Cheap: maintained counters, no scan.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) after `close`; [`Error::Storage`](crate::Error::Storage) if the file cannot be read.
    pub fn stats(&self) -> Result<Stats> {
        self.shared.engine.stats()
    }

    /// Which engine the store runs on: `"embedded"`, `"shared"` (a file shared by the processes
    /// of a host, [`StoreBuilder::open_shared`]) or `"postgres"`.
    pub fn engine_name(&self) -> &'static str {
        match &self.shared.engine {
            Engine::Embedded(_) => "embedded",
            #[cfg(target_os = "linux")]
            Engine::Shared(_) => "shared",
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => "postgres",
        }
    }

    /// For a store opened with [`StoreBuilder::open_shared`]: the process id of the process
    /// that owns its file now (this process's own when it does), or `None` while no owner can
    /// be reached. `None` for every other store.
    pub fn shared_owner(&self) -> Option<u32> {
        match &self.shared.engine {
            #[cfg(target_os = "linux")]
            Engine::Shared(engine) => engine.owner_pid(),
            _ => None,
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
}
