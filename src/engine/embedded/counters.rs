//! The embedded engine's rate counters, in the configured durability mode.
//!
//! Batched: decided against the in-memory cache (`rate_cache.rs`), flushed by the writer within
//! `max_delay`. Immediate: changes go through the writer (durable on return); peeks read the
//! latest committed state. Both paths load counters through [`Recovery::on_load`], which applies
//! the crash policy, and both decide with the same pure `charge::apply`.
//!
//! [`Recovery::on_load`]: crate::ratelimit::crash_policy::Recovery::on_load

use std::cell::Cell;

use super::Embedded;
use super::command::Command;
use super::rate_cache::{Loader, Query, RateCache, Step};
use crate::engine::CounterEngine;
use crate::error::{Error, Result};
use crate::ratelimit::charge::{self, OpKind, RateOp, RateOutcome};
use crate::ratelimit::{CounterKey, Limit, Spec};

impl CounterEngine for Embedded {
    fn run(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
        match &self.rate_cache {
            Some(cache) => self.run_batched(cache, kind, checks),
            None => self.run_immediate(kind, checks),
        }
    }

    fn run_in_memory(
        &self,
        kind: OpKind,
        checks: &[(&Limit, &str)],
    ) -> Result<Option<RateOutcome>> {
        let Some(cache) = &self.rate_cache else {
            return Ok(None); // Immediate: every change waits for the writer's commit
        };
        if !matches!(kind, OpKind::Charge { .. } | OpKind::Peek) {
            return Ok(None); // a refund or a reset is written before it is answered
        }
        self.check_usable()?;
        let now = self.time.now();
        // A counter that is not in memory stops the operation before anything is charged (the
        // cache charges only once it holds every counter); the caller goes the blocking way.
        let missed = Cell::new(false);
        let loader = |_: &CounterKey, _: &Spec| {
            missed.set(true);
            Err(Error::InvalidArgument("counter not in memory".into()))
        };
        let outcome = run_in_cache(cache, kind, checks, now, &loader);
        if missed.get() {
            return Ok(None);
        }
        match outcome? {
            Step::Done(outcome) => Ok(Some(outcome)),
            // A reservation must be written first: the blocking way flushes.
            Step::Reserve => Ok(None),
            // Memory answers charges only (`try_check_all`); a refund or reset is not one.
            Step::Write(_) => Err(Error::InvalidArgument(
                "a refund or a reset cannot be answered from memory".into(),
            )),
        }
    }

    fn flush(&self) -> Result<()> {
        self.send(|reply| Command::Flush { reply, evict: true })
    }
}

/// How many times one operation reserves and runs again before giving up. Each round writes a
/// reservation of an eighth of the burst, so only other callers spending all of it before this
/// caller runs again, round after round, exhausts them.
const MAX_RESERVATION_ROUNDS: usize = 32;

impl Embedded {
    /// Batched mode: decide from memory; the writer flushes changes within `max_delay`, and
    /// writes a reservation at once when a charge needs one.
    fn run_batched(
        &self,
        cache: &RateCache,
        kind: OpKind,
        checks: &[(&Limit, &str)],
    ) -> Result<RateOutcome> {
        self.check_usable()?;
        // No store-wide lock on the hot path: the cache refuses work once `close` marked its
        // shards, and the backend is needed only to load a counter that is not in memory.
        let recovery = self.recovery;
        for _ in 0..MAX_RESERVATION_ROUNDS {
            let now = self.time.now();
            let loader = |key: &CounterKey, spec: &Spec| {
                let stored =
                    self.read_backend(|backend, overlay| latest_rate(backend, overlay, &key.0))?;
                Ok(recovery.on_load(spec, stored.map(|rate| rate.state), now))
            };
            match run_in_cache(cache, kind, checks, now, &loader)? {
                Step::Done(outcome) => return Ok(outcome),
                // A refund or a reset, applied in memory: answered once written, so that a crash
                // cannot undo it. If the write fails the store cannot write; memory keeps it.
                Step::Write(outcome) => {
                    self.send(|reply| Command::Flush {
                        reply,
                        evict: false,
                    })?;
                    return Ok(outcome);
                }
                // A counter needs a larger reservation on disk before this charge: one group
                // commit writes it (with every other waiting), then the operation runs again.
                Step::Reserve => self.send(|reply| Command::Flush {
                    reply,
                    evict: false,
                })?,
            }
        }
        Err(Error::Unavailable(
            "a rate counter's reservations were used up by other callers faster than they \
             could be written; retry"
                .into(),
        ))
    }

    /// Immediate mode: changes go through the writer (durable on return); peeks read the latest
    /// committed state.
    fn run_immediate(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
        let targets = crate::ratelimit::charge::targets(&self.rate_keys, checks)?;
        if kind.writes() {
            let op = RateOp { kind, targets };
            return self
                .send(|reply| Command::Rate { op, reply })
                .map(|(outcome, _changed)| outcome);
        }
        let now = self.time.now();
        let mut states = Vec::with_capacity(targets.len());
        for target in &targets {
            let stored =
                self.with_backend(|backend, overlay| latest_rate(backend, overlay, &target.key.0))?;
            states.push(
                self.recovery
                    .on_load(&target.spec, stored.map(|rate| rate.state), now),
            );
        }
        Ok(charge::apply(kind, &targets, &mut states, now).0)
    }
}

/// The latest acknowledged state of a counter: the log's overlay first, then redb.
fn latest_rate(
    backend: &super::storage::Backend,
    overlay: Option<&super::log::overlay::Overlay>,
    key: &[u8; 16],
) -> Result<Option<crate::engine::codec::StoredRate>> {
    match overlay.and_then(|overlay| overlay.rate(key)) {
        Some(latest) => Ok(latest),
        None => backend.read_rate(key),
    }
}

/// Runs `kind` on `checks` in the rate cache, loading what is not in memory with `loader`.
fn run_in_cache(
    cache: &RateCache,
    kind: OpKind,
    checks: &[(&Limit, &str)],
    now: u64,
    loader: &impl Loader,
) -> Result<Step> {
    if let [(limit, subject)] = checks {
        // One counter, without allocation.
        cache.run(kind, &[Query { limit, subject }], now, loader)
    } else {
        let queries: Vec<Query<'_>> = checks
            .iter()
            .map(|&(limit, subject)| Query { limit, subject })
            .collect();
        cache.run(kind, &queries, now, loader)
    }
}
