//! The three rate algorithms, as pure functions over fixed-width state.
//!
//! `(spec, state, now, cost) -> evaluation`: no I/O, no clock, no locks. The store keeps the state
//! (in memory, on disk, or both) and applies what these functions return.
//!
//! - **GCRA** (generic cell rate algorithm; a token bucket without a timer): one `u64`, the
//!   theoretical arrival time `tat`. With emission interval `T = period / n` and burst `B`, a request
//!   of cost `c` at `now` is allowed iff `max(tat, now) + c·T − now ≤ B·T`; then
//!   `tat = max(tat, now) + c·T`. Remaining = `⌊(B·T − (tat − now)) / T⌋`.
//! - **Fixed window**: `n` per aligned window `[k·period, (k+1)·period)`; state (window start, count).
//! - **Sliding window counter**: the current window's count plus the previous window's count
//!   weighted by how much of the previous window the sliding period still covers:
//!   `estimate = previous·(period − elapsed)/period + current`. Allowed iff `estimate + c ≤ n`.
//!   All arithmetic for it is exact, in `u128`, scaled by `period`.
//!
//! # Rules every function keeps
//! - **Time going backwards mints nothing**: a `now` before the state's own time is treated as the
//!   state's time ("no time passed"). (The store's clock is clamped too; this holds on its own.)
//! - **Saturating arithmetic**: no quota, cost or time panics or wraps.
//! - **Idle means fresh**: [`is_idle`] is true exactly when the state allows what a fresh state
//!   allows, now and at every later time, so dropping it changes no decision.

/// The algorithm and its parameters, validated (see `Limit::new`): `limit ≥ 1`, `period ≥ 1`, and
/// for GCRA `interval ≥ 1` and `limit · interval` fits in a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Spec {
    Gcra { interval: u64, burst: u64 },
    FixedWindow { limit: u64, period: u64 },
    SlidingWindow { limit: u64, period: u64 },
}

/// The persistent state of one (limit, subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum RateState {
    Gcra {
        tat: u64,
    },
    FixedWindow {
        window: u64,
        count: u64,
    },
    SlidingWindow {
        window: u64,
        previous: u64,
        current: u64,
    },
}

/// What a check (or peek) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Evaluation {
    pub allowed: bool,
    /// The state to store if this evaluation is applied (unchanged when denied or peeked).
    pub state: RateState,
    /// Quota left after this evaluation.
    pub remaining: u64,
    /// Nanoseconds until the quota is fully available again.
    pub reset_after: u64,
    /// When denied, nanoseconds until the same cost would be allowed.
    pub retry_after: Option<u64>,
}

impl Spec {
    /// The most a single check can ever be allowed: the burst, or the window's limit.
    pub(crate) fn capacity(&self) -> u64 {
        match *self {
            Spec::Gcra { burst, .. } => burst,
            Spec::FixedWindow { limit, .. } | Spec::SlidingWindow { limit, .. } => limit,
        }
    }

    /// The time over which `capacity()` is granted, in nanoseconds (for headers).
    pub(crate) fn window(&self) -> u64 {
        match *self {
            Spec::Gcra { interval, burst } => interval.saturating_mul(burst),
            Spec::FixedWindow { period, .. } | Spec::SlidingWindow { period, .. } => period,
        }
    }

    /// A fresh state, as of `now`.
    pub(crate) fn fresh(&self, now: u64) -> RateState {
        match *self {
            Spec::Gcra { .. } => RateState::Gcra { tat: now },
            Spec::FixedWindow { period, .. } => RateState::FixedWindow {
                window: align(now, period),
                count: 0,
            },
            Spec::SlidingWindow { period, .. } => RateState::SlidingWindow {
                window: align(now, period),
                previous: 0,
                current: 0,
            },
        }
    }

