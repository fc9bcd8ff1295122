//! Counters of an engine's writes, read without locks: commits, changes, records by state, the
//! last compaction sweep. `Store::stats` reads them.
//!
//! `writes / commits` is the group-commit factor: how many durable changes shared one fsync.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::{CompactionReport, Stats};

#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    one_round_trip: AtomicU64,
    records: [AtomicU64; 3],
    last_compaction: parking_lot::Mutex<Option<CompactionReport>>,
}

impl Counters {
    /// Sets the records on disk by state: running, completed, failed (at open).
    pub(crate) fn set_records(&self, records: [u64; 3]) {
        for (slot, value) in self.records.iter().zip(records) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Counts a commit of `writes` changes, after which the records on disk are `records`.
    pub(crate) fn committed(&self, writes: u64, records: [u64; 3]) {
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

    /// Counts a commit of one change that took one round trip (PostgreSQL's lone callers).
    #[cfg(feature = "postgres")]
    pub(crate) fn committed_in_one_round_trip(&self) {
        self.committed_writes(1);
        self.one_round_trip.fetch_add(1, Ordering::Relaxed);
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
            one_round_trip_commits: self.one_round_trip.load(Ordering::Relaxed),
            rate_counters_in_memory: 0,
            degraded: None,
        }
    }
}
