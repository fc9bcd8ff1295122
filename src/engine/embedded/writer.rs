//! Group commit: every durable change is applied here, in batches that share one commit.
//!
//! This file is the mechanics (batching, commits, answers, poisoning, the rate flush timer); what
//! each command does inside the transaction is `sequencer.rs`, the commands and their replies
//! `command.rs`, the failure model `failure.rs`, the commit through the write-ahead log
//! `wal_commit.rs`.
//!
//! One lock guards the [`Core`] that applies batches, so there is exactly one writer at a time.
//! A caller that finds the lock free *leads*: it applies whatever is queued plus its own command
//! on its own thread ([`lead`]). Otherwise it queues a [`Command`] with a one-shot reply channel
//! and blocks on the reply; the writer thread (or the next leader) drains the queue (up to
//! [`MAX_BATCH`]), runs the whole batch in one write transaction, commits once (one fsync), and
//! only then answers every caller. So N concurrent callers share one fsync, an idle store costs
//! no thread handoff, and nobody is answered before their change is durable.
//!
//! # Rules
//! - Commands are applied in arrival order (a leader's own command after those queued before
//!   it); each sees the writes of those before it in the batch.
//! - A command's *logical* error (lease lost, capacity, a corrupted value) is that caller's answer
//!   only; the rest of the batch commits. A command that fails leaves nothing: if it had written
//!   before failing, the transaction is rolled back and the batch applied again without it.
//! - A bulk load and each compaction step get a transaction of their own.
//! - Every command carries a reply of its own answer's type ([`Pending`](super::command::Pending)), so an answer can only
//!   reach the caller that asked for it, in the shape it asked for.
//! - A *storage* error aborts the batch and marks the writer failed ([`Failure`](super::failure::Failure)): every caller
//!   in the batch gets an error that says what happened (no space left; otherwise the commit is
//!   in doubt), and every command after it gets the failure's error. The engine then stops this
//!   writer and reopens the file (`mod.rs`): a failed fsync is never retried as if the earlier
//!   writes were safe, the next state is read back from the file.
//! - A batch that wrote nothing is not committed (no fsync).
//! - If the thread applying a batch panics (the writer thread or a leader), a drop guard marks
//!   the writer failed, so nobody keeps writing to a store whose writer state is in doubt.
//! - [`Command::Shutdown`] is the last command applied: commands queued behind it, and any later
//!   leader, are answered [`Error::Closed`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::Mutex;

use super::command::{Applied, Command};
use super::failure::{Cause, PoisonOnPanic};
use super::rate_cache::RELEASE_EVERY;
use super::writer_core::Core;
use crate::engine::stored_rate;
use crate::error::Error;

/// Most commands applied in one transaction. Bounds the latency a single batch can add.
pub(crate) const MAX_BATCH: usize = 1024;

/// A compaction step taken while requests are queued is `compaction_batch` divided by this.
const BUSY_STEP_DIVISOR: usize = 8;
/// Foreground work this recent makes the store count as busy for compaction steps.
const BUSY_WINDOW: Duration = Duration::from_millis(10);

/// How often the batched rate cache drops idle and unused counters.
const EVICT_EVERY: Duration = Duration::from_secs(1);

/// The writer thread: serves the queue whenever no caller is leading, and runs the timers.
pub(crate) struct Writer {
    pub core: Arc<Mutex<Core>>,
    pub commands: Receiver<Command>,
}

