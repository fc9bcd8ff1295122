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
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod write_counters;

use crate::error::Result;
use crate::idempotency::machine::{BeginDecision, Resolution};
use crate::idempotency::{Digest, Record};
use crate::ratelimit::charge::{OpKind, RateOutcome};
use crate::ratelimit::{Limit, RateState, Spec, idle_at, is_idle};
use crate::status::Stats;
use codec::StoredRate;

/// What a `begin` asks for, besides its key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BeginRequest {
    pub fingerprint: [u8; 32],
    pub lease_ttl: u64,
    pub record_ttl: u64,
}

/// What a caller's own read of a key saw, for the engine's begin to trust if it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing to trust: the engine reads the key.
    Nothing,
    /// The key was absent, read after the embedded overlay's generation was `generation` (the
    /// writer trusts it while the generation is unchanged: see `log::overlay`).
    Absent { generation: u64 },
}

/// How a begin that read first went on.
// Returned by value once per begin: boxing the answer would allocate on the replay path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Early {
    /// Answered without writing (a replay, in flight, a mismatch), with the record read.
    Answer(BeginDecision, Record),
    /// The begin must write: through [`RecordEngine::begin`], with what the read saw.
    Write(Seen),
}

/// Records for a bulk load, produced inside the engine's transaction: called with 0, 1, 2, …
/// until it returns `None`. Each record's times are relative to the `now` it is given.
pub(crate) type BulkRecords = Box<dyn FnMut(u64, u64) -> Option<(Digest, Record)> + Send>;

/// What one compaction step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    pub records: u64,
    pub rate_states: u64,
    /// Whether the step stopped at its limit: more may be due.
    pub more: bool,
}

/// A counter as it should be stored: idle counters are deleted (they equal a fresh one).
pub(crate) fn stored_rate(spec: &Spec, state: Option<RateState>, now: u64) -> Option<StoredRate> {
    state
        .filter(|state| !is_idle(spec, *state, now))
        .map(|state| StoredRate {
            state,
            idle_at: idle_at(spec, state),
        })
}

/// The lease expiry of a RUNNING record (what an extension answers).
pub(crate) fn lease_expiry(record: &Record) -> Option<u64> {
    match record.body {
        crate::idempotency::RecordBody::Running {
            lease_expires_at, ..
        } => Some(lease_expires_at),
        _ => None,
    }
}

/// Idempotency records: read, begin, resolve, list, load.
pub(crate) trait RecordEngine: Send + Sync {
    /// The time decisions are taken at, in nanoseconds since the Unix epoch, as this engine's
    /// clock gives it (reading it moves the store's clock forward).
    fn now(&self) -> u64;

    /// The record as last committed (expired or not), without waiting for writers.
    fn read(&self, digest: &Digest) -> Result<Option<Record>>;

    /// A begin's answer if it needs no write (a replay, a mismatch, a key in flight), decided on
    /// the latest committed record, with that record; else [`Early::Write`], with what the read
    /// saw, for [`RecordEngine::begin`]. An engine whose `begin` reads as cheaply may always say
    /// `Early::Write(Seen::Nothing)` without reading.
    fn begin_without_writing(&self, digest: &Digest, request: BeginRequest) -> Result<Early>;

    /// Decides a begin on the current record and stores the decision. `seen` is what the
    /// caller's own read of the key saw ([`Seen::Nothing`] if it did not read).
    fn begin(&self, digest: Digest, request: BeginRequest, seen: Seen) -> Result<BeginDecision>;

    /// Applies a lease owner's resolution, fenced by its token. Returns the lease's new expiry
    /// for an extension.
    fn resolve(&self, digest: Digest, token: u64, resolution: Resolution) -> Result<Option<u64>>;

    /// Up to `limit` records in digest order after `after`.
    fn list(&self, after: Option<&Digest>, limit: usize) -> Result<Vec<(Digest, Result<Record>)>>;

    /// Writes `count` records from `records` in one atomic transaction.
    fn bulk_load(&self, count: u64, records: BulkRecords) -> Result<u64>;

    /// How long a caller waiting for a key in flight sleeps at most before it looks again, when
    /// some commits (another node's) wake nobody here. `None`: every commit wakes waiters.
    fn wait_poll(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Rate counters: every rate operation, decided by `ratelimit::charge`.
pub(crate) trait CounterEngine: Send + Sync {
    /// Runs `kind` on the `(limit, subject)` counters, all or nothing.
    fn run(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome>;

    /// [`CounterEngine::run`] if it needs no I/O (every counter in memory, nothing to wait for):
    /// `Some` with the same outcome and effect, or `None` with no effect at all.
    fn run_in_memory(
        &self,
        _kind: OpKind,
        _checks: &[(&Limit, &str)],
    ) -> Result<Option<RateOutcome>> {
        Ok(None)
    }

    /// Makes every counter change so far durable (Batched mode); nothing to do otherwise.
    fn flush(&self) -> Result<()>;
}

/// The engine a store was opened on.
// One per store, inside its `Arc`: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Engine {
    Embedded(embedded::Embedded),
    #[cfg(feature = "postgres")]
    Postgres(postgres::Postgres),
}

/// `$body` on whichever engine `$engine` is, as `$name`.
macro_rules! on_engine {
    ($engine:expr, $name:ident => $body:expr) => {
        match $engine {
            Engine::Embedded($name) => $body,
            #[cfg(feature = "postgres")]
            Engine::Postgres($name) => $body,
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
