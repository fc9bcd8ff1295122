//! Rate operations over a set of counters, as a pure function: all-or-nothing charging and the
//! choice of the deciding limit.
//!
//! Both durability modes load the states (from memory or from the write transaction), call
//! [`apply`], and store what it returns. So the all-or-nothing rule lives here once:
//! a charge is applied to every counter or to none, and the decision reported is the most
//! restrictive one (a denying limit with the longest wait, else the allowing limit with the least
//! left).

use super::algorithm::{self, Evaluation, RateState, Spec};
use super::key::{CounterKey, CounterKeys};
use super::quota::Limit;
use crate::error::Result;

/// One counter an operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub key: CounterKey,
    pub spec: Spec,
}

/// The counters that `(limit, subject)` checks touch, keyed with `keys` and with their specs.
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an empty subject or one over
/// 512 bytes.
pub(crate) fn targets(keys: &CounterKeys, checks: &[(&Limit, &str)]) -> Result<Vec<Target>> {
    checks
        .iter()
        .map(|(limit, subject)| {
            Ok(Target {
                key: keys.key(limit.name(), subject)?,
                spec: limit.spec,
            })
        })
        .collect()
}

/// What to do to the targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum OpKind {
    /// Charge `cost` to every target, or to none.
    Charge { cost: u64 },
    /// Report on the single target without charging.
    Peek,
    /// Give back up to `amount` to the single target.
    Refund { amount: u64 },
    /// Forget the single target's counter: the subject starts fresh.
    Reset,
}

impl OpKind {
    /// Whether the operation may change counters (a peek never does).
    pub(crate) fn writes(self) -> bool {
        !matches!(self, OpKind::Peek)
    }
}

/// An operation with owned targets, to send to the writer thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateOp {
    pub kind: OpKind,
    pub targets: Vec<Target>,
}

/// What an operation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RateOutcome {
    pub allowed: bool,
    /// Index into the op's targets of the limit the decision reports.
    pub deciding: usize,
    pub evaluation: Evaluation,
}

/// Applies `kind` to `targets`, whose loaded states are `states` (same order, `None` = fresh), at
/// `now`. On return `states` holds the states to store (`None` = delete the counter); the `bool`
/// says whether anything changed. Peek, refund and reset use only the first target.
pub(crate) fn apply(
    kind: OpKind,
    targets: &[Target],
    states: &mut [Option<RateState>],
    now: u64,
) -> (RateOutcome, bool) {
    let first = |states: &[Option<RateState>]| states.first().copied().flatten();
    let Some(spec) = targets.first().map(|target| target.spec) else {
        return (empty(now), false);
    };
    match kind {
        OpKind::Charge { cost } if targets.len() == 1 => {
            // One counter: its evaluation is the decision.
            let evaluation = algorithm::evaluate(&spec, first(states), now, cost);
            let changed = evaluation.allowed && cost > 0;
            if changed {
                if let Some(state) = states.first_mut() {
                    *state = Some(evaluation.state);
                }
            }
            let outcome = RateOutcome {
                allowed: evaluation.allowed,
                deciding: 0,
                evaluation,
            };
            (outcome, changed)
        }
        OpKind::Charge { cost } => charge_all(targets, states, now, cost),
        OpKind::Peek => {
            let evaluation = peek(&spec, first(states), now);
            (
                RateOutcome {
                    allowed: evaluation.allowed,
                    deciding: 0,
                    evaluation,
                },
                false,
            )
        }
        OpKind::Refund { amount } => {
            let refunded = algorithm::refund(&spec, first(states), now, amount);
            if let Some(state) = states.first_mut() {
                *state = Some(refunded);
            }
            let evaluation = peek(&spec, Some(refunded), now);
            (
                RateOutcome {
                    allowed: evaluation.allowed,
                    deciding: 0,
                    evaluation,
                },
                true,
            )
        }
        OpKind::Reset => {
            if let Some(state) = states.first_mut() {
                *state = None;
            }
            let evaluation = peek(&spec, None, now);
            (
                RateOutcome {
                    allowed: true,
                    deciding: 0,
                    evaluation,
                },
                true,
            )
        }
    }
}

