//! Counters of the writer's work, read without locks.
//!
//! `writes / commits` is the group-commit factor: how many durable changes shared one fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::engine::embedded::storage::RecordCounts;

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

#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    records: [AtomicU64; 3],
    last_compaction: parking_lot::Mutex<Option<CompactionReport>>,
}

impl Counters {
    /// Sets the records on disk by state (at open).
    pub(crate) fn set_records(&self, records: RecordCounts) {
        for (slot, value) in self.records.iter().zip(records.as_array()) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Counts a commit of `writes` changes, after which the records on disk are `records`.
    pub(crate) fn committed(&self, writes: u64, records: RecordCounts) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
        self.set_records(records);
    }

    /// Counts a commit of `writes` changes (an engine that counts records itself).
    #[cfg(feature = "postgres")]
    pub(crate) fn committed_writes(&self, writes: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
    }

    pub(crate) fn compacted(&self, report: CompactionReport) {
        *self.last_compaction.lock() = Some(report);
    }

    /// The counters; the caller fills in what needs the file (`rate_states`, `file_bytes`) and the
    /// cache (`rate_counters_in_memory`).
    pub(crate) fn snapshot(&self) -> Stats {
        let [running, completed, failed] = self
            .records
            .each_ref()
            .map(|slot| slot.load(Ordering::Relaxed));
        Stats {
            running,
            completed,
            failed,
            rate_states: 0,
            file_bytes: 0,
            last_compaction: *self.last_compaction.lock(),
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            rate_counters_in_memory: 0,
            degraded: None,
        }
    }
}
