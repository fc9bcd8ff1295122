//! The background compaction thread, and one sweep in bounded steps.
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

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::Swept;
use super::write_counters::Counters;
use crate::error::Result;
use crate::status::CompactionReport;

/// Runs one sweep: `step(limit)` removes up to `limit` due entries; repeats while a step stops at
/// its limit and `interrupted()` is false.
pub(crate) fn sweep(
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
