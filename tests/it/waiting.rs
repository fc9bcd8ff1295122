//! `BeginOptions::wait` blocks while a key is in flight and wakes on the owner's resolution.
//! The waits here are an hour long: if a resolution failed to wake the waiter, the test would hang
//! instead of passing, so no timing is asserted.

use crate::fixture;

use std::time::Duration;

use fixture::{acquired, key, replay, request, response};
use tollgate::BeginOptions;
use tollgate::idempotency::Begin;

const LONG: BeginOptions = BeginOptions {
    record_ttl: None,
    lease_ttl: None,
    wait: Some(Duration::from_secs(3600)),
};

on_every_engine! {
    fn waiter_receives_the_replay_when_the_owner_completes(fixture) {
        let store = fixture.open();
        let lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || store.begin_with(&key("k"), &request("r"), &LONG).unwrap())
        };
        lease.complete(response("done")).unwrap();
        let again = replay(waiter.join().unwrap());
        assert_eq!(again.response().body, b"done");
    }
}

on_every_engine! {
    fn waiter_acquires_when_the_owner_releases(fixture) {
        let store = fixture.open();
        let lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || store.begin_with(&key("k"), &request("r"), &LONG).unwrap())
        };
        lease.release().unwrap();
        let lease = acquired(waiter.join().unwrap());
        assert!(!lease.recovered());
        assert_eq!(lease.attempt(), 1);
    }
}

on_every_engine! {
    fn wait_times_out_with_in_flight(fixture) {
        let store = fixture.open();
        let _lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        let options = BeginOptions {
            wait: Some(Duration::from_millis(20)),
            ..BeginOptions::default()
        };
        let outcome = store
            .begin_with(&key("k"), &request("r"), &options)
            .unwrap();
        // The manual clock has not moved: the full lease remains.
        let Begin::InFlight { retry_after } = outcome else {
            panic!("expected InFlight, got {outcome:?}")
        };
        fixture.assert_remaining(retry_after, fixture::LEASE_TTL);
    }
}

on_every_engine! {
    fn without_wait_in_flight_is_immediate_and_reports_time_to_expiry(fixture) {
        let store = fixture.open();
        let _lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        fixture.advance(&store, Duration::from_secs(10));
        let outcome = store.begin(&key("k"), &request("r")).unwrap();
        let Begin::InFlight { retry_after } = outcome else {
            panic!("expected InFlight, got {outcome:?}")
        };
        fixture.assert_remaining(retry_after, Duration::from_secs(20));
    }
}
