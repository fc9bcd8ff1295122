//! TTL compaction as the store offers it: a sweep now, an integrity check, giving space back.
//! The sweep and the background thread are `engine::compactor`'s.

use std::path::Path;

use super::Store;
use crate::engine::compactor::sweep;
use crate::engine::embedded;
use crate::error::Result;
use crate::status::CompactionReport;

/// What [`Store::reclaim_space`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reclaimed {
    /// File size before.
    pub before_bytes: u64,
    /// File size after.
    pub after_bytes: u64,
}

impl Store {
    /// Runs one full sweep now: removes every expired record and idle rate counter, in steps of
    /// `compaction_batch` through the writer (foreground requests interleave), and reports it. The
    /// report is also kept as `Stats::last_compaction`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::{Duration, UNIX_EPOCH};
    /// # use tollgate::{ManualClock, Store, idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse}};
    /// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
    /// let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    /// let store = Store::builder().clock(clock.clone()).record_ttl(Duration::from_secs(60))
    ///     .open(dir.path().join("t.redb"))?;
    /// let key = IdempotencyKey::new("s", "k")?;
    /// if let Begin::Acquired(lease) = store.begin(&key, &Fingerprint::of(b"r"))? {
    ///     lease.complete(StoredResponse::new(200, b"ok".to_vec()))?;
    /// }
    /// clock.advance(Duration::from_secs(60));
    /// assert_eq!(store.compact_now()?.removed_records, 1);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed), [`Error::Poisoned`](crate::Error::Poisoned), [`Error::Storage`](crate::Error::Storage) (which poisons the store).
    /// On PostgreSQL, [`Error::Unavailable`](crate::Error::Unavailable) (nothing was removed by
    /// the failed step) or [`Error::InDoubt`](crate::Error::InDoubt) (the connection was lost
    /// once a step's commit was sent: that step's removals may have been committed; a later
    /// sweep finishes the work either way).
    pub fn compact_now(&self) -> Result<CompactionReport> {
        self.compact_with_progress(|_| {})
    }

    /// [`Store::compact_now`], calling `progress` with the running totals after each step (for a
    /// progress display on long sweeps).
    ///
    /// # Errors
    /// As for [`Store::compact_now`].
    pub fn compact_with_progress(
        &self,
        progress: impl FnMut(&CompactionReport),
    ) -> Result<CompactionReport> {
        let step = |limit| self.shared.engine.compact_step(limit);
        let report = sweep(
            step,
            self.shared.settings.compaction_batch,
            || false,
            progress,
        )?;
        self.shared.counters.compacted(report);
        Ok(report)
    }

    /// Checks every page checksum of the closed store file at `path` (redb's integrity check),
    /// repairing what redb can. `Ok(true)`: intact; `Ok(false)`: damaged and repaired.
    ///
    /// # Errors
    /// [`Error::Corrupted`](crate::Error::Corrupted) if the damage cannot be repaired; [`Error::AlreadyOpen`](crate::Error::AlreadyOpen) if a `Store`
    /// or another process has the file open; [`Error::NotAStore`](crate::Error::NotAStore) for a file that is not a
    /// tollgate store; [`Error::Storage`](crate::Error::Storage) for I/O.
    pub fn check_integrity(path: impl AsRef<Path>) -> Result<bool> {
        embedded::check_integrity(path.as_ref())
    }

    /// Rewrites the store file at `path` so that it holds only live data, and truncates it.
    ///
    /// redb reuses the pages that removals free, so a store's file stops growing once compaction
    /// keeps pace, and it gives back free space at the *end* of the file as it commits. Free space
    /// in the middle (records that expired while later ones stayed) is only reused, never
    /// returned. Call this after the live data shrank for good (a traffic peak passed, a TTL was
    /// shortened, a sweep removed most records) when `Stats::file_bytes` matters. The store must
    /// be closed: this needs the file to itself, and takes roughly as long as copying the live
    /// data.
    ///
    /// # Errors
    /// [`Error::AlreadyOpen`](crate::Error::AlreadyOpen) if a `Store` or another process has the file open;
    /// [`Error::NotAStore`](crate::Error::NotAStore) for a file that is not a tollgate store; [`Error::Storage`](crate::Error::Storage) for I/O.
    pub fn reclaim_space(path: impl AsRef<Path>) -> Result<Reclaimed> {
        let (before_bytes, after_bytes) = embedded::reclaim(path.as_ref())?;
        Ok(Reclaimed {
            before_bytes,
            after_bytes,
        })
    }
}
