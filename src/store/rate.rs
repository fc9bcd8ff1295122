//! The rate-limit operations of [`Store`]: `check`, `check_n`, `check_all`, `peek`, `refund`,
//! `reset`.
//!
//! Each builds a [`RateOp`] over the counters it touches, then runs it either through the writer
//! (Immediate: durable on return) or against the in-memory cache (Batched: flushed by the writer
//! within `max_delay`). Both paths load counters through [`Recovery::on_load`], which applies the
//! crash policy, and both decide with the same pure `charge::apply`.

use std::time::Duration;

use super::Store;
use super::rate_cache::{Query, RateCache};
use super::writer::{Answer, Command};
use crate::error::{Error, Result};
use crate::ratelimit::charge::{self, OpKind, RateOp, RateOutcome, Target};
use crate::ratelimit::{
    CounterKey, CrashPolicy, Decision, Limit, PolicyName, RateState, Spec, check_subject,
    most_restrictive,
};

/// How counters loaded from disk are adjusted after an unclean batched session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recovery {
    /// With `DrainOnRecovery` after an unclean shutdown: the recovery time.
    drain_from: Option<u64>,
}

impl Recovery {
    pub(crate) fn new(policy: CrashPolicy, recovered_at: Option<u64>) -> Self {
        Self {
            drain_from: match policy {
                CrashPolicy::DrainOnRecovery => recovered_at,
                CrashPolicy::TrustLastFlush => None,
            },
        }
    }

    /// The counter as decisions may use it: at least as spent as "everything spent at recovery".
    /// Once a window (or a burst refill) has passed since recovery this changes nothing.
    pub(crate) fn on_load(
        &self,
        spec: &Spec,
        state: Option<RateState>,
        now: u64,
    ) -> Option<RateState> {
        match self.drain_from {
            Some(at) => Some(most_restrictive(spec, state, spec.drained(at), now)),
            None => state,
        }
    }
}

impl Store {
    /// Charges 1 to `subject`'s counter under `limit`. Equivalent to `check_n(limit, subject, 1)`.
    ///
    /// # Errors
    /// As for [`Store::check_n`].
    pub fn check(&self, limit: &Limit, subject: &str) -> Result<Decision> {
        self.check_n(limit, subject, 1)
    }

    /// Charges `cost` to `subject`'s counter under `limit` if the quota allows it; a denied check
    /// charges nothing. A cost of 0 charges nothing and reports like [`Store::peek`].
    ///
    /// # Errors
    /// - [`Error::CostTooLarge`] if `cost` exceeds the limit's burst (or window limit): such a
    ///   request could never be allowed.
    /// - [`Error::InvalidArgument`] for an empty subject or one over 512 bytes.
    /// - [`Error::Closed`], [`Error::Poisoned`], [`Error::Storage`], [`Error::Corrupted`].
    pub fn check_n(&self, limit: &Limit, subject: &str, cost: u32) -> Result<Decision> {
        self.check_all(&[(limit, subject)], cost)
    }

    /// Charges `cost` to every `(limit, subject)` counter, or to none: if any limit denies, nothing
    /// is charged. The decision reports the most restrictive limit: among denials the one with the
    /// longest wait, otherwise the one with the least remaining.
    ///
    /// # Errors
    /// As for [`Store::check_n`], and [`Error::InvalidArgument`] for an empty list or the same
    /// `(limit name, subject)` listed twice.
    pub fn check_all(&self, checks: &[(&Limit, &str)], cost: u32) -> Result<Decision> {
        for (limit, _) in checks {
            let capacity = limit.spec.capacity();
            if u64::from(cost) > capacity {
                return Err(Error::CostTooLarge {
                    cost,
                    limit: u32::try_from(capacity).unwrap_or(u32::MAX),
                });
            }
        }
        if checks.is_empty() {
            return Err(Error::InvalidArgument(
                "check_all needs at least one limit".into(),
            ));
        }
        if checks.len() > 1 {
            let mut pairs: Vec<(&str, &str)> = checks
                .iter()
                .map(|(limit, subject)| (limit.name(), *subject))
                .collect();
            pairs.sort_unstable();
            if pairs.windows(2).any(|pair| pair[0] == pair[1]) {
                return Err(Error::InvalidArgument(
                    "the same limit and subject are listed twice".into(),
                ));
            }
        }
        let kind = OpKind::Charge {
            cost: u64::from(cost),
        };
        self.run_rate(kind, checks)
    }

    /// Reports `subject`'s counter under `limit` without charging: `allowed()` says whether a check
    /// of cost 1 would pass now.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad subject; [`Error::Closed`], [`Error::Poisoned`],
    /// [`Error::Storage`], [`Error::Corrupted`].
    pub fn peek(&self, limit: &Limit, subject: &str) -> Result<Decision> {
        self.run_rate(OpKind::Peek, &[(limit, subject)])
    }

