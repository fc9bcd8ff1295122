//! The rate cache's unit tests: reservations, releases, charges without reservations.

use std::time::Duration;

use super::*;
use crate::ratelimit::{Limit, Quota};

const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * SECOND;

/// A fixed window of 16 an hour: reservations of 2 units.
fn limit() -> Limit {
    Limit::new("w", Quota::fixed_window(16, Duration::from_secs(3600))).unwrap()
}

#[allow(clippy::unnecessary_wraps)] // a `Loader`
fn fresh(_: &CounterKey, _: &Spec) -> Result<Option<RateState>> {
    Ok(None)
}

fn charge(cache: &RateCache, limit: &Limit, now: u64) -> Step {
    let query = Query {
        limit,
        subject: "s",
    };
    cache
        .run(OpKind::Charge { cost: 1 }, &[query], now, &fresh)
        .unwrap()
}

fn count(state: Option<RateState>) -> u64 {
    match state {
        Some(RateState::FixedWindow { count, .. }) => count,
        other => panic!("not a fixed window: {other:?}"),
    }
}

/// Until its reservation is written a charge changes nothing; once it is, the charge runs.
#[test]
fn a_charge_past_the_reservation_waits_for_its_write() {
    let cache = RateCache::new(CounterKeys::new((1, 2)), true);
    let limit = limit();
    assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
    assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
    let written = cache.take_dirty(None, false);
    assert_eq!(written.len(), 1);
    assert_eq!(
        count(written[0].state),
        3,
        "the charge's unit and two reserved"
    );
    cache.committed(&written);
    for left in [15, 14, 13] {
        let Step::Done(outcome) = charge(&cache, &limit, T0) else {
            panic!("a charge within the reservation waited");
        };
        assert_eq!(outcome.evaluation.remaining, left);
    }
    assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
}

/// A reservation written while the counter's release was taken must not count as what the
/// disk holds: the release is written after it, and the disk ends up with the true state.
#[test]
fn a_release_after_a_reservation_was_taken_keeps_the_lower_state() {
    let cache = RateCache::new(CounterKeys::new((1, 2)), true);
    let limit = limit();
    assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
    cache.committed(&cache.take_dirty(None, false));
    for _ in 0..3 {
        assert!(matches!(charge(&cache, &limit, T0), Step::Done(_)));
    }
    // Spent 3, the disk holds 3; the fourth unit reserves 6, and that write is taken ...
    assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
    let in_flight = cache.take_dirty(None, false);
    assert_eq!(count(in_flight[0].state), 6);
    // ... then a second passes without a charge: the release (back to 3) is taken ...
    let released = cache.take_dirty(Some(T0 + SECOND), false);
    assert_eq!(count(released[0].state), 3);
    // ... and the reservation's commit lands first. The disk will hold 3 once the release
    // commits, so a fourth unit must still wait for a reservation.
    cache.committed(&in_flight);
    assert!(matches!(charge(&cache, &limit, T0 + SECOND), Step::Reserve));
    cache.committed(&released);
    assert!(matches!(charge(&cache, &limit, T0 + SECOND), Step::Reserve));
}

/// Without reservations (the other crash policies) every charge runs from memory and the
/// state itself is what a flush writes.
#[test]
fn without_reservations_charges_run_at_once() {
    let cache = RateCache::new(CounterKeys::new((1, 2)), false);
    let limit = limit();
    for _ in 0..4 {
        assert!(matches!(charge(&cache, &limit, T0), Step::Done(_)));
    }
    let written = cache.take_dirty(Some(T0), true);
    assert_eq!(count(written[0].state), 4);
}
