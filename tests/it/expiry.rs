//! Records expire on time and then behave as absent, before any removal. On every engine.

use crate::fixture;

use std::time::Duration;

use fixture::{LEASE_TTL, RECORD_TTL, acquired, key, replay, request, response};
use tollgate::BeginOptions;

on_every_engine! {
    fn a_finished_record_replays_until_its_ttl_then_begins_afresh(fixture) {
        let store = fixture.open();
        acquired(store.begin(&key("k"), &request("r")).unwrap())
            .complete(response("first"))
            .unwrap();
        fixture.advance(&store, RECORD_TTL - fixture.margin());
        replay(store.begin(&key("k"), &request("r")).unwrap());
        fixture.advance(&store, fixture.margin());
        assert_eq!(store.get(&key("k")).unwrap(), None);
        // Expired is absent: even another request may use the key now.
        let lease = acquired(store.begin(&key("k"), &request("different")).unwrap());
        assert!(!lease.recovered());
        assert_eq!(lease.attempt(), 1);
    }
}

on_every_engine! {
    fn per_call_ttls_override_the_store_defaults(fixture) {
        let store = fixture.open();
        let options = BeginOptions {
            record_ttl: Some(Duration::from_secs(5)),
            lease_ttl: Some(Duration::from_secs(2)),
            wait: None,
        };
        let lease = acquired(
            store
                .begin_with(&key("k"), &request("r"), &options)
                .unwrap(),
        );
        let info = store.get(&key("k")).unwrap().unwrap();
        assert_eq!(lease.expires_at(), info.created_at + Duration::from_secs(2));
        lease.complete(response("x")).unwrap();
        fixture.advance(&store, Duration::from_secs(5));
        assert_eq!(store.get(&key("k")).unwrap(), None);
    }
}

on_every_engine! {
    fn an_abandoned_running_record_is_remembered_for_the_record_ttl_after_its_lease(fixture) {
        let store = fixture.open();
        drop(acquired(store.begin(&key("k"), &request("r")).unwrap()));
        let info = store.get(&key("k")).unwrap().unwrap();
        assert_eq!(info.expires_at, info.lease_expires_at.unwrap() + RECORD_TTL);
        // Long after the lease, a retry is still told that an execution may have happened.
        fixture.advance(&store, LEASE_TTL + RECORD_TTL - Duration::from_secs(1));
        assert!(acquired(store.begin(&key("k"), &request("r")).unwrap()).recovered());
    }
}
