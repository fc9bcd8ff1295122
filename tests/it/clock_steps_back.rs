//! A wall clock that steps backwards never shortens a lease or revives an expired record: the store
//! treats the step as "no time passed", and remembers the latest time across a reopen.

use crate::fixture;

use std::time::Duration;

use fixture::{Fixture, LEASE_TTL, RECORD_TTL, acquired, key, request, response};
use tollgate::Clock;
use tollgate::idempotency::Begin;

#[test]
fn a_backwards_step_does_not_shorten_a_live_lease() {
    let fixture = Fixture::new();
    let store = fixture.open();
    let start = fixture.clock.now();
    let _lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
    fixture.clock.advance(Duration::from_secs(20));
    let seen = store.begin(&key("k"), &request("r")).unwrap();
    assert!(
        matches!(seen, Begin::InFlight { retry_after } if retry_after == Duration::from_secs(10))
    );
    fixture.clock.set(start - Duration::from_secs(3600));
    // Still 10 s left, as of the latest time seen; not 3610 s and not expired.
    let outcome = store.begin(&key("k"), &request("r")).unwrap();
    assert!(
        matches!(outcome, Begin::InFlight { retry_after } if retry_after == Duration::from_secs(10))
    );
}

#[test]
fn a_backwards_step_does_not_revive_an_expired_record_even_across_reopen() {
    let fixture = Fixture::new();
    let store = fixture.open();
    let start = fixture.clock.now();
    acquired(store.begin(&key("k"), &request("r")).unwrap())
        .complete(response("old"))
        .unwrap();
    fixture.clock.advance(RECORD_TTL + LEASE_TTL);
    // A write at the late time persists the high-water mark.
    acquired(store.begin(&key("other"), &request("r")).unwrap())
        .complete(response("x"))
        .unwrap();
    store.close().unwrap();

    fixture.clock.set(start);
    let store = fixture.open();
    assert_eq!(store.get(&key("k")).unwrap(), None);
    assert!(matches!(
        store.begin(&key("k"), &request("r")).unwrap(),
        Begin::Acquired(_)
    ));
}