/// Applies `command` on the caller's own thread if no batch is being applied right now, together
/// with whatever is queued (queued commands first: they arrived earlier). Gives the command back
/// if another thread holds the writer lock: the caller then queues it, and the batch after the
/// current one takes it.
///
/// Leading saves the two thread handoffs of the queue (a wake-up of the writer thread, and one
/// of the caller) on an idle store; under load the lock is mostly taken and callers queue, so
/// group commit is unchanged.
pub(crate) fn lead(
    core: &Mutex<Core>,
    commands: &Receiver<Command>,
    command: Command,
) -> Option<Command> {
    // Commands already queued mean a busy store: the writer thread has been woken for them and
    // will batch this one too. Leading then would only add a second thread contending for the
    // lock (and a wake-up of the parked writer thread at every handover).
    if !commands.is_empty() {
        return Some(command);
    }
    let Some(mut core) = core.try_lock() else {
        return Some(command);
    };
    let failure = Arc::clone(&core.failure);
    let _guard = PoisonOnPanic(&failure);
    let mut batch = Vec::with_capacity(1 + commands.len());
    drain(commands, &mut batch);
    batch.push(command);
    core.serve(batch, commands);
    None
}

/// Moves queued commands into `batch`, up to [`MAX_BATCH`].
fn drain(commands: &Receiver<Command>, batch: &mut Vec<Command>) {
    while batch.len() < MAX_BATCH {
        match commands.try_recv() {
            Ok(command) => batch.push(command),
            Err(_) => break,
        }
    }
}

impl Writer {
    pub(crate) fn run(self) {
        let failure = Arc::clone(&self.core.lock().failure);
        let _guard = PoisonOnPanic(&failure);
        let flush_every = self.core.lock().rate_flush.as_ref().map(|(cache, every)| {
            // Reservations of idle counters are released at least this often.
            if cache.reserves() {
                (*every).min(RELEASE_EVERY)
            } else {
                *every
            }
        });
        let mut next_flush = flush_every.map(|every| Instant::now() + every);
        let mut next_evict = Instant::now() + EVICT_EVERY;
        loop {
            let first = match next_flush {
                Some(deadline) => match self.commands.recv_deadline(deadline) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                },
            };
            let mut core = self.core.lock();
            if let Some(first) = first {
                let mut batch = Vec::with_capacity(1 + self.commands.len());
                batch.push(first);
                drain(&self.commands, &mut batch);
                core.serve(batch, &self.commands);
            }
            if core.stopped {
                break;
            }
            if let (Some(deadline), Some(every)) = (next_flush.as_mut(), flush_every) {
                if Instant::now() >= *deadline {
                    // Each timed flush releases idle reservations and renews active ones.
                    core.flush_rates(false, true);
                    *deadline = Instant::now() + every;
                    if Instant::now() >= next_evict {
                        core.evict_rates(core.sequencer.time.high_water());
                        next_evict = Instant::now() + EVICT_EVERY;
                    }
                }
            }
        }
        // Shutting down (or every handle is gone): the final commit saves the counters (the clock's
        // high-water mark includes reads) and, in Batched mode, flushes and marks the session clean.
        let mut core = self.core.lock();
        core.flush_rates(true, true);
        core.stopped = true;
    }
}

impl Core {
    /// Applies and answers `batch`: the foreground commands in arrival order, in one transaction
    /// (a bulk load in one of its own), then each compaction step in a transaction of its own.
    fn serve(&mut self, batch: Vec<Command>, commands: &Receiver<Command>) {
        if self.stopped {
            for command in batch {
                command.fail(Error::Closed);
            }
            return;
        }
        // Compaction steps get transactions of their own, after the foreground batch: a request
        // never shares a commit (and its larger fsync) with a sweep step, and waits behind at most
        // one step.
        // (Split only when there is a step: moving every command into new vectors costs a
        // cycle 1.4k instructions, measured with callgrind.)
        let is_step = |command: &Command| matches!(command, Command::Compact { .. });
        let (steps, foreground): (Vec<Command>, Vec<Command>) = if batch.iter().any(is_step) {
            batch.into_iter().partition(is_step)
        } else {
            (Vec::new(), batch)
        };
        if foreground.iter().any(Command::runs_alone) {
            let mut group = Vec::with_capacity(foreground.len());
            for command in foreground {
                if command.runs_alone() {
                    if !group.is_empty() {
                        self.stopped |= self.apply(&mut group);
                    }
                    group.push(command);
                    self.stopped |= self.apply(&mut group);
                } else {
                    group.push(command);
                }
            }
            if !group.is_empty() {
                self.stopped |= self.apply(&mut group);
            }
            self.last_foreground = Instant::now();
        } else if !foreground.is_empty() {
            // The common batch: every command in one transaction, in the vector it came in.
            let mut group = foreground;
            self.stopped |= self.apply(&mut group);
            self.last_foreground = Instant::now();
        }
        let mut batch = Vec::with_capacity(1);
        for mut step in steps {
            // While requests wait, take a short step: a sweep yields to foreground work and runs
            // at full size only when the store is otherwise idle.
            if let Command::Compact { limit, .. } = &mut step {
                let busy = !commands.is_empty() || self.last_foreground.elapsed() < BUSY_WINDOW;
                if busy {
                    *limit = (*limit / BUSY_STEP_DIVISOR).max(1);
                }
            }
            batch.push(step);
            self.stopped |= self.apply(&mut batch);
        }
    }

