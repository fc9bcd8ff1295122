//! The rate-limit operations of [`Store`]: `check`, `check_n`, `check_all`, `peek`, `refund`,
//! `reset`.
//!
//! Each checks its arguments and hands the operation to the store's counter engine, which decides
//! it with the pure `charge::apply`; the outcome becomes a [`Decision`] here, the same on every
//! engine.

use std::time::Duration;

use super::Store;
use crate::error::{Error, Result};
use crate::ratelimit::charge::{OpKind, RateOutcome};
use crate::ratelimit::{Decision, Limit, PolicyName, check_subject};

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
        let kind = charge_kind(checks, cost)?;
        self.run_rate(kind, checks)
    }

    /// [`Store::check_all`] if memory can answer it, without waiting for any I/O: `Some` with the
    /// same decision (and the same charge) that `check_all` would give, or `None` when the answer
    /// needs the disk or the network, and nothing was charged. Memory answers a check of counters
    /// that are already in the cache of a store with [`RateDurability::Batched`] counters on the
    /// embedded engine; every other check answers `None`.
    ///
    /// For callers on an async executor: answer on the worker when this says `Some`, hand
    /// `check_all` to a blocking thread otherwise (the tower [`RateLimitLayer`] does).
    ///
    /// ```
    /// use tollgate::Store;
    /// use tollgate::ratelimit::{Limit, Quota};
    ///
    /// let store = Store::in_memory()?; // Batched counters, the default
    /// let limit = Limit::new("api", Quota::per_second(100))?;
    /// // Not in memory yet: no answer, nothing charged; the blocking call loads it.
    /// assert!(store.try_check_all(&[(&limit, "client-7")], 1)?.is_none());
    /// assert!(store.check(&limit, "client-7")?.allowed());
    /// let decision = store.try_check_all(&[(&limit, "client-7")], 1)?.expect("in memory now");
    /// assert_eq!(decision.remaining(), 98);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`Store::check_all`].
    ///
    /// [`RateDurability::Batched`]: crate::ratelimit::RateDurability::Batched
    /// [`RateLimitLayer`]: crate::tower::RateLimitLayer
    pub fn try_check_all(&self, checks: &[(&Limit, &str)], cost: u32) -> Result<Option<Decision>> {
        let kind = charge_kind(checks, cost)?;
        for (_, subject) in checks {
            check_subject(subject)?;
        }
        let Some(outcome) = self.counter_engine().run_in_memory(kind, checks)? else {
            return Ok(None);
        };
        let decision = decision(&outcome, checks);
        crate::observe::rate(&decision);
        Ok(Some(decision))
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

    /// Runs `kind` on the `(limit, subject)` counters on the store's counter engine.
    fn run_rate(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<Decision> {
        for (_, subject) in checks {
            check_subject(subject)?;
        }
        let outcome = self.counter_engine().run(kind, checks)?;
        let decision = decision(&outcome, checks);
        if matches!(kind, OpKind::Charge { .. }) {
            crate::observe::rate(&decision);
        }
        Ok(decision)
    }
}

/// The charge of `cost` to every one of `checks`, once the arguments are known to be good.
fn charge_kind(checks: &[(&Limit, &str)], cost: u32) -> Result<OpKind> {
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
    Ok(OpKind::Charge {
        cost: u64::from(cost),
    })
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