    /// The most restrictive state reachable at `at`: all quota spent at that instant. Used after an
    /// unclean shutdown, when decisions made since the last flush are unknown.
    pub(crate) fn drained(&self, at: u64) -> RateState {
        match *self {
            Spec::Gcra { interval, burst } => RateState::Gcra {
                tat: at.saturating_add(interval.saturating_mul(burst)),
            },
            Spec::FixedWindow { limit, period } => RateState::FixedWindow {
                window: align(at, period),
                count: limit,
            },
            Spec::SlidingWindow { limit, period } => RateState::SlidingWindow {
                window: align(at, period),
                previous: limit,
                current: limit,
            },
        }
    }
}

/// `time` rounded down to a multiple of `period` (`period ≥ 1`).
fn align(time: u64, period: u64) -> u64 {
    time - time % period.max(1)
}

/// The state as of `now`, with windows rolled forward. A state of another algorithm (the limit's
/// quota was changed) counts as fresh. `now` earlier than the state's window is treated as the
/// window's own time: no time passed.
pub(super) fn normalize(spec: &Spec, state: Option<RateState>, now: u64) -> (RateState, u64) {
    let Some(state) = state else {
        return (spec.fresh(now), now);
    };
    match (*spec, state) {
        (Spec::Gcra { .. }, RateState::Gcra { .. }) => (state, now),
        (Spec::FixedWindow { period, .. }, RateState::FixedWindow { window, .. }) => {
            let now = now.max(window);
            let current = align(now, period);
            let rolled = if current == window {
                state
            } else {
                RateState::FixedWindow {
                    window: current,
                    count: 0,
                }
            };
            (rolled, now)
        }
        (
            Spec::SlidingWindow { period, .. },
            RateState::SlidingWindow {
                window, current, ..
            },
        ) => {
            let now = now.max(window);
            let aligned = align(now, period);
            let rolled = if aligned == window {
                state
            } else if aligned == window.saturating_add(period) {
                RateState::SlidingWindow {
                    window: aligned,
                    previous: current,
                    current: 0,
                }
            } else {
                RateState::SlidingWindow {
                    window: aligned,
                    previous: 0,
                    current: 0,
                }
            };
            (rolled, now)
        }
        _ => (spec.fresh(now), now),
    }
}

/// Evaluates a request of `cost` at `now`. `cost == 0` evaluates without charging (a peek).
/// `cost` must not exceed `spec.capacity()` (the store checks; a larger cost is simply denied
/// here, with no retry time).
pub(crate) fn evaluate(spec: &Spec, state: Option<RateState>, now: u64, cost: u64) -> Evaluation {
    let (state, now) = normalize(spec, state, now);
    match (*spec, state) {
        (Spec::Gcra { interval, burst }, RateState::Gcra { tat }) => {
            gcra(interval, burst, tat, now, cost)
        }
        (Spec::FixedWindow { limit, period }, RateState::FixedWindow { window, count }) => {
            fixed(limit, period, window, count, now, cost)
        }
        (
            Spec::SlidingWindow { limit, period },
            RateState::SlidingWindow {
                window,
                previous,
                current,
            },
        ) => sliding(
            Window {
                limit,
                period,
                start: window,
                previous,
                current,
            },
            now,
            cost,
        ),
        // normalize() always returns the spec's own kind.
        _ => Evaluation {
            allowed: false,
            state,
            remaining: 0,
            reset_after: 0,
            retry_after: None,
        },
    }
}

fn gcra(interval: u64, burst: u64, tat: u64, now: u64, cost: u64) -> Evaluation {
    let capacity = interval.saturating_mul(burst);
    let base = tat.max(now);
    let charged = base.saturating_add(cost.saturating_mul(interval));
    let allowed = charged - now <= capacity;
    let tat = if allowed { charged } else { base };
    let used = tat - now;
    Evaluation {
        allowed,
        state: RateState::Gcra { tat },
        remaining: capacity.saturating_sub(used) / interval,
        reset_after: used,
        retry_after: (!allowed && cost <= burst).then(|| charged - now - capacity),
    }
}

