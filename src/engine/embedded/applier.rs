//! The applier: writes what the log acknowledged into redb, in large transactions, on a thread
//! of its own.
//!
//! Each round takes everything the overlay holds (`log::overlay`), writes it through the same
//! [`Tables`] methods a direct commit uses (so the expiry index and the record counts stay in
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
use super::log::change::{self, Change};
use super::log::overlay::{Overlay, Round};
use super::log::{Geometry, Log, LogKey};
use super::storage::{Backend, Counters, Device, LogState, RecordCounts, Tables};
use crate::error::Error;

/// Bytes of frames recovery applies per transaction.
const RECOVERY_BYTES: usize = 256 * 1024;

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

/// The record redb holds for `digest`, or `None` if its value does not decode: the new state
/// replaces it (the stale index entry it leaves is dropped by a sweep, which checks entries
/// against their records).
pub(crate) fn readable_record(
    tables: &mut Tables<'_>,
    digest: &crate::idempotency::Digest,
) -> Result<Option<crate::idempotency::Record>, Error> {
    match tables.record(digest) {
        Err(Error::Corrupted(_)) => Ok(None),
        other => other,
    }
}

/// Opens the store's log (creating it if the store never had one) and applies to redb every
/// change it holds after the applied position, in one transaction that also moves the applied
/// position to the log's end under this session's `epoch`. Updates `persisted` (counters and
/// record counts) to what redb then holds, and returns the log, positioned at its end.
///
/// # Errors
/// [`Error::Corrupted`] if a store that had a log has lost it, or the log is another store's;
/// the log's and redb's I/O errors.
pub(crate) fn recover(
    backend: &Backend,
    device: impl FnOnce(bool) -> Result<Box<dyn Device>, Error>,
    geometry: Geometry,
    persisted: &mut Counters,
) -> Result<Log, Error> {
    let Some(state) = persisted.log else {
        return Err(Error::Corrupted("the store has no log key".into()));
    };
    let key = LogKey(state.key.0, state.key.1);
    let epoch = persisted.epoch;
    let mut log = if state.floor == 0 {
        // Never created (or its creation was interrupted): nothing in it was acknowledged.
        Log::create(device(true)?, geometry, key)?
    } else {
        Log::open(device(false)?, key)?
    };
    // In transactions of about RECOVERY_BYTES of frames each, so that applying a full log
    // needs no more free space than a round of the applier; each commit moves the applied
    // position (a crash meanwhile resumes from there).
    let mut base = *persisted;
    let (mut applied, mut floor) = (state.applied, state.floor);
    loop {
        let (scanned, counts, next_token, clock) = backend.write(|tables| {
            let (mut next_token, mut clock) = (base.next_token, base.clock_high_water);
            let mut budget = RECOVERY_BYTES;
            let scanned = log.scan_some(applied, floor, epoch, |_, _, payload| {
                budget = budget.saturating_sub(payload.len());
                for change in change::decode(payload)? {
                    match change {
                        Change::PutRecord(digest, record) => {
                            let old = readable_record(tables, &digest)?;
                            tables.put_record(&digest, old.as_ref(), &record)?;
                        }
                        Change::DeleteRecord(digest) => {
                            if let Some(old) = readable_record(tables, &digest)? {
                                tables.delete_record(&digest, &old)?;
                            }
                        }
                        Change::PutRate(key, rate) => tables.put_rate(&key, Some(&rate))?,
                        Change::DeleteRate(key) => tables.put_rate(&key, None)?,
                        Change::Counters {
                            next_token: token,
                            clock: mark,
                        } => {
                            next_token = next_token.max(token);
                            clock = clock.max(mark);
                        }
                    }
                }
                Ok(budget > 0)
            })?;
            let counts = base.record_counts.plus(tables.count_deltas());
            tables.save_counters(next_token, clock, counts)?;
            // Once the end is reached, this session's frames follow: its epoch is the floor.
            let floor = if scanned.complete {
                epoch
            } else {
                scanned.floor
            };
            tables.save_log_position(scanned.end, floor)?;
            Ok((scanned, counts, next_token, clock))
        })?;
        base.record_counts = counts;
        base.next_token = next_token;
        base.clock_high_water = clock;
        applied = scanned.end;
        floor = scanned.floor;
        if scanned.complete {
            break;
        }
    }
    let counts = base.record_counts;
    let (next_token, clock) = (base.next_token, base.clock_high_water);
    persisted.record_counts = counts;
    persisted.next_token = next_token;
    persisted.clock_high_water = clock;
    persisted.log = Some(LogState {
        applied: log.end(),
        floor: epoch,
        ..state
    });
    Ok(log)
}

/// For a store opened for reads only: the log's frames after the applied position, in an
/// overlay that reads consult (redb cannot be written to apply them). `None` if the store has no
/// log or the log cannot be read.
pub(crate) fn read_only_overlay(
    device: Box<dyn Device>,
    persisted: &Counters,
) -> Result<Option<Arc<Overlay>>, Error> {
    let Some(state) = persisted.log.filter(|state| state.floor > 0) else {
        return Ok(None);
    };
    let mut log = Log::open(device, LogKey(state.key.0, state.key.1))?;
    let overlay = Overlay::new(usize::MAX, state.applied, persisted.next_token, 0);
    log.scan(
        state.applied,
        state.floor,
        // A store opened for reads does not bump the epoch: frames of the last session are at it.
        persisted.epoch,
        |_, _, payload| {
            let mut records = Vec::new();
            let mut rates = Vec::new();
            for change in change::decode(payload)? {
                match change {
                    Change::PutRecord(digest, record) => {
                        records.push((digest, Some(Arc::new(record))));
                    }
                    Change::DeleteRecord(digest) => records.push((digest, None)),
                    Change::PutRate(key, rate) => rates.push((key, Some(rate))),
                    Change::DeleteRate(key) => rates.push((key, None)),
                    Change::Counters { .. } => {}
                }
            }
            overlay.publish(records, rates, state.applied, 0, 0);
            Ok(())
        },
    )?;
    Ok(Some(Arc::new(overlay)))
}