    /// Writes every changed batched counter in one transaction; `last` also saves the counters
    /// and records that the session ended cleanly. With `release`, counters not charged for a
    /// while have their reservations released (`last` releases every one). A failure marks the
    /// writer failed (the counters it took stay in memory, and are written again after the
    /// reopen).
    fn flush_rates(&mut self, last: bool, release: bool) {
        if self.failure.is_failed() {
            return;
        }
        let dirty = match &self.rate_flush {
            Some((cache, _)) => {
                let now = self.sequencer.time.high_water();
                let release = (release || last).then_some(now);
                cache.take_dirty(release, last)
            }
            None => Vec::new(),
        };
        if dirty.is_empty() && !last {
            return;
        }
        let batched = self.rate_flush.is_some();
        // With the log, redb is written directly only once it holds everything acknowledged,
        // under the lock the applier takes too, with redb's own record counts.
        let side = match &self.wal {
            Some(wal) => match wal.overlay.wait_applied() {
                Ok(_) => Some(wal.redb.lock()),
                Err(error) => {
                    self.failure.set(Cause::of(&error, self.path.clone()));
                    return;
                }
            },
            None => None,
        };
        let counts = side
            .as_ref()
            .map_or(self.sequencer.record_counts, |side| side.counts);
        let sequencer = &self.sequencer;
        // The latest time an operation used; background work never reads the clock itself, so
        // the store's time moves only with operations.
        let now = sequencer.time.high_water();
        let written = self.backend.write(|tables| {
            for counter in &dirty {
                tables.put_rate(
                    &counter.key.0,
                    stored_rate(&counter.spec, counter.state, now).as_ref(),
                )?;
            }
            if last && batched {
                tables.mark_rates_clean()?;
            }
            tables.save_counters(sequencer.next_token, sequencer.time.high_water(), counts)?;
            Ok(())
        });
        drop(side);
        match written {
            Ok(()) => {
                if let Some((cache, _)) = &self.rate_flush {
                    cache.committed(&dirty);
                }
                self.counters
                    .committed(dirty.len() as u64, self.sequencer.record_counts.as_array());
            }
            Err(error) => {
                crate::observe::poisoned(&error);
                self.failure.set(Cause::of(&error, self.path.clone()));
            }
        }
    }

    fn evict_rates(&self, now: u64) {
        if let Some((cache, _)) = &self.rate_flush {
            if !self.failure.is_failed() {
                cache.evict(now);
            }
        }
    }

