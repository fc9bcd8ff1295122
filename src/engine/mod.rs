//! The engines behind a [`Store`](crate::Store), and the seam between them and the store.
//!
//! `Store` is the one public type. Everything that is the same on every engine lives above this
//! seam, in `store/`: argument checks, TTL defaults, the replay cache, waiting for an in-flight
//! key, observability, the shape of a rate `Decision`. Below it, an [`Engine`] chosen at open keeps
//! the records and the counters durable and serializes changes to each key:
//!
//! - [`embedded`]: one redb file, one writer at a time, group commit (today's single node);
//! - `postgres` (feature `postgres`): many nodes on one `PostgreSQL` schema;
//! - `redis` (feature `redis`): rate counters only, on Redis or a Redis Cluster, beside the
//!   records of either engine above.
//!
//! The seam is at the level of *operations* (a begin, a resolution, a rate check), not of table
//! writes: a server database has its own concurrency and group commit, which one writer thread
//! would waste. Two traits split it, [`RecordEngine`] and [`CounterEngine`], so that records on
//! one engine and counters on another can be combined.
//!
//! # Rules every engine keeps
//! - **Decisions are not the engine's.** An engine reads the current state, asks the pure rules
//!   (`idempotency::machine`, `ratelimit::charge`) what to do, and stores the answer. No engine
//!   re-implements a rule; the engines differ only in how they read, lock and write.
//! - **Every operation is atomic.** An operation that fails leaves nothing behind, also when the
//!   engine applies many operations in one transaction.
//! - **Acknowledged means durable.** A successful answer to a change comes after its commit.
//! - **Raw keys never reach storage.** Records are named by digests, counters by keyed hashes.

pub(crate) mod codec;
pub(crate) mod compactor;
pub(crate) mod embedded;
pub(crate) mod notify;
pub(crate) mod oneshot;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
pub(crate) mod processes;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(target_os = "linux")]
pub(crate) mod shared;
pub(crate) mod write_counters;

pub(crate) mod seam;

use crate::error::Result;
use crate::status::Stats;

pub(crate) use seam::{
    BeginRequest, BulkRecords, CounterEngine, Early, RecordEngine, Seen, Swept, lease_expiry,
    stored_rate,
};

/// The engine a store was opened on.
// One per store, inside its `Arc`: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Engine {
    Embedded(embedded::Embedded),
    #[cfg(feature = "postgres")]
    Postgres(postgres::Postgres),
    /// A file shared by the processes of a host: this process owns it or is a client.
    #[cfg(target_os = "linux")]
    Shared(shared::Shared),
}

/// `$body` on whichever engine `$engine` is, as `$name`.
macro_rules! on_engine {
    ($engine:expr, $name:ident => $body:expr) => {
        match $engine {
            Engine::Embedded($name) => $body,
            #[cfg(feature = "postgres")]
            Engine::Postgres($name) => $body,
            #[cfg(target_os = "linux")]
            Engine::Shared($name) => $body,
        }
    };
}

impl Engine {
    pub(crate) fn records(&self) -> &dyn RecordEngine {
        on_engine!(self, engine => engine)
    }

    pub(crate) fn counters(&self) -> &dyn CounterEngine {
        on_engine!(self, engine => engine)
    }

    /// One compaction step: removes up to `limit` expired records and idle counters.
    pub(crate) fn compact_step(&self, limit: usize) -> Result<Swept> {
        on_engine!(self, engine => engine.compact_step(limit))
    }

    /// The store's numbers (the record counts, commits and writes come from the engine).
    pub(crate) fn stats(&self) -> Result<Stats> {
        on_engine!(self, engine => engine.stats())
    }

    /// This open's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        on_engine!(self, engine => engine.epoch())
    }

    /// Whether the engine can serve now (`Store::health`).
    pub(crate) fn health(&self) -> crate::Health {
        on_engine!(self, engine => engine.health())
    }

    /// `Ok` while the engine can serve operations (not poisoned, not closed).
    pub(crate) fn check_usable(&self) -> Result<()> {
        on_engine!(self, engine => engine.check_usable())
    }

    /// Whether `close` has run.
    pub(crate) fn is_closed(&self) -> bool {
        on_engine!(self, engine => engine.is_closed())
    }

    /// Stops the engine's threads after everything queued before, joins them and releases its
    /// storage. Closing twice does nothing.
    pub(crate) fn close(&self) -> Result<()> {
        on_engine!(self, engine => engine.close())
    }
}
