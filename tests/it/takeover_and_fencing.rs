//! Takeovers hand a record to a new owner with a higher token, tell it that it is a recovery, give
//! it the checkpoint, and fence the old owner out. Both ways in: lease expiry, and a reopen (a new
//! boot epoch) which needs no waiting because the file lock (on PostgreSQL, the node's lock)
//! proves the old process is gone. Every scenario runs on every engine.

use crate::fixture;

use std::time::Duration;

use fixture::{LEASE_TTL, acquired, key, replay, request, response};
use tollgate::Error;
use tollgate::idempotency::{Begin, RecordState};

on_every_engine! {
    fn takeover_after_lease_expiry_fences_the_old_lease(fixture) {
        let store = fixture.open();
        let mut old = acquired(store.begin(&key("k"), &request("r")).unwrap());
        old.save_checkpoint("charged", b"ch_123").unwrap();
        fixture.advance(&store, LEASE_TTL);

        let mut new = acquired(store.begin(&key("k"), &request("r")).unwrap());
        assert!(new.recovered());
        assert_eq!(new.attempt(), 2);
        assert!(new.token() > old.token());
        let checkpoint = new.checkpoint().unwrap();
        assert_eq!(
            (checkpoint.name.as_str(), checkpoint.data.as_slice()),
            ("charged", &b"ch_123"[..])
        );

        assert!(matches!(
            old.extend(Duration::from_secs(60)),
            Err(Error::LeaseLost)
        ));
        assert!(matches!(
            old.save_checkpoint("x", b""),
            Err(Error::LeaseLost)
        ));
        assert!(matches!(
            old.complete(response("stale")),
            Err(Error::LeaseLost)
        ));

        new.extend(Duration::from_secs(60)).unwrap();
        new.complete(response("fresh")).unwrap();
        let again = replay(store.begin(&key("k"), &request("r")).unwrap());
        assert_eq!(again.response().body, b"fresh");
        assert_eq!(store.get(&key("k")).unwrap().unwrap().attempts, 2);
    }
}

on_every_engine! {
    fn stale_release_and_fail_are_fenced_too(fixture) {
        let store = fixture.open();
        let first = acquired(store.begin(&key("a"), &request("r")).unwrap());
        let second = acquired(store.begin(&key("b"), &request("r")).unwrap());
        fixture.advance(&store, LEASE_TTL + Duration::from_secs(1));
        let _a = acquired(store.begin(&key("a"), &request("r")).unwrap());
        let _b = acquired(store.begin(&key("b"), &request("r")).unwrap());
        assert!(matches!(first.release(), Err(Error::LeaseLost)));
        assert!(matches!(second.fail(response("x")), Err(Error::LeaseLost)));
    }
}

on_every_engine! {
    fn reopen_lets_a_new_owner_take_over_at_once(fixture) {
        let store = fixture.open();
        let lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        let old_token = lease.token();
        // The process "crashes" holding the lease: nothing is resolved.
        drop(lease);
        drop(store);

        let store = fixture.open();
        // No time has passed, yet the record is taken over: its owner ran in an earlier epoch.
        let lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        assert!(lease.recovered());
        assert_eq!(lease.attempt(), 2);
        assert!(lease.token() > old_token);
    }
}

on_every_engine! {
    fn a_late_completion_of_an_expired_lease_nobody_took_over_succeeds(fixture) {
        let store = fixture.open();
        let lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        fixture.advance(&store, LEASE_TTL * 3);
        lease.complete(response("late")).unwrap();
        let again = replay(store.begin(&key("k"), &request("r")).unwrap());
        assert_eq!(again.response().body, b"late");
    }
}

on_every_engine! {
    fn dropping_a_lease_leaves_the_record_running_until_expiry(fixture) {
        let store = fixture.open();
        drop(acquired(store.begin(&key("k"), &request("r")).unwrap()));
        assert_eq!(
            store.get(&key("k")).unwrap().unwrap().state,
            RecordState::Running
        );
        assert!(matches!(
            store.begin(&key("k"), &request("r")).unwrap(),
            Begin::InFlight { .. }
        ));
        fixture.advance(&store, LEASE_TTL);
        assert!(acquired(store.begin(&key("k"), &request("r")).unwrap()).recovered());
    }
}

on_every_engine! {
    fn extend_keeps_a_lease_live_past_its_first_expiry(fixture) {
        let store = fixture.open();
        let mut lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        let first_expiry = lease.expires_at();
        fixture.advance(&store, Duration::from_secs(20));
        lease.extend(Duration::from_secs(60)).unwrap();
        let moved = lease.expires_at().duration_since(first_expiry).unwrap();
        fixture.assert_elapsed(moved, Duration::from_secs(50));
        fixture.advance(&store, Duration::from_secs(40));
        assert!(matches!(
            store.begin(&key("k"), &request("r")).unwrap(),
            Begin::InFlight { .. }
        ));
        lease.complete(response("ok")).unwrap();
    }
}

on_every_engine! {
    fn a_different_request_with_the_same_key_is_a_mismatch(fixture) {
        let store = fixture.open();
        let lease = acquired(store.begin(&key("k"), &request("pay 10")).unwrap());
        assert!(matches!(
            store.begin(&key("k"), &request("pay 99")).unwrap(),
            Begin::Mismatch
        ));
        lease.complete(response("ok")).unwrap();
        assert!(matches!(
            store.begin(&key("k"), &request("pay 99")).unwrap(),
            Begin::Mismatch
        ));
        // The same key in another scope is another record.
        let other = tollgate::idempotency::IdempotencyKey::new("other-scope", "k").unwrap();
        assert!(matches!(
            store.begin(&other, &request("pay 99")).unwrap(),
            Begin::Acquired(_)
        ));
    }
}
