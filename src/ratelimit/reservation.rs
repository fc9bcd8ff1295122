//! Quota leasing, as two pure rules over the algorithms' states: how far ahead of its charges a
//! Batched counter reserves ([`reserve`], [`reservation_units`]), and whether a state on disk
//! covers the one in memory ([`covers`]), so that a crash finds every counter at least as spent
//! as it really was and at most `max(1, capacity / 8)` units more (`CrashPolicy::BoundedLoss`;
//! DESIGN, R5). The embedded engine's rate cache applies them; no engine decides this itself.

use super::algorithm::{RateState, Spec, normalize};

/// Whether `durable` is at least as restrictive as `state` at `now` and at every later time: a
/// store that came back with `durable` after a crash would allow no more than `state` allows.
/// `None` is a counter that was never written (fresh). Time preserves the answer: both roll
/// forward alike (a GCRA arrival time only falls behind the clock; windows empty together, and a
/// sliding window's current count becomes its previous one in both).
pub(crate) fn covers(spec: &Spec, durable: Option<RateState>, state: RateState, now: u64) -> bool {
    let (durable, at) = normalize(spec, durable, now);
    let (state, _) = normalize(spec, Some(state), at);
    match (durable, state) {
        (RateState::Gcra { tat: d }, RateState::Gcra { tat: s }) => s <= at || d >= s,
        (
            RateState::FixedWindow {
                window: w1,
                count: d,
            },
            RateState::FixedWindow {
                window: w2,
                count: s,
            },
        ) => s == 0 || (w1 == w2 && d >= s),
        (
            RateState::SlidingWindow {
                window: w1,
                previous: p1,
                current: c1,
            },
            RateState::SlidingWindow {
                window: w2,
                previous: p2,
                current: c2,
            },
        ) => (p2 == 0 && c2 == 0) || (w1 == w2 && p1 >= p2 && c1 >= c2),
        _ => false,
    }
}

/// How many units a Batched counter reserves ahead of its charges (`max(1, capacity / 8)`): the
/// most a crash can cost a subject beyond what it consumed.
pub(crate) fn reservation_units(spec: &Spec) -> u64 {
    (spec.capacity() / 8).max(1)
}

/// `state` with `units` more spent at `now` (windows capped at their limit; never below `state`):
/// the reservation written ahead of a Batched counter's charges, so that a crash finds it at least
/// as spent as it really was, and at most `units` more.
pub(crate) fn reserve(spec: &Spec, state: RateState, units: u64, now: u64) -> RateState {
    let (normalized, at) = normalize(spec, Some(state), now);
    match (*spec, normalized) {
        // Not capped at the full burst: a charge a moment later starts from a later time, and a
        // reservation capped at "all spent now" would never cover it. The loss stays `units`
        // intervals of refill.
        (Spec::Gcra { interval, .. }, RateState::Gcra { tat }) => RateState::Gcra {
            tat: tat.max(at).saturating_add(units.saturating_mul(interval)),
        },
        (Spec::FixedWindow { limit, .. }, RateState::FixedWindow { window, count }) => {
            RateState::FixedWindow {
                window,
                count: count.saturating_add(units).min(limit).max(count),
            }
        }
        (
            Spec::SlidingWindow { limit, .. },
            RateState::SlidingWindow {
                window,
                previous,
                current,
            },
        ) => RateState::SlidingWindow {
            window,
            previous,
            current: current.saturating_add(units).min(limit).max(current),
        },
        _ => normalized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::algorithm::{evaluate, is_idle};
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_123 * SECOND + 456;

    fn spec() -> impl Strategy<Value = Spec> {
        (1u64..12, 1u64..20, 0usize..3).prop_map(|(limit, seconds, kind)| match kind {
            0 => Spec::Gcra {
                interval: seconds * SECOND,
                burst: limit,
            },
            1 => Spec::FixedWindow {
                limit,
                period: seconds * SECOND,
            },
            _ => Spec::SlidingWindow {
                limit,
                period: seconds * SECOND,
            },
        })
    }

    /// A state some history of checks reached: `costs` charged at the given offsets.
    fn history(spec: &Spec, steps: &[(u64, u64)]) -> (RateState, u64) {
        let mut state = None;
        let mut now = T0;
        for &(gap, cost) in steps {
            now += gap;
            let evaluation = evaluate(spec, state, now, cost.min(spec.capacity()));
            state = Some(evaluation.state);
        }
        (state.unwrap_or_else(|| spec.fresh(now)), now)
    }

    /// Units a state allows, charged one at a time at `now`.
    fn allowance(spec: &Spec, state: RateState, now: u64) -> u64 {
        let mut state = Some(state);
        let mut units = 0;
        while units <= spec.capacity() {
            let evaluation = evaluate(spec, state, now, 1);
            if !evaluation.allowed {
                break;
            }
            state = Some(evaluation.state);
            units += 1;
        }
        units
    }

    proptest! {
        /// A reservation covers the state it was made for, now and later; a covering state
        /// allows no more than the covered one at any later time; and a reservation of `u`
        /// units allows at most `u` fewer than the state it covers.
        #[test]
        fn a_reservation_covers_its_state_and_costs_at_most_its_units(
            spec in spec(),
            steps in proptest::collection::vec((0u64..30 * SECOND, 0u64..4), 0..6),
            units in 1u64..6,
            later in proptest::collection::vec(0u64..40 * SECOND, 1..4),
        ) {
            let (state, now) = history(&spec, &steps);
            let reserved = reserve(&spec, state, units, now);
            prop_assert!(covers(&spec, Some(reserved), state, now));
            let free = allowance(&spec, state, now);
            let left = allowance(&spec, reserved, now);
            prop_assert!(left <= free, "the reservation allows more: {left} > {free}");
            prop_assert!(free - left <= units, "lost {} > {units}", free - left);
            for gap in later {
                let at = now + gap;
                prop_assert!(covers(&spec, Some(reserved), state, at));
                prop_assert!(allowance(&spec, reserved, at) <= allowance(&spec, state, at));
            }
        }

        /// `covers` never says yes for a durable state that would allow more than `state`,
        /// for any pair of states histories reach (the release of a reservation included).
        #[test]
        fn covers_is_never_wrong(
            spec in spec(),
            a in proptest::collection::vec((0u64..30 * SECOND, 0u64..4), 0..6),
            b in proptest::collection::vec((0u64..30 * SECOND, 0u64..4), 0..6),
            gap in 0u64..40 * SECOND,
        ) {
            let (durable, t1) = history(&spec, &a);
            let (state, t2) = history(&spec, &b);
            let now = t1.max(t2);
            if covers(&spec, Some(durable), state, now) {
                prop_assert!(allowance(&spec, durable, now) <= allowance(&spec, state, now));
                prop_assert!(
                    allowance(&spec, durable, now + gap) <= allowance(&spec, state, now + gap)
                );
            }
            // A counter never written covers exactly the states that allow everything.
            prop_assert_eq!(
                covers(&spec, None, state, now),
                allowance(&spec, state, now) == allowance(&spec, spec.fresh(now), now)
                    && is_idle(&spec, state, now)
            );
        }
    }
}
