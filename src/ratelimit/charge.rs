//! Rate operations over a set of counters, as a pure function: all-or-nothing charging and the
//! choice of the deciding limit.
//!
//! Both durability modes load the states (from memory or from the write transaction), call
//! [`apply`], and store what it returns. So the all-or-nothing rule lives here once:
//! a charge is applied to every counter or to none, and the decision reported is the most
//! restrictive one (a denying limit with the longest wait, else the allowing limit with the least
//! left).

use super::algorithm::{self, Evaluation, RateState, Spec};

/// One counter an operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub key: [u8; 32],
    pub spec: Spec,
}

/// A rate operation on loaded counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RateOp {
    /// Charge `cost` to every target, or to none.
    Charge { targets: Vec<Target>, cost: u64 },
    /// Report without charging.
    Peek { target: Target },
    /// Give back up to `amount`.
    Refund { target: Target, amount: u64 },
    /// Forget the counter: the subject starts fresh.
    Reset { target: Target },
}

impl RateOp {
    pub(crate) fn targets(&self) -> &[Target] {
        match self {
            RateOp::Charge { targets, .. } => targets,
            RateOp::Peek { target } | RateOp::Refund { target, .. } | RateOp::Reset { target } => {
                std::slice::from_ref(target)
            }
        }
    }
}

/// What an operation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateOutcome {
    pub allowed: bool,
    /// Index into the op's targets of the limit the decision reports.
    pub deciding: usize,
    pub evaluation: Evaluation,
}

/// Applies `op` to `states` (one per target, in order, `None` = fresh) at `now`. Returns the
/// outcome and the new states to store, or `None` if nothing changes. `Some(None)` for a target
/// means: delete its counter.
pub(crate) fn apply(
    op: &RateOp,
    states: &[Option<RateState>],
    now: u64,
) -> (RateOutcome, Option<Vec<Option<RateState>>>) {
    match op {
        RateOp::Charge { targets, cost } => {
            let evaluations: Vec<Evaluation> = targets
                .iter()
                .zip(states)
                .map(|(target, state)| algorithm::evaluate(&target.spec, *state, now, *cost))
                .collect();
            let allowed = evaluations.iter().all(|e| e.allowed);
            let deciding = most_restrictive(&evaluations);
            let outcome = RateOutcome {
                allowed,
                deciding,
                evaluation: evaluations[deciding],
            };
            let writes =
                (allowed && *cost > 0).then(|| evaluations.iter().map(|e| Some(e.state)).collect());
            (outcome, writes)
        }
        RateOp::Peek { target } => {
            let evaluation = peek(&target.spec, states[0], now);
            (
                RateOutcome {
                    allowed: evaluation.allowed,
                    deciding: 0,
                    evaluation,
                },
                None,
            )
        }
        RateOp::Refund { target, amount } => {
            let refunded = algorithm::refund(&target.spec, states[0], now, *amount);
            let evaluation = peek(&target.spec, Some(refunded), now);
            (
                RateOutcome {
                    allowed: evaluation.allowed,
                    deciding: 0,
                    evaluation,
                },
                Some(vec![Some(refunded)]),
            )
        }
        RateOp::Reset { target } => {
            let evaluation = peek(&target.spec, None, now);
            (
                RateOutcome {
                    allowed: true,
                    deciding: 0,
                    evaluation,
                },
                Some(vec![None]),
            )
        }
    }
}

/// What a cost-1 request would get, without charging it.
fn peek(spec: &Spec, state: Option<RateState>, now: u64) -> Evaluation {
    let one = algorithm::evaluate(spec, state, now, 1);
    let zero = algorithm::evaluate(spec, state, now, 0);
    Evaluation {
        allowed: one.allowed,
        retry_after: one.retry_after,
        ..zero
    }
}

/// The deciding evaluation: among denials the longest wait; if none denies, the least remaining
/// (then the longest reset).
fn most_restrictive(evaluations: &[Evaluation]) -> usize {
    let rank = |e: &Evaluation| {
        (
            !e.allowed,
            e.retry_after
                .unwrap_or(if e.allowed { 0 } else { u64::MAX }),
            u64::MAX - e.remaining,
            e.reset_after,
        )
    };
    evaluations
        .iter()
        .enumerate()
        .max_by_key(|(_, e)| rank(e))
        .map_or(0, |(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn target(key: u8, spec: Spec) -> Target {
        Target {
            key: [key; 32],
            spec,
        }
    }

    #[test]
    fn a_denial_by_any_limit_charges_none() {
        let roomy = target(
            1,
            Spec::FixedWindow {
                limit: 100,
                period: 60 * SECOND,
            },
        );
        let tight = target(
            2,
            Spec::FixedWindow {
                limit: 1,
                period: 60 * SECOND,
            },
        );
        let op = RateOp::Charge {
            targets: vec![roomy, tight],
            cost: 1,
        };
        let (first, writes) = apply(&op, &[None, None], 0);
        assert!(first.allowed);
        let writes = writes.unwrap();
        let (second, none) = apply(&op, &writes, 1);
        assert!(!second.allowed);
        assert_eq!(second.deciding, 1);
        assert_eq!(none, None);
    }

    #[test]
    fn the_least_remaining_limit_decides_when_all_allow() {
        let roomy = target(
            1,
            Spec::FixedWindow {
                limit: 100,
                period: SECOND,
            },
        );
        let tight = target(
            2,
            Spec::FixedWindow {
                limit: 5,
                period: SECOND,
            },
        );
        let op = RateOp::Charge {
            targets: vec![roomy, tight],
            cost: 2,
        };
        let (outcome, _) = apply(&op, &[None, None], 0);
        assert_eq!((outcome.deciding, outcome.evaluation.remaining), (1, 3));
    }

    #[test]
    fn peek_charges_nothing_and_reports_a_cost_one_request() {
        let spec = Spec::Gcra {
            interval: SECOND,
            burst: 1,
        };
        let op = RateOp::Peek {
            target: target(1, spec),
        };
        let (outcome, writes) = apply(&op, &[None], 0);
        assert!(outcome.allowed);
        assert_eq!(outcome.evaluation.remaining, 1);
        assert_eq!(writes, None);
        let spent = Some(RateState::Gcra { tat: SECOND });
        let (outcome, _) = apply(&op, &[spent], 0);
        assert!(!outcome.allowed);
        assert_eq!(outcome.evaluation.retry_after, Some(SECOND));
    }
}