fn fixed(limit: u64, period: u64, window: u64, count: u64, now: u64, cost: u64) -> Evaluation {
    let allowed = count.saturating_add(cost) <= limit;
    let count = if allowed { count + cost } else { count };
    let window_end = window.saturating_add(period);
    let until_next = window_end.saturating_sub(now);
    Evaluation {
        allowed,
        state: RateState::FixedWindow { window, count },
        remaining: limit.saturating_sub(count),
        reset_after: if count == 0 { 0 } else { until_next },
        retry_after: (!allowed && cost <= limit).then_some(until_next),
    }
}

/// A sliding-window counter and its quota, as one value.
#[derive(Debug, Clone, Copy)]
struct Window {
    limit: u64,
    period: u64,
    /// Start of the current aligned window.
    start: u64,
    previous: u64,
    current: u64,
}

impl Window {
    /// `estimate · period`, exactly, with `elapsed` nanoseconds of the window gone.
    fn scaled_use(&self, previous: u64, current: u64, elapsed: u128) -> u128 {
        let p = u128::from(self.period);
        u128::from(previous) * (p - elapsed) + u128::from(current) * p
    }

    fn capacity(&self) -> u128 {
        u128::from(self.limit) * u128::from(self.period)
    }

    /// The elapsed time within a window from which `previous·(p − e) + (current + cost)·p` fits,
    /// if any.
    fn earliest_fit(&self, previous: u64, current: u64, cost: u64) -> Option<u128> {
        let p = u128::from(self.period);
        let room = u128::from(self.limit).checked_sub(u128::from(current) + u128::from(cost))? * p;
        if previous == 0 {
            return Some(0);
        }
        // previous·(p − e) ≤ room  ⇔  e ≥ p − room / previous (floor keeps it exact).
        Some(p.saturating_sub(room / u128::from(previous)))
    }

    /// The earliest time from `now` at which `cost` fits with no further charges (`cost ≤ limit`).
    fn retry_after(&self, now: u64, cost: u64) -> u64 {
        let p = u128::from(self.period);
        let start = u128::from(self.start);
        // In this window if the current count leaves room (a fit at `e = p`, the window's end, is
        // the same instant and condition as the next window's fit at its start). Otherwise in the
        // next window, where the current count becomes the previous one and the current is empty:
        // with `cost ≤ limit` it fits there at the latest once the previous count has slid out.
        let at = match self.earliest_fit(self.previous, self.current, cost) {
            Some(e) => start + e,
            None => start + p + self.earliest_fit(self.current, 0, cost).unwrap_or(p),
        };
        u64::try_from(at.saturating_sub(u128::from(now))).unwrap_or(u64::MAX)
    }
}

fn sliding(window: Window, now: u64, cost: u64) -> Evaluation {
    let elapsed = u128::from(now - window.start).min(u128::from(window.period));
    let used = window.scaled_use(window.previous, window.current, elapsed);
    let allowed = used + u128::from(cost) * u128::from(window.period) <= window.capacity();
    let window = Window {
        current: if allowed {
            window.current.saturating_add(cost)
        } else {
            window.current
        },
        ..window
    };
    let used = window.scaled_use(window.previous, window.current, elapsed);
    let remaining =
        u64::try_from(window.capacity().saturating_sub(used) / u128::from(window.period))
            .unwrap_or(u64::MAX);
    let window_end = window.start.saturating_add(window.period);
    let reset_after = if window.current > 0 {
        window_end.saturating_add(window.period).saturating_sub(now)
    } else if window.previous > 0 {
        window_end.saturating_sub(now)
    } else {
        0
    };
    Evaluation {
        allowed,
        state: RateState::SlidingWindow {
            window: window.start,
            previous: window.previous,
            current: window.current,
        },
        remaining,
        reset_after,
        retry_after: (!allowed && cost <= window.limit).then(|| window.retry_after(now, cost)),
    }
}