    /// Applies and answers `batch` (leaving it empty). Returns whether to stop.
    fn apply(&mut self, batch: &mut Vec<Command>) -> bool {
        if self.stopped {
            for command in batch.drain(..) {
                command.fail(Error::Closed);
            }
            return true;
        }
        let shutdown = batch
            .iter()
            .position(|command| matches!(command, Command::Shutdown));
        if let Some(at) = shutdown {
            for late in batch.drain(at..) {
                late.fail(Error::Closed);
            }
        }
        if self.failure.is_failed() {
            for command in batch.drain(..) {
                command.fail(self.failure.error());
            }
            return shutdown.is_some();
        }
        // Flush requests are answered after the batch and a flush, so that they cover it.
        let is_flush = |command: &Command| matches!(command, Command::Flush { .. });
        let flushes: Vec<Command> = if batch.iter().any(is_flush) {
            let (flushes, rest) = batch.drain(..).partition(is_flush);
            *batch = rest;
            flushes
        } else {
            Vec::new()
        };
        if self.wal.is_some() {
            self.commit_logged(batch);
        } else {
            self.commit(batch);
        }
        if !flushes.is_empty() {
            // A flush is an operation: it reads the clock, so idleness is judged as of now.
            let now = self.sequencer.time.now();
            let evict = flushes
                .iter()
                .any(|flush| matches!(flush, Command::Flush { evict: true, .. }));
            // An explicit flush (`Store::flush`) also releases what is idle; a caller's wait for
            // its reservation writes only what is dirty.
            self.flush_rates(false, evict);
            if evict {
                self.evict_rates(now);
            }
            for flush in flushes {
                if self.failure.is_failed() {
                    flush.fail(self.failure.error());
                } else if let Command::Flush { reply, .. } = flush {
                    reply.send(Ok(()));
                }
            }
        }
        shutdown.is_some()
    }

    /// Applies `batch` in one transaction, commits it and answers every command (leaving it
    /// empty). A command refused after it wrote is answered on its own and the batch applied
    /// again without it, so that its writes are never committed.
    pub(super) fn commit(&mut self, batch: &mut Vec<Command>) {
        loop {
            let sequencer = &mut self.sequencer;
            let token_before = sequencer.next_token;
            let size = batch.len();
            let _span = crate::observe::batch(size);
            let started = Instant::now();
            let mut refused_after_writing = None;
            let committed = self.backend.write(|tables| {
                let mut writes = 0;
                for (index, command) in batch.iter_mut().enumerate() {
                    let before = tables.writes();
                    let applied = sequencer.execute(tables, command)?;
                    if applied == Applied::Refused && tables.writes() != before {
                        refused_after_writing = Some(index);
                        tables.roll_back();
                        return Ok(None);
                    }
                    writes += command.changes();
                }
                let counts = sequencer.record_counts.plus(tables.count_deltas());
                if tables.is_dirty() {
                    tables.save_counters(
                        sequencer.next_token,
                        sequencer.time.high_water(),
                        counts,
                    )?;
                }
                Ok(tables.is_dirty().then_some((writes, counts)))
            });
            if let Some(index) = refused_after_writing {
                // Rolled back: answer the refusal, and apply the others again from scratch.
                batch.remove(index).answer();
                if batch.is_empty() {
                    return;
                }
                continue;
            }
            match committed {
                Ok(wrote) => {
                    // Counters first, so that a caller reading `stats()` after its answer sees
                    // its own write counted.
                    if let Some((writes, counts)) = wrote {
                        crate::observe::commit(size, writes, started.elapsed());
                        self.sequencer.record_counts = counts;
                        self.counters.committed(writes, counts.as_array());
                    }
                    for command in batch.drain(..) {
                        command.answer();
                    }
                    if wrote.is_some() {
                        self.notifier.bump();
                    }
                }
                Err(error) => {
                    crate::observe::poisoned(&error);
                    let cause = Cause::of(&error, self.path.clone());
                    self.failure.set(cause.clone());
                    // Tokens of the failed batch were never acknowledged; keeping the counter
                    // advanced is harmless (this writer stops) and never reuses a token.
                    debug_assert!(self.sequencer.next_token >= token_before);
                    // A full disk refused the commit; any other failure leaves it in doubt
                    // (a failed sync may have written some of it). The reopen reads it back.
                    let message = error.to_string();
                    for command in batch.drain(..) {
                        command.fail(match &cause {
                            Cause::Failed { .. } => Error::InDoubt(message.clone()),
                            refused => refused.error(),
                        });
                    }
                    self.notifier.bump();
                }
            }
            return;
        }
    }
}
