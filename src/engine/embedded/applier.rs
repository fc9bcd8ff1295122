//! The applier: writes what the log acknowledged into redb, in large transactions, on a thread
//! of its own.
//!
//! Each round takes everything the overlay holds (`log::overlay`), writes it through the same
//! `Tables` methods a direct commit uses (so the expiry index and the record counts stay in
//! step), saves the writer's counters and the applied log position in the same commit, and then
//! retires the entries. Writes of one key coalesce: a request begun and completed between two
//! rounds is written once, as its final record, and never enters the running table.
//!
//! Whoever writes redb holds the [`RedbSide`] lock: the applier for a round, the writer for a
//! direct commit (which it makes only once the overlay is applied, `writer.rs`).
//!
//! A failed commit marks the writer failed (the same [`Failure`] a failed log sync sets): the
//! store then stops and reopens, and recovery applies the log again from the applied position.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::failure::{Cause, Failure};
use super::log::overlay::{Overlay, Round};
use super::log::recovery::readable_record;
use super::storage::{Backend, RecordCounts};
use crate::error::Error;

/// What redb holds, kept by whoever writes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedbSide {
    /// Records in redb by state (what is saved with each commit).
    pub counts: RecordCounts,
}

/// The applier thread of one writer.
pub(crate) struct Applier {
    overlay: Arc<Overlay>,
    thread: JoinHandle<()>,
}

impl Applier {
    /// Starts the applier for the session of `epoch`.
    ///
    /// # Errors
    /// [`Error::Storage`] if the thread cannot be started.
    pub(crate) fn start(
        backend: Arc<Backend>,
        overlay: Arc<Overlay>,
        redb: Arc<Mutex<RedbSide>>,
        failure: Arc<Failure>,
        epoch: u64,
        path: PathBuf,
    ) -> Result<Self, Error> {
        let thread = {
            let overlay = Arc::clone(&overlay);
            std::thread::Builder::new()
                .name("tollgate-applier".into())
                .spawn(move || {
                    while let Some(round) = overlay.next_round() {
                        if failure.is_failed() {
                            break;
                        }
                        let mut side = redb.lock();
                        match apply(&backend, &round, side.counts, epoch) {
                            Ok(counts) => {
                                side.counts = counts;
                                drop(side);
                                overlay.retire(&round);
                            }
                            Err(error) => {
                                crate::observe::poisoned(&error);
                                failure.set(Cause::of(&error, path.clone()));
                                break;
                            }
                        }
                    }
                    // However it ended, nobody waits for this applier any more.
                    overlay.fail_if_not_drained();
                })
                .map_err(Error::storage)?
        };
        Ok(Self { overlay, thread })
    }

    /// Releases a test's hold on the applier.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn release(&self) {
        self.overlay.hold(false);
    }

    /// Applies what is published, stops the thread and joins it. Returns whether it ended
    /// normally.
    pub(crate) fn stop(self) -> bool {
        self.overlay.stop();
        self.thread.join().is_ok()
    }
}

/// Writes `round` into redb in one transaction with the applied position; returns the counts.
fn apply(
    backend: &Backend,
    round: &Round,
    counts: RecordCounts,
    epoch: u64,
) -> Result<RecordCounts, Error> {
    backend.write(|tables| {
        for (digest, _, value) in &round.records {
            let old = readable_record(tables, digest)?;
            match value {
                Some(new) => tables.put_record(digest, old.as_ref(), new)?,
                None => {
                    if let Some(old) = &old {
                        tables.delete_record(digest, old)?;
                    }
                }
            }
        }
        for (key, _, value) in &round.rates {
            tables.put_rate(key, value.as_ref())?;
        }
        let counts = counts.plus(tables.count_deltas());
        tables.save_counters(round.next_token, round.clock, counts)?;
        tables.save_log_position(round.published, epoch)?;
        Ok(counts)
    })
}
