//! The seam between the store and its engines: the two traits an engine implements
//! ([`RecordEngine`], [`CounterEngine`]), the requests that cross it, and the few helpers every
//! engine applies the same way (a begin's parameters for the pure rules, a counter's stored form,
//! a lease's expiry). The rules every engine keeps are in `engine/mod.rs`.

use super::codec::StoredRate;
use crate::error::Result;
use crate::idempotency::machine::{BeginDecision, BeginParams, Resolution};
use crate::idempotency::{Digest, Record};
use crate::ratelimit::charge::{OpKind, RateOutcome};
use crate::ratelimit::{Limit, RateState, Spec, idle_at, is_idle};

/// What a `begin` asks for, besides its key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BeginRequest {
    pub fingerprint: [u8; 32],
    pub lease_ttl: u64,
    pub record_ttl: u64,
    /// The epoch of the process a new lease is taken for, if not the engine's own: set only by
    /// a shared store's owner, from the connection the begin came on (never from its message).
    pub holder: Option<u64>,
}

impl BeginRequest {
    /// What `machine::begin` decides this request with, at `now`, for a node at `epoch` whose
    /// RUNNING record (if any) belongs to a node at `owner_epoch`; `next_token` is the token a
    /// new lease gets (0 where the decision is only read, never stored). The one place a begin's
    /// parameters are made, on every engine and in the store's replay-cache path.
    pub(crate) fn params(
        &self,
        now: u64,
        epoch: u64,
        owner_epoch: u64,
        next_token: u64,
    ) -> BeginParams {
        BeginParams {
            fingerprint: self.fingerprint,
            now,
            epoch,
            owner_epoch,
            lease_ttl: self.lease_ttl,
            record_ttl: self.record_ttl,
            next_token,
        }
    }
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
    /// The engine read and wrote in one step (a shared store's client asks its owner once).
    Written(BeginDecision),
}

/// Records for a bulk load, produced inside the engine's transaction: called with 0, 1, 2, …
/// until it returns `None`. Each record's times are relative to the `now` it is given.
pub(crate) type BulkRecords = Box<dyn FnMut(u64, u64) -> Option<(Digest, Record)> + Send>;

/// What one compaction step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