/// Gives back up to `amount` of spent quota (never more than was spent).
pub(crate) fn refund(spec: &Spec, state: Option<RateState>, now: u64, amount: u64) -> RateState {
    let (state, now) = normalize(spec, state, now);
    match (*spec, state) {
        (Spec::Gcra { interval, .. }, RateState::Gcra { tat }) => RateState::Gcra {
            tat: tat.saturating_sub(amount.saturating_mul(interval)).max(now),
        },
        (_, RateState::FixedWindow { window, count }) => RateState::FixedWindow {
            window,
            count: count.saturating_sub(amount),
        },
        (
            _,
            RateState::SlidingWindow {
                window,
                previous,
                current,
            },
        ) => {
            let from_current = amount.min(current);
            RateState::SlidingWindow {
                window,
                previous: previous.saturating_sub(amount - from_current),
                current: current - from_current,
            }
        }
        (_, other) => other,
    }
}

/// The later of two states: the one that allows less, now and from now on. Both must be of
/// `spec`'s kind (anything else is fresh and loses).
pub(crate) fn most_restrictive(
    spec: &Spec,
    a: Option<RateState>,
    b: RateState,
    now: u64,
) -> RateState {
    let (a, _) = normalize(spec, a, now);
    let (b, _) = normalize(spec, Some(b), now);
    match (a, b) {
        (RateState::Gcra { tat: x }, RateState::Gcra { tat: y }) => {
            RateState::Gcra { tat: x.max(y) }
        }
        (RateState::FixedWindow { window, count: x }, RateState::FixedWindow { count: y, .. }) => {
            RateState::FixedWindow {
                window,
                count: x.max(y),
            }
        }
        (
            RateState::SlidingWindow {
                window,
                previous: p1,
                current: c1,
            },
            RateState::SlidingWindow {
                previous: p2,
                current: c2,
                ..
            },
        ) => RateState::SlidingWindow {
            window,
            previous: p1.max(p2),
            current: c1.max(c2),
        },
        (_, b) => b,
    }
}

/// Whether `state` is indistinguishable from a fresh one at `now` and every later time.
pub(crate) fn is_idle(spec: &Spec, state: RateState, now: u64) -> bool {
    let (state, _) = normalize(spec, Some(state), now);
    match state {
        RateState::Gcra { tat } => tat <= now,
        RateState::FixedWindow { count, .. } => count == 0,
        RateState::SlidingWindow {
            previous, current, ..
        } => previous == 0 && current == 0,
    }
}

/// The expiry index's time granule for counters under `spec`: an eighth of its window, at least
/// 2^30 ns (about a second). See [`idle_at`].
fn idle_granule(spec: &Spec) -> u64 {
    (spec.window() / 8).max(1 << 30)
}

/// A time from which `state` is idle, for the expiry index: the exact idle time rounded up to a
/// granule, so that a busy counter's index entry stays put across most checks (one B-tree write per
/// check instead of three). Rounding up only keeps an idle counter a little longer before a sweep
/// removes it; an idle counter equals a fresh one, so nothing can tell.
pub(crate) fn idle_at(spec: &Spec, state: RateState) -> u64 {
    let exact = exact_idle_at(spec, state);
    let granule = idle_granule(spec);
    exact.div_ceil(granule).saturating_mul(granule).max(exact)
}

