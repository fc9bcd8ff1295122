//! What a store tells about itself: [`Health`] (its ability to serve, for readiness probes),
//! [`Stats`] (its counts), [`CompactionReport`] (a sweep), [`DegradedCause`].
//!
//! A leaf: engines fill these in, the store hands them out; nothing here reads anything.

use std::fmt;
use std::time::{Duration, SystemTime};

/// What one compaction sweep removed, from [`Store::compact_now`](crate::Store::compact_now) or the
/// background thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Expired idempotency records removed.
    pub removed_records: u64,
    /// Idle rate counters removed.
    pub removed_rate_states: u64,
    /// Write transactions the sweep used (each at most `compaction_batch` removals).
    pub batches: u64,
    /// Wall time of the sweep.
    pub elapsed: Duration,
    /// When the sweep finished, by the wall clock.
    pub finished_at: SystemTime,
}

/// A snapshot of the store's counters, from [`Store::stats`](crate::Store::stats). Counts start at
/// zero at every open.
///
/// On PostgreSQL the record and counter counts are the whole schema's (every node's), exact,
/// summed from per-connection deltas without a scan; `commits` and `writes` are this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// RUNNING records on disk, expired or not.
    pub running: u64,
    /// COMPLETED records on disk, expired or not.
    pub completed: u64,
    /// FAILED records on disk, expired or not.
    pub failed: u64,
    /// Rate counters on disk (idle ones are deleted when written or swept).
    pub rate_states: u64,
    /// Size of the store file in bytes (on PostgreSQL: of the records and counters tables, with
    /// their indexes).
    pub file_bytes: u64,
    /// The last compaction sweep since this open, if any.
    pub last_compaction: Option<CompactionReport>,
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Changes committed: records created, taken over or resolved, rate counters written.
    pub writes: u64,
    /// Of `commits`, those of a lone caller's change sent with its `BEGIN` and `COMMIT` in one
    /// round trip (PostgreSQL, [`postgres_one_round_trip`](crate::StoreBuilder::postgres_one_round_trip);
    /// 0 on other engines). Low against the lone changes a node makes means their rows change
    /// elsewhere (other nodes) between this node's changes, and they take two round trips.
    pub one_round_trip_commits: u64,
    /// Rate counters held in memory (Batched mode; 0 in Immediate mode).
    pub rate_counters_in_memory: u64,
    /// Why the store refuses writes and serves reads only, if it does; `None` when it writes.
    /// [`Store::health`](crate::Store::health) gives the full message.
    pub degraded: Option<DegradedCause>,
}

/// Why a store serves reads only ([`Stats::degraded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DegradedCause {
    /// No space left for its file (or over a disk quota).
    StorageFull,
    /// Its file or filesystem cannot be written.
    ReadOnly,
    /// A write failed with another I/O error (or the thread applying writes panicked).
    WriteFailed,
}

/// Whether a store can serve now, as [`Store::health`](crate::Store::health) reports it.
///
/// Meant for a readiness probe: ready stores take traffic, others are taken out of rotation
/// until they are again. A liveness probe needs none of this (a process that answers is alive).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Serving reads and writes.
    Ready,
    /// Serving reads, refusing writes: the embedded engine after a write failed (no space left,
    /// a read-only file or filesystem, an I/O error), or opened on a file it could not write.
    /// Replays, `get`, `list_records`, peeks and `stats` answer from the last committed state;
    /// writes get the typed error of the cause ([`Error::StorageFull`](crate::Error::StorageFull),
    /// [`Error::ReadOnly`](crate::Error::ReadOnly), [`Error::Poisoned`](crate::Error::Poisoned)).
    /// The store tries to open for writing again at its next write (at most once a second), and
    /// is ready again once that works: nothing to do here but free the space.
    Degraded {
        /// Why writes are refused.
        reason: String,
    },
    /// Open, but it can serve neither reads nor writes (the embedded engine after a write
    /// failure, when its file could not be opened again even for reads). It keeps trying to
    /// open again at its next write, as when degraded.
    Failed {
        /// Why, as the operations' error says it.
        reason: String,
    },
    /// Its database server did not answer (the PostgreSQL engine). The store reconnects by
    /// itself: the next probe may say [`Health::Ready`] with nothing done here.
    Unreachable {
        /// The error of the probe's round trip.
        reason: String,
    },
    /// [`Store::close`](crate::Store::close) has run.
    Closed,
}

impl Health {
    /// Whether the store serves reads and writes now.
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Ready => f.write_str("ready"),
            Health::Degraded { reason } => write!(f, "degraded (reads only): {reason}"),
            Health::Failed { reason } => write!(f, "failed: {reason}"),
            Health::Unreachable { reason } => write!(f, "database unreachable: {reason}"),
            Health::Closed => f.write_str("closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_is_ready_and_the_reason_is_shown() {
        assert!(Health::Ready.is_ready());
        let failed = Health::Failed {
            reason: "disk".into(),
        };
        assert!(!failed.is_ready());
        assert!(!Health::Closed.is_ready());
        assert_eq!(failed.to_string(), "failed: disk");
        let unreachable = Health::Unreachable {
            reason: "refused".into(),
        };
        assert!(!unreachable.is_ready());
        assert_eq!(unreachable.to_string(), "database unreachable: refused");
    }
}
