//! Counters of the writer's work, read without locks.
//!
//! `writes / commits` is the group-commit factor: how many durable changes shared one fsync.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the store's counters, from [`Store::stats`](crate::Store::stats). Counts start at
/// zero at every open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Write transactions committed (each one fsync).
    pub commits: u64,
    /// Changes committed: records created, taken over or resolved, rate counters written.
    pub writes: u64,
    /// Rate counters held in memory (Batched mode; 0 in Immediate mode).
    pub rate_counters_in_memory: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
}

impl Counters {
    pub(crate) fn committed(&self, writes: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            rate_counters_in_memory: 0,
        }
    }
}