/// The exact time from which `state` is idle.
pub(crate) fn exact_idle_at(spec: &Spec, state: RateState) -> u64 {
    match (*spec, state) {
        (_, RateState::Gcra { tat }) => tat,
        (Spec::FixedWindow { period, .. }, RateState::FixedWindow { window, .. }) => {
            window.saturating_add(period)
        }
        (Spec::SlidingWindow { period, .. }, RateState::SlidingWindow { window, .. }) => {
            window.saturating_add(period.saturating_mul(2))
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    /// A time well past zero, aligned to neither seconds nor hours.
    const T0: u64 = 1_800_000_123 * SECOND + 456;

    fn specs() -> [Spec; 3] {
        [
            Spec::Gcra {
                interval: SECOND,
                burst: 3,
            },
            Spec::FixedWindow {
                limit: 3,
                period: 3600 * SECOND,
            },
            Spec::SlidingWindow {
                limit: 3,
                period: 3600 * SECOND,
            },
        ]
    }

    /// `retry_after` is given exactly for a denied cost that could fit (and is then in the
    /// future), never for an allowed one, never for a cost over the limit.
    #[test]
    fn retry_after_is_given_exactly_when_a_fitting_cost_is_denied() {
        for spec in specs() {
            let mut state = None;
            let mut denied = 0;
            for step in 0..8 {
                let now = T0 + step;
                for cost in [1, 2, 3, 4] {
                    let evaluation = evaluate(&spec, state, now, cost);
                    match (evaluation.allowed, cost <= spec.capacity()) {
                        (true, _) => {
                            assert_eq!(evaluation.retry_after, None, "{spec:?} cost {cost}");
                            state = Some(evaluation.state);
                        }
                        (false, true) => {
                            denied += 1;
                            assert!(
                                evaluation.retry_after.is_some_and(|r| r > 0),
                                "{spec:?} cost {cost}: {evaluation:?}"
                            );
                        }
                        (false, false) => {
                            assert_eq!(evaluation.retry_after, None, "{spec:?} cost {cost}");
                        }
                    }
                }
            }
            assert!(denied > 0, "{spec:?}: the quota was exhausted");
        }
    }

    /// Idle exactly when fresh: a charged counter is not idle until its charge has run out (GCRA
    /// at `tat`, a fixed window at its end, a sliding window once its count has slid out of two
    /// windows), and is idle from then on.
    #[test]
    fn a_counter_is_idle_exactly_from_its_exact_idle_time() {
        for spec in specs() {
            let charged = evaluate(&spec, None, T0, 1);
            assert!(charged.allowed);
            let state = charged.state;
            let exact = exact_idle_at(&spec, state);
            assert!(exact > T0, "{spec:?}");
            assert!(!is_idle(&spec, state, T0), "{spec:?} charged now");
            assert!(!is_idle(&spec, state, exact - 1), "{spec:?} just before");
            assert!(is_idle(&spec, state, exact), "{spec:?} at its idle time");
            assert!(
                is_idle(&spec, state, exact + 3600 * SECOND),
                "{spec:?} later"
            );
            assert!(is_idle(&spec, spec.fresh(T0), T0), "{spec:?} fresh");
        }
    }

    /// The index time is the exact idle time rounded up to the spec's granule: an eighth of the
    /// window, at least 2^30 ns.
    #[test]
    fn idle_at_rounds_up_to_the_granule() {
        let short = Spec::FixedWindow {
            limit: 3,
            period: SECOND,
        };
        for (spec, granule) in specs()
            .into_iter()
            .map(|spec| (spec, (spec.window() / 8).max(1 << 30)))
            .chain([(short, 1 << 30)])
        {
            assert_eq!(idle_granule(&spec), granule, "{spec:?}");
            let state = evaluate(&spec, None, T0, 1).state;
            let exact = exact_idle_at(&spec, state);
            let at = idle_at(&spec, state);
            assert_eq!(at % granule, 0, "{spec:?}: {at} on the granule");
            assert!(
                at >= exact && at - exact < granule,
                "{spec:?}: {exact} -> {at}"
            );
        }
    }

    #[test]
    fn sliding_retry_in_this_window_or_the_next() {
        let period = 100 * SECOND;
        let spec = Spec::SlidingWindow { limit: 4, period };
        let start = 1_800_000_000 * SECOND;
        // Three in the previous window, one in this one, a quarter of the way in: the estimate is
        // 3·0.75 + 1 = 3.25, so a cost of 1 waits until 3·(1 − e) + 1 + 1 ≤ 4, e = 1/3.
        let state = RateState::SlidingWindow {
            window: start,
            previous: 3,
            current: 1,
        };
        let now = start + period / 4;
        let denied = evaluate(&spec, Some(state), now, 1);
        assert!(!denied.allowed);
        assert_eq!(
            denied.retry_after,
            Some(period - period * 2 / 3 - period / 4)
        );
        // The current window full: only the next one has room, once 3 of its previous 4 slid out
        // (4·(1 − e) + 1 ≤ 4, e = 1/4).
        let full = RateState::SlidingWindow {
            window: start,
            previous: 0,
            current: 4,
        };
        let denied = evaluate(&spec, Some(full), now, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Some(period - period / 4 + period / 4));
    }
}
