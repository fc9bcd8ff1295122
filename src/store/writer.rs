//! Group commit: every durable change is applied here, in batches that share one commit.
//!
//! This file is the mechanics (batching, commits, answers, poisoning, the rate flush timer); what
//! each command does inside the transaction is `sequencer.rs`.
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
//!   only; the rest of the batch commits.
//! - A *storage* error aborts the batch and poisons the store: every caller in the batch gets an
//!   error, and every later operation gets [`Error::Poisoned`] until the store is reopened.
//! - A batch that wrote nothing is not committed (no fsync).
//! - If the thread applying a batch panics (the writer thread or a leader), a drop guard poisons
//!   the store, so nobody keeps writing to a store whose writer state is in doubt.
//! - [`Command::Shutdown`] is the last command applied: commands queued behind it, and any later
//!   leader, are answered [`Error::Closed`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::notify::Notifier;
use super::rate_cache::RateCache;
use super::sequencer::{Sequencer, stored};
use super::stats::Counters;
use crate::error::Error;
use crate::idempotency::machine::{BeginDecision, Resolution};
use crate::idempotency::{Digest, Record};
use crate::ratelimit::charge::{RateOp, RateOutcome};
use crate::storage::{Backend, Swept};

/// Most commands applied in one transaction. Bounds the latency a single batch can add.
pub(crate) const MAX_BATCH: usize = 1024;

/// A compaction step taken while requests are queued is `compaction_batch` divided by this.
const BUSY_STEP_DIVISOR: usize = 8;
/// Foreground work this recent makes the store count as busy for compaction steps.
const BUSY_WINDOW: Duration = Duration::from_millis(10);

/// How often the batched rate cache drops idle and unused counters.
const EVICT_EVERY: Duration = Duration::from_secs(1);

/// A request to the writer.
pub(crate) enum Command {
    Begin {
        digest: Digest,
        request: BeginRequest,
        reply: Reply,
    },
    Resolve {
        digest: Digest,
        token: u64,
        resolution: Resolution,
        reply: Reply,
    },
    /// A rate operation in Immediate mode.
    Rate {
        op: RateOp,
        reply: Reply,
    },
    /// Flush batched rate counters now and drop idle ones from memory.
    Flush {
        reply: Reply,
    },
    /// Remove up to `limit` due expiry-index entries with their records and counters.
    Compact {
        limit: usize,
        reply: Reply,
    },
    /// Write completed records in this batch's transaction (the bulk-load helper).
    Bulk {
        count: u64,
        records: BulkRecords,
        reply: Reply,
    },
    Shutdown,
}

/// Records for [`Command::Bulk`], produced on the writer thread inside the transaction: called
/// with 0, 1, 2, … until it returns `None`.
pub(crate) type BulkRecords = Box<dyn FnMut(u64) -> Option<(Digest, Record)> + Send>;

#[derive(Debug, Clone, Copy)]
pub(crate) struct BeginRequest {
    pub fingerprint: [u8; 32],
    pub lease_ttl: u64,
    pub record_ttl: u64,
}

/// The writer's answer to one command.
pub(crate) enum Answer {
    Begin(BeginDecision),
    /// A resolution was applied; for an extension, the lease's new expiry.
    Resolved(Option<u64>),
    /// A rate operation's outcome, and whether it changed a counter.
    Rate(RateOutcome, bool),
    /// What a compaction step removed.
    Swept(Swept),
    /// Records written by a bulk load.
    Loaded(u64),
}

pub(crate) type Reply = Sender<Result<Answer, Error>>;

/// Everything a batch is applied with. One [`Mutex`] guards it: whoever holds the lock is the
/// only writer, whether that is the writer thread or a caller leading its own batch.
pub(crate) struct Core {
    pub backend: Arc<Backend>,
    pub poisoned: Arc<AtomicBool>,
    pub notifier: Arc<Notifier>,
    pub counters: Arc<Counters>,
    pub sequencer: Sequencer,
    /// Batched rate counters to flush, and how often.
    pub rate_flush: Option<(Arc<RateCache>, Duration)>,
    /// When the last foreground batch was applied (compaction steps shrink while it is recent).
    pub last_foreground: Instant,
    /// Set once [`Command::Shutdown`] was applied: every later command is answered `Closed`.
    pub stopped: bool,
}

