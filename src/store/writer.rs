//! The writer thread: every durable change goes through it, in group commits.
//!
//! Callers send a [`Command`] with a one-shot reply channel and block on the reply. The thread
//! blocks for the first command, drains whatever else is queued (up to [`MAX_BATCH`]), runs the
//! whole batch in one write transaction, commits once (one fsync), and only then answers every
//! caller. So N concurrent callers share one fsync, and nobody is answered before their change is
//! durable.
//!
//! # Rules
//! - Commands are applied in arrival order; each sees the writes of those before it in the batch.
//! - A command's *logical* error (lease lost, capacity, a corrupted value) is that caller's answer
//!   only; the rest of the batch commits.
//! - A *storage* error aborts the batch and poisons the store: every caller in the batch gets an
//!   error, and every later operation gets [`Error::Poisoned`] until the store is reopened.
//! - A batch that wrote nothing is not committed (no fsync).
//! - If the thread panics, a drop guard poisons the store, so nobody keeps writing to a store whose
//!   writer is gone.
//! - [`Command::Shutdown`] is the last command applied: commands queued behind it are answered
//!   [`Error::Closed`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::notify::Notifier;
use super::stats::Counters;
use crate::clock::StoreTime;
use crate::error::Error;
use crate::idempotency::machine::{self, BeginDecision, BeginParams, Effect, Resolution};
use crate::idempotency::{Digest, Record};
use crate::storage::{Backend, Tables};

/// Most commands applied in one transaction. Bounds the latency a single batch can add.
pub(crate) const MAX_BATCH: usize = 1024;

/// Expired records removed, at most, to make room when the store is at `max_records`.
const CAPACITY_SWEEP: usize = 64;

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
    Shutdown,
}

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
}

pub(crate) type Reply = Sender<Result<Answer, Error>>;

/// What the writer thread owns.
pub(crate) struct Writer {
    pub backend: Arc<Backend>,
    pub commands: Receiver<Command>,
    pub poisoned: Arc<AtomicBool>,
    pub notifier: Arc<Notifier>,
    pub counters: Arc<Counters>,
    pub sequencer: Sequencer,
}

/// The writer's in-memory counters and limits, applied to each command.
pub(crate) struct Sequencer {
    pub time: Arc<StoreTime>,
    pub epoch: u64,
    pub next_token: u64,
    pub max_records: Option<u64>,
}

/// Poisons the store if the writer thread unwinds.
struct PoisonOnPanic(Arc<AtomicBool>);

impl Drop for PoisonOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl Writer {
    pub(crate) fn run(mut self) {
        let _guard = PoisonOnPanic(Arc::clone(&self.poisoned));
        let mut batch = Vec::with_capacity(64);
        while let Ok(first) = self.commands.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if self.apply(&mut batch) {
                return;
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

        let mut answers = Vec::with_capacity(batch.len());
        let sequencer = &mut self.sequencer;
        let token_before = sequencer.next_token;
        let committed = self.backend.write(|tables| {
            let mut writes = 0;
            for command in batch.iter() {
                match sequencer.execute(tables, command) {
                    Err(fatal @ Error::Storage(_)) => return Err(fatal),
                    outcome => {
                        writes += u64::from(wrote_something(command, &outcome));
                        answers.push(outcome);
                    }
                }
            }
            if tables.is_dirty() {
                tables.save_counters(sequencer.next_token, sequencer.time.high_water())?;
            }
            Ok(tables.is_dirty().then_some(writes))
        });
        match committed {
            Ok(wrote) => {
                for (command, outcome) in batch.drain(..).zip(answers) {
                    answer(command, outcome);
                }
                if let Some(writes) = wrote {
                    self.counters.committed(writes);
                    self.notifier.bump();
                }
            }
            Err(error) => {
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
        shutdown.is_some()
    }
}

impl Sequencer {
    fn execute(&mut self, tables: &mut Tables<'_>, command: &Command) -> Result<Answer, Error> {
        let now = self.time.now();
        match command {
            Command::Begin {
                digest, request, ..
            } => self.begin(tables, digest, request, now),
            Command::Resolve {
                digest,
                token,
                resolution,
                ..
            } => {
                let existing = tables.record(digest)?;
                let effect = machine::resolve(existing.as_ref(), *token, resolution.clone(), now)
                    .map_err(|machine::Fenced| Error::LeaseLost)?;
                match effect {
                    Effect::Put(record) => {
                        tables.put_record(digest, existing.as_ref(), &record)?;
                        Ok(Answer::Resolved(lease_expiry(&record)))
                    }
                    Effect::Delete => {
                        if let Some(old) = &existing {
                            tables.delete_record(digest, old)?;
                        }
                        Ok(Answer::Resolved(None))
                    }
                }
            }
            Command::Shutdown => Err(Error::Closed),
        }
    }

    fn begin(
        &mut self,
        tables: &mut Tables<'_>,
        digest: &Digest,
        request: &BeginRequest,
        now: u64,
    ) -> Result<Answer, Error> {
        let existing = tables.record(digest)?;
        let params = BeginParams {
            fingerprint: request.fingerprint,
            now,
            epoch: self.epoch,
            lease_ttl: request.lease_ttl,
            record_ttl: request.record_ttl,
            next_token: self.next_token,
        };
        let decision = machine::begin(existing.as_ref(), &params);
        if let BeginDecision::Acquired { record, .. } = &decision {
            if existing.is_none() {
                self.make_room(tables, now)?;
            }
            tables.put_record(digest, existing.as_ref(), record)?;
            self.next_token = self.next_token.saturating_add(1);
        }
        Ok(Answer::Begin(decision))
    }

    /// Refuses a new record when the store is full, after removing already-expired records (never
    /// live ones: nothing is evicted).
    fn make_room(&self, tables: &mut Tables<'_>, now: u64) -> Result<(), Error> {
        let Some(limit) = self.max_records else {
            return Ok(());
        };
        if tables.record_count()? < limit {
            return Ok(());
        }
        tables.remove_expired_records(now, CAPACITY_SWEEP)?;
        if tables.record_count()? < limit {
            Ok(())
        } else {
            Err(Error::CapacityExceeded { limit })
        }
    }
}

fn lease_expiry(record: &Record) -> Option<u64> {
    match record.body {
        crate::idempotency::RecordBody::Running {
            lease_expires_at, ..
        } => Some(lease_expires_at),
        _ => None,
    }
}

/// Whether `command`, answered with `outcome`, changed a record.
fn wrote_something(command: &Command, outcome: &Result<Answer, Error>) -> bool {
    matches!(
        (command, outcome),
        (
            Command::Begin { .. },
            Ok(Answer::Begin(BeginDecision::Acquired { .. }))
        ) | (Command::Resolve { .. }, Ok(Answer::Resolved(_)))
    )
}

fn answer(command: Command, outcome: Result<Answer, Error>) {
    match command {
        Command::Begin { reply, .. } | Command::Resolve { reply, .. } => {
            // The caller may have gone (its thread ended); nothing to do then.
            let _ = reply.send(outcome);
        }
        Command::Shutdown => {}
    }
}