/// Charges `cost` to every target or to none; the most restrictive evaluation decides.
fn charge_all(
    targets: &[Target],
    states: &mut [Option<RateState>],
    now: u64,
    cost: u64,
) -> (RateOutcome, bool) {
    let mut allowed = true;
    let mut deciding = 0;
    let mut decided: Option<Evaluation> = None;
    for (index, (target, state)) in targets.iter().zip(states.iter()).enumerate() {
        let evaluation = algorithm::evaluate(&target.spec, *state, now, cost);
        allowed &= evaluation.allowed;
        if decided.is_none_or(|best| rank(&evaluation) > rank(&best)) {
            decided = Some(evaluation);
            deciding = index;
        }
    }
    let changed = allowed && cost > 0;
    if changed {
        for (target, state) in targets.iter().zip(states.iter_mut()) {
            *state = Some(algorithm::evaluate(&target.spec, *state, now, cost).state);
        }
    }
    let Some(evaluation) = decided else {
        return (empty(now), false);
    };
    (
        RateOutcome {
            allowed,
            deciding,
            evaluation,
        },
        changed,
    )
}

/// The outcome of an operation on no counters (callers never build one; kept total anyway).
fn empty(now: u64) -> RateOutcome {
    let spec = Spec::FixedWindow {
        limit: 1,
        period: 1,
    };
    RateOutcome {
        allowed: false,
        deciding: 0,
        evaluation: algorithm::evaluate(&spec, None, now, 0),
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

/// Orders evaluations by restrictiveness: a denial over an allowance; among denials the longer
/// wait; among allowances the fewer remaining, then the longer reset.
fn rank(e: &Evaluation) -> (bool, u64, u64, u64) {
    (
        !e.allowed,
        e.retry_after
            .unwrap_or(if e.allowed { 0 } else { u64::MAX }),
        u64::MAX - e.remaining,
        e.reset_after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn target(key: u8, spec: Spec) -> Target {
        Target {
            key: CounterKey([key; 16]),
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
        let targets = [roomy, tight];
        let mut states = [None, None];
        let (first, changed) = apply(OpKind::Charge { cost: 1 }, &targets, &mut states, 0);
        assert!(first.allowed && changed);
        let before = states;
        let (second, changed) = apply(OpKind::Charge { cost: 1 }, &targets, &mut states, 1);
        assert!(!second.allowed && !changed);
        assert_eq!(second.deciding, 1);
        assert_eq!(states, before);
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
        let (outcome, _) = apply(
            OpKind::Charge { cost: 2 },
            &[roomy, tight],
            &mut [None, None],
            0,
        );
        assert_eq!((outcome.deciding, outcome.evaluation.remaining), (1, 3));
    }

    /// Equally restrictive limits: the first listed decides, so headers are predictable.
    #[test]
    fn ties_go_to_the_first_listed_limit() {
        let spec = Spec::FixedWindow {
            limit: 5,
            period: SECOND,
        };
        let targets = [target(1, spec), target(2, spec), target(3, spec)];
        let (allowed, _) = apply(OpKind::Charge { cost: 1 }, &targets, &mut [None; 3], 0);
        assert!(allowed.allowed);
        assert_eq!(allowed.deciding, 0);
        let full = Some(RateState::FixedWindow {
            window: 0,
            count: 5,
        });
        let (denied, changed) = apply(OpKind::Charge { cost: 1 }, &targets, &mut [full; 3], 0);
        assert!(!denied.allowed && !changed);
        assert_eq!(denied.deciding, 0);
    }

    /// A cost of 0 reports without changing anything, on one counter and on several.
    #[test]
    fn a_zero_cost_changes_nothing() {
        let spec = Spec::FixedWindow {
            limit: 5,
            period: SECOND,
        };
        for targets in [&[target(1, spec)][..], &[target(1, spec), target(2, spec)]] {
            let mut states = vec![None; targets.len()];
            let (outcome, changed) = apply(OpKind::Charge { cost: 0 }, targets, &mut states, 0);
            assert!(outcome.allowed && !changed, "{} targets", targets.len());
            assert!(states.iter().all(Option::is_none));
            assert_eq!(outcome.evaluation.remaining, 5);
        }
    }

    #[test]
    fn peek_charges_nothing_and_reports_a_cost_one_request() {
        let spec = Spec::Gcra {
            interval: SECOND,
            burst: 1,
        };
        let targets = [target(1, spec)];
        let (outcome, changed) = apply(OpKind::Peek, &targets, &mut [None], 0);
        assert!(outcome.allowed && !changed);
        assert_eq!(outcome.evaluation.remaining, 1);
        let mut spent = [Some(RateState::Gcra { tat: SECOND })];
        let (outcome, _) = apply(OpKind::Peek, &targets, &mut spent, 0);
        assert!(!outcome.allowed);
        assert_eq!(outcome.evaluation.retry_after, Some(SECOND));
    }
}