/// The writer thread: serves the queue whenever no caller is leading, and runs the timers.
pub(crate) struct Writer {
    pub core: Arc<Mutex<Core>>,
    pub commands: Receiver<Command>,
}

/// Poisons the store if the thread applying a batch unwinds.
struct PoisonOnPanic<'a>(&'a AtomicBool);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
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
    let poisoned = Arc::clone(&core.poisoned);
    let _guard = PoisonOnPanic(&poisoned);
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
        let poisoned = Arc::clone(&self.core.lock().poisoned);
        let _guard = PoisonOnPanic(&poisoned);
        let flush_every = self
            .core
            .lock()
            .rate_flush
            .as_ref()
            .map(|(_, every)| *every);
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
                    core.flush_rates(false);
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
        core.flush_rates(true);
        core.stopped = true;
    }
}

impl Core {
    /// Applies and answers `batch`: the foreground commands in one transaction, then each
    /// compaction step in a transaction of its own.
    fn serve(&mut self, mut batch: Vec<Command>, commands: &Receiver<Command>) {
        if self.stopped {
            for command in batch {
                answer(command, Err(Error::Closed));
            }
            return;
        }
        // Compaction steps get transactions of their own, after the foreground batch: a request
        // never shares a commit (and its larger fsync) with a sweep step, and waits behind at most
        // one step.
        let mut steps: Vec<Command> = Vec::new();
        let mut index = 0;
        while index < batch.len() {
            if matches!(batch[index], Command::Compact { .. }) {
                steps.push(batch.remove(index));
            } else {
                index += 1;
            }
        }
        if !batch.is_empty() {
            self.stopped |= self.apply(&mut batch);
            self.last_foreground = Instant::now();
        }
        for mut step in steps {
            if self.stopped {
                answer(step, Err(Error::Closed));
                continue;
            }
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
    /// and records that the session ended cleanly. A failure poisons the store.
    fn flush_rates(&mut self, last: bool) {
        if self.poisoned.load(Ordering::Acquire) {
            return;
        }
        let dirty = match &self.rate_flush {
            Some((cache, _)) => cache.take_dirty(),
            None => Vec::new(),
        };
        if dirty.is_empty() && !last {
            return;
        }
        let batched = self.rate_flush.is_some();
        let sequencer = &self.sequencer;
        // The latest time an operation used; background work never reads the clock itself, so
        // the store's time moves only with operations.
        let now = sequencer.time.high_water();
        let written = self.backend.write(|tables| {
            for (key, spec, state) in &dirty {
                tables.put_rate(&key.0, stored(spec, *state, now).as_ref())?;
            }
            if last && batched {
                tables.mark_rates_clean()?;
            }
            tables.save_counters(
                sequencer.next_token,
                sequencer.time.high_water(),
                sequencer.record_counts,
            )?;
            Ok(())
        });
        match written {
            Ok(()) => self
                .counters
                .committed(dirty.len() as u64, self.sequencer.record_counts),
            Err(_) => self.poisoned.store(true, Ordering::Release),
        }
    }

    fn evict_rates(&self, now: u64) {
        if let Some((cache, _)) = &self.rate_flush {
            if !self.poisoned.load(Ordering::Acquire) {
                cache.evict(now);
            }
        }
    }

    /// Applies and answers `batch` (leaving it empty). Returns whether to stop.
    fn apply(&mut self, batch: &mut Vec<Command>) -> bool {
        let shutdown = batch
            .iter()
            .position(|command| matches!(command, Command::Shutdown));
        if let Some(at) = shutdown {
            for late in batch.drain(at..) {
                answer(late, Err(Error::Closed));
            }
        }
        if self.poisoned.load(Ordering::Acquire) {
            for command in batch.drain(..) {
                answer(command, Err(Error::Poisoned));
            }
            return shutdown.is_some();
        }
        // Flush requests are answered after the batch and a flush, so that they cover it.
        let mut flushes = Vec::new();
        batch.retain_mut(|command| match command {
            Command::Flush { reply } => {
                flushes.push(reply.clone());
                false
            }
            _ => true,
        });

        let mut answers = Vec::with_capacity(batch.len());
        let sequencer = &mut self.sequencer;
        let token_before = sequencer.next_token;
        let size = batch.len();
        let _span = crate::observe::batch(size);
        let started = Instant::now();
        let committed = self.backend.write(|tables| {
            let mut writes = 0;
            for command in batch.iter_mut() {
                match sequencer.execute(tables, command) {
                    Err(fatal @ Error::Storage(_)) => return Err(fatal),
                    outcome => {
                        writes += changes(command, &outcome);
                        answers.push(outcome);
                    }
                }
            }
            let counts = sequencer.record_counts.plus(tables.count_deltas());
            if tables.is_dirty() {
                tables.save_counters(sequencer.next_token, sequencer.time.high_water(), counts)?;
            }
            Ok(tables.is_dirty().then_some((writes, counts)))
        });
        match committed {
            Ok(wrote) => {
                // Counters first, so that a caller reading `stats()` after its answer sees its
                // own write counted.
                if let Some((writes, counts)) = wrote {
                    crate::observe::commit(size, writes, started.elapsed());
                    self.sequencer.record_counts = counts;
                    self.counters.committed(writes, counts);
                }
                for (command, outcome) in batch.drain(..).zip(answers) {
                    answer(command, outcome);
                }
                if wrote.is_some() {
                    self.notifier.bump();
                }
            }
            Err(error) => {
                crate::observe::poisoned(&error);
                self.poisoned.store(true, Ordering::Release);
                // Tokens of the failed batch were never acknowledged; keeping the counter advanced
                // is harmless (the store is poisoned) and never reuses a token.
                debug_assert!(self.sequencer.next_token >= token_before);
                let mut first = Some(error);
                for command in batch.drain(..) {
                    answer(command, Err(first.take().unwrap_or(Error::Poisoned)));
                }
                self.notifier.bump();
            }
        }
        if !flushes.is_empty() {
            // A flush is an operation: it reads the clock, so idleness is judged as of now.
            let now = self.sequencer.time.now();
            self.flush_rates(false);
            self.evict_rates(now);
            let outcome = || {
                if self.poisoned.load(Ordering::Acquire) {
                    Err(Error::Poisoned)
                } else {
                    Ok(Answer::Resolved(None))
                }
            };
            for reply in flushes {
                let _ = reply.send(outcome());
            }
        }
        shutdown.is_some()
    }
}

/// How many records or counters `command`, answered with `outcome`, changed.
fn changes(command: &Command, outcome: &Result<Answer, Error>) -> u64 {
    match (command, outcome) {
        (Command::Begin { .. }, Ok(Answer::Begin(BeginDecision::Acquired { .. })))
        | (Command::Resolve { .. }, Ok(Answer::Resolved(_)))
        | (Command::Rate { .. }, Ok(Answer::Rate(_, true))) => 1,
        (Command::Bulk { .. }, Ok(Answer::Loaded(written))) => *written,
        (Command::Compact { .. }, Ok(Answer::Swept(swept))) => swept.records + swept.rate_states,
        _ => 0,
    }
}

fn answer(command: Command, outcome: Result<Answer, Error>) {
    match command {
        Command::Begin { reply, .. }
        | Command::Resolve { reply, .. }
        | Command::Rate { reply, .. }
        | Command::Flush { reply }
        | Command::Compact { reply, .. }
        | Command::Bulk { reply, .. } => {
            // The caller may have gone (its thread ended); nothing to do then.
            let _ = reply.send(outcome);
        }
        Command::Shutdown => {}
    }
}