    /// Gives back up to `amount` of what `subject` spent under `limit` (for example when the
    /// request it paid for failed before doing work). Never raises the counter above a fresh one.
    ///
    /// # Errors
    /// As for [`Store::peek`].
    pub fn refund(&self, limit: &Limit, subject: &str, amount: u32) -> Result<Decision> {
        let kind = OpKind::Refund {
            amount: u64::from(amount),
        };
        self.run_rate(kind, &[(limit, subject)])
    }

    /// Forgets `subject`'s counter under `limit`: its next check starts from a full quota.
    ///
    /// # Errors
    /// As for [`Store::peek`].
    pub fn reset(&self, limit: &Limit, subject: &str) -> Result<()> {
        self.run_rate(OpKind::Reset, &[(limit, subject)]).map(drop)
    }

    /// Runs `kind` on the `(limit, subject)` counters in the configured durability mode: against
    /// the in-memory cache (Batched), through the writer (Immediate, changing operations), or from
    /// a read transaction (Immediate peeks).
    fn run_rate(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<Decision> {
        for (_, subject) in checks {
            check_subject(subject)?;
        }
        let outcome = if let Some(cache) = &self.shared.rate_cache {
            self.run_batched(cache, kind, checks)?
        } else {
            self.run_immediate(kind, checks)?
        };
        let decision = decision(&outcome, checks);
        if matches!(kind, OpKind::Charge { .. }) {
            crate::observe::rate(&decision);
        }
        Ok(decision)
    }

    /// Batched mode: decide from memory; the writer flushes changes within `max_delay`.
    fn run_batched(
        &self,
        cache: &RateCache,
        kind: OpKind,
        checks: &[(&Limit, &str)],
    ) -> Result<RateOutcome> {
        self.check_usable()?;
        // No store-wide lock on the hot path: the cache refuses work once `close` marked its
        // shards, and the engine is needed only to load a counter that is not in memory.
        let now = self.shared.time.now();
        let recovery = self.shared.recovery;
        let loader = |key: &CounterKey, spec: &Spec| {
            let engine = self.shared.engine.read();
            let engine = engine.as_ref().ok_or_else(|| Error::Closed)?;
            let stored = engine.backend.read_rate(&key.0)?.map(|rate| rate.state);
            Ok(recovery.on_load(spec, stored, now))
        };
        if let [(limit, subject)] = checks {
            cache.run(kind, &[Query { limit, subject }], now, &loader)
        } else {
            let queries: Vec<Query<'_>> = checks
                .iter()
                .map(|&(limit, subject)| Query { limit, subject })
                .collect();
            cache.run(kind, &queries, now, &loader)
        }
    }

    /// Immediate mode: changes go through the writer (durable on return); peeks read the latest
    /// committed state.
    fn run_immediate(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
        let mut targets = Vec::with_capacity(checks.len());
        for (limit, subject) in checks {
            targets.push(Target {
                key: self.shared.rate_keys.key(limit.name(), subject)?,
                spec: limit.spec,
            });
        }
        if kind.writes() {
            let op = RateOp { kind, targets };
            return match self.send(|reply| Command::Rate { op, reply })? {
                Answer::Rate(outcome, _) => Ok(outcome),
                _ => Err(Error::Corrupted(
                    "the writer answered a rate operation with something else".into(),
                )),
            };
        }
        self.check_usable()?;
        let engine = self.shared.engine.read();
        let engine = engine.as_ref().ok_or_else(|| Error::Closed)?;
        let now = self.shared.time.now();
        let mut states = Vec::with_capacity(targets.len());
        for target in &targets {
            let stored = engine
                .backend
                .read_rate(&target.key.0)?
                .map(|rate| rate.state);
            states.push(self.shared.recovery.on_load(&target.spec, stored, now));
        }
        Ok(charge::apply(kind, &targets, &mut states, now).0)
    }
}

fn decision(outcome: &RateOutcome, checks: &[(&Limit, &str)]) -> Decision {
    let limit = checks
        .get(outcome.deciding)
        .or(checks.first())
        .map(|(limit, _)| *limit);
    let (policy, capacity, window) = limit.map_or_else(
        || (PolicyName::new(""), 0, 0),
        |limit| {
            (
                PolicyName::new(limit.name()),
                limit.spec.capacity(),
                limit.spec.window(),
            )
        },
    );
    let evaluation = &outcome.evaluation;
    Decision {
        allowed: outcome.allowed,
        limit: u32::try_from(capacity).unwrap_or(u32::MAX),
        remaining: u32::try_from(evaluation.remaining).unwrap_or(u32::MAX),
        reset_after: Duration::from_nanos(evaluation.reset_after),
        retry_after: if outcome.allowed {
            None
        } else {
            evaluation.retry_after.map(Duration::from_nanos)
        },
        policy,
        window: Duration::from_nanos(window),
    }
}
