//! TTL compaction: removing expired records and idle rate counters, and giving space back.
//!
//! A sweep walks the expiry index from its oldest entry, in steps of at most `compaction_batch`
//! removals. Each step is one engine transaction; on the embedded engine it goes through the
//! writer's queue with foreground requests, so a begin or a check waits behind at most one step,
//! never a whole sweep. A step that fails ends the sweep; the next tick starts over (an I/O error poisons the
//! store as any write does).
//!
//! The background thread (`tollgate-compactor`) sleeps on its stop channel with a timeout of
//! `compaction_interval`; a message (or the channel closing) stops it, also between two steps of a
//! sweep. `close` and drop stop and join it before the writer. No spinning, no leaked thread.
//!
//! Removal never touches anything live: a record is removed only when its `expires_at` has passed
//! and equals the index entry's time (an extended lease moves both), a counter only when its
//! `idle_at` has passed and equals the entry's time.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Store;
use super::stats::{CompactionReport, Counters};
use crate::engine::Swept;
use crate::engine::embedded::storage::Backend;
use crate::error::Result;

/// Runs one sweep: `step(limit)` removes up to `limit` due entries; repeats while a step stops at
/// its limit and `interrupted()` is false.
fn sweep(
    mut step: impl FnMut(usize) -> Result<Swept>,
    batch: usize,
    interrupted: impl Fn() -> bool,
    mut progress: impl FnMut(&CompactionReport),
) -> Result<CompactionReport> {
    let started = Instant::now();
    let mut report = CompactionReport {
        removed_records: 0,
        removed_rate_states: 0,
        batches: 0,
        elapsed: Duration::ZERO,
        finished_at: SystemTime::UNIX_EPOCH,
    };
    loop {
        let swept = step(batch)?;
        crate::observe::sweep_step(swept.records, swept.rate_states);
        report.removed_records += swept.records;
        report.removed_rate_states += swept.rate_states;
        report.batches += 1;
        report.elapsed = started.elapsed();
        progress(&report);
        if !swept.more || interrupted() {
            break;
        }
    }
    report.elapsed = started.elapsed();
    report.finished_at = SystemTime::now();
    Ok(report)
}

/// The background compaction thread.
pub(crate) struct Compactor {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Compactor {
    /// Starts the thread; `step(limit)` runs one compaction step on the engine.
    pub(crate) fn spawn(
        sweep_step: impl FnMut(usize) -> Result<Swept> + Send + 'static,
        interval: Duration,
        batch: usize,
        counters: Arc<Counters>,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("tollgate-compactor".into())
            .spawn(move || run(sweep_step, &stopped, interval, batch, &counters))?;
        Ok(Self { stop, thread })
    }

    /// The compactor a store's settings ask for: one running `sweep_step` every `interval`, or
    /// none if background compaction is off (`interval` is `None`).
    ///
    /// # Errors
    /// [`Error::Storage`](crate::Error::Storage) if the thread cannot be started.
    pub(crate) fn start(
        interval: Option<Duration>,
        batch: usize,
        counters: &Arc<Counters>,
        sweep_step: impl FnMut(usize) -> Result<Swept> + Send + 'static,
    ) -> Result<Option<Self>> {
        interval
            .map(|interval| Self::spawn(sweep_step, interval, batch, Arc::clone(counters)))
            .transpose()
            .map_err(crate::Error::storage)
    }

    /// Stops the thread (between two steps if it is sweeping) and joins it.
    pub(crate) fn stop(self) {
        // A full channel means a stop is already pending; a closed one that the thread has ended.
        let _ = self.stop.try_send(());
        // The thread never panics by design; if it did, there is nothing left to stop.
        let _ = self.thread.join();
    }
}

fn run(
    mut step: impl FnMut(usize) -> Result<Swept>,
    stopped: &Receiver<()>,
    interval: Duration,
    batch: usize,
    counters: &Counters,
) {
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        // A failed step ends this sweep; the next tick tries again.
        if let Ok(report) = sweep(&mut step, batch, || !stopped.is_empty(), |_| {}) {
            counters.compacted(report);
        }
    }
}

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
        Backend::check_integrity(path.as_ref())
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
        let (before_bytes, after_bytes) = Backend::reclaim(path.as_ref())?;
        Ok(Reclaimed {
            before_bytes,
            after_bytes,
        })
    }
}
