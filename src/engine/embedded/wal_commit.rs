//! The writer's commit through the write-ahead log: a batch becomes one log frame, appended and
//! synced, its changes published to the overlay, and only then is anyone answered. redb catches
//! up in the background (`applier.rs`); what the log's view cannot serve goes to redb directly.
//!
//! Rules (DESIGN, "The write-ahead log"): acknowledged means synced in the log; a frame never
//! holds a refused command's writes; a storage error here marks the writer failed and every
//! command of the batch is answered in doubt or with the cause's error.

use std::sync::Arc;
use std::time::Instant;

use super::command::{Applied, Command};
use super::failure::Cause;
use super::log::change;
use super::log::view::{COUNTERS_BYTES, Staged, View};
use super::writer_core::{Core, WalCore};
use crate::error::Error;

impl Core {
    /// Applies `batch` through the write-ahead log and answers every command (leaving it empty).
    ///
    /// Each command runs against the log's view of the latest state; its changes are kept for the
    /// batch's frame, or dropped if it was refused after writing (no redb transaction to roll
    /// back). The frame is appended and synced, its changes published to the overlay, and only
    /// then is anyone answered. A frame that would overflow its segment is made durable first
    /// and a new one started. A command the view cannot serve (a bulk load, a compaction step, a
    /// capacity sweep, or changes larger than a frame) is applied directly to redb, after what is
    /// staged is durable and the applier has written everything into redb.
    pub(super) fn commit_logged(&mut self, batch: &mut Vec<Command>) {
        let mut staged = Staged::new();
        let mut done: Vec<Command> = Vec::with_capacity(batch.len());
        let mut commands = std::mem::take(batch).into_iter();
        while let Some(mut command) = commands.next() {
            let Some(wal) = &self.wal else {
                command.fail(Error::Poisoned);
                continue;
            };
            let direct = command.runs_alone() || matches!(command, Command::Compact { .. });
            if !direct {
                let limit = wal.log.geometry().max_payload() - COUNTERS_BYTES;
                let mut view = View::new(&wal.overlay, &self.backend, &staged, wal.records);
                let applied = self.sequencer.execute(&mut view, &mut command);
                let changes = view.finish();
                match applied {
                    Err(error) => {
                        done.push(command);
                        self.fail_logged(&error, done, commands);
                        return;
                    }
                    Ok(outcome) if !changes.needs_btree && changes.bytes.len() <= limit => {
                        if outcome == Applied::Refused && changes.wrote() {
                            // Its writes are dropped: answered with the refusal, after the batch.
                            done.push(command);
                            continue;
                        }
                        if staged.payload.len() + changes.bytes.len() > limit {
                            if let Err(error) = self.publish(&mut staged, &mut done) {
                                done.push(command);
                                self.fail_logged(&error, done, commands);
                                return;
                            }
                        }
                        staged.writes += command.changes();
                        staged.keep(changes);
                        done.push(command);
                        continue;
                    }
                    Ok(_) => {}
                }
            }
            // Directly to redb: what is staged first, then redb catches up, then this command.
            let drained = self.publish(&mut staged, &mut done).and_then(|()| {
                self.wal
                    .as_ref()
                    .map_or(Ok(()), |wal| wal.overlay.wait_applied().map(|_| ()))
            });
            if let Err(error) = drained {
                done.push(command);
                self.fail_logged(&error, done, commands);
                return;
            }
            self.commit_direct(command);
        }
        if let Err(error) = self.publish(&mut staged, &mut done) {
            self.fail_logged(&error, done, commands);
        }
    }

    /// Appends the staged frame, syncs the log, publishes the frame's changes and answers `done`
    /// (every command so far). Waits first while the overlay is full or the ring has no room.
    fn publish(&mut self, staged: &mut Staged, done: &mut Vec<Command>) -> Result<(), Error> {
        if staged.is_empty() {
            for command in done.drain(..) {
                command.answer();
            }
            return Ok(());
        }
        let Some(wal) = self.wal.as_mut() else {
            return Err(Error::Poisoned);
        };
        let started = Instant::now();
        let _span = crate::observe::batch(done.len());
        let next_token = self.sequencer.next_token;
        let clock = self.sequencer.time.high_water();
        change::counters(&mut staged.payload, next_token, clock);
        let WalCore { log, overlay, .. } = wal;
        let size = staged.payload.len();
        let progress = overlay.wait_for_room(|applied| log.room(applied, size))?;
        log.append(self.sequencer.epoch, &staged.payload, progress.applied)?;
        log.sync()?;
        overlay.publish(
            staged.records.drain(),
            staged.rates.drain(),
            log.end(),
            next_token,
            clock,
        );
        wal.records = wal.records.saturating_add_signed(staged.added);
        let counts = self.sequencer.record_counts.plus(staged.deltas);
        self.sequencer.record_counts = counts;
        crate::observe::commit(done.len(), staged.writes, started.elapsed());
        self.counters.committed(staged.writes, counts.as_array());
        staged.clear();
        for command in done.drain(..) {
            command.answer();
        }
        self.notifier.bump();
        Ok(())
    }

    /// Applies one command directly to redb (which holds everything acknowledged), under the
    /// lock the applier takes, and answers it.
    fn commit_direct(&mut self, command: Command) {
        let Some(redb) = self.wal.as_ref().map(|wal| Arc::clone(&wal.redb)) else {
            command.fail(Error::Poisoned);
            return;
        };
        let mut side = redb.lock();
        // redb is the whole state now: its counts are the store's.
        self.sequencer.record_counts = side.counts;
        let mut one = vec![command];
        self.commit(&mut one);
        side.counts = self.sequencer.record_counts;
        drop(side);
        // redb changed beside the overlay: an absence read before this is not to be trusted.
        if let Some(wal) = &self.wal {
            wal.overlay.bump_generation();
        }
        if let (Some(wal), Ok(records)) = (self.wal.as_mut(), self.backend.record_count()) {
            wal.records = records;
        }
    }

    /// A storage error while applying through the log: marks the writer failed and answers
    /// every command (those applied so far: in doubt, or the cause's error).
    fn fail_logged(
        &mut self,
        error: &Error,
        done: Vec<Command>,
        rest: impl Iterator<Item = Command>,
    ) {
        crate::observe::poisoned(error);
        self.failure.set(Cause::of(error, self.path.clone()));
        // The first cause decides (the applier's, if it failed first and this is the consequence).
        let cause = self
            .failure
            .cause()
            .unwrap_or_else(|| Cause::of(error, self.path.clone()));
        let message = error.to_string();
        for command in done {
            command.fail(match &cause {
                Cause::Failed { .. } => Error::InDoubt(message.clone()),
                refused => refused.error(),
            });
        }
        for command in rest {
            command.fail(self.failure.error());
        }
        self.notifier.bump();
    }
}
