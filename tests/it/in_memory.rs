//! A store in memory (`Store::in_memory`) has the embedded engine's semantics, and nothing of it
//! outlives it: replays, in-flight keys, fencing and rate limits work; two stores in memory never
//! share anything; a new one starts empty.

use crate::fixture;

use std::time::{Duration, SystemTime};

use fixture::{acquired, key, replay, request, response};
use tollgate::idempotency::Begin;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Error, ManualClock, Store};

#[test]
fn a_store_in_memory_replays_fences_and_limits_like_a_file() {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let store = Store::builder()
        .clock(clock.clone())
        .lease_ttl(Duration::from_secs(30))
        .open_in_memory()
        .unwrap();
    let lease = acquired(store.begin(&key("pay-1"), &request("r")).unwrap());
    assert!(matches!(
        store.begin(&key("pay-1"), &request("r")).unwrap(),
        Begin::InFlight { .. }
    ));
    // The lease lapses and is taken over: the first holder is fenced.
    clock.advance(Duration::from_secs(31));
    let second = acquired(store.begin(&key("pay-1"), &request("r")).unwrap());
    assert!(second.recovered());
    assert!(matches!(
        lease.complete(response("late")),
        Err(Error::LeaseLost)
    ));
    second.complete(response("charged")).unwrap();
    assert_eq!(
        replay(store.begin(&key("pay-1"), &request("r")).unwrap())
            .response()
            .body,
        b"charged"
    );
    assert!(matches!(
        store.begin(&key("pay-1"), &request("other")).unwrap(),
        Begin::Mismatch
    ));

    let limit = Limit::new("login", Quota::fixed_window(2, Duration::from_secs(60))).unwrap();
    assert!(store.check(&limit, "alice").unwrap().allowed());
    assert!(store.check(&limit, "alice").unwrap().allowed());
    assert!(!store.check(&limit, "alice").unwrap().allowed());

    let stats = store.stats().unwrap();
    assert_eq!(stats.completed, 1);
    assert!(stats.file_bytes > 0, "the memory the store's pages take");
    store.close().unwrap();
}

#[test]
fn stores_in_memory_share_nothing_and_keep_nothing() {
    let first = Store::in_memory().unwrap();
    let second = Store::in_memory().unwrap();
    acquired(first.begin(&key("k"), &request("r")).unwrap())
        .complete(response("first"))
        .unwrap();
    // Another store in memory does not see it...
    let other = acquired(second.begin(&key("k"), &request("r")).unwrap());
    assert!(!other.recovered());
    other.complete(response("second")).unwrap();
    first.close().unwrap();
    second.close().unwrap();
    // ...and a new one starts empty.
    let third = Store::in_memory().unwrap();
    assert!(third.get(&key("k")).unwrap().is_none());
    assert_eq!(third.stats().unwrap().completed, 0);
    third.close().unwrap();
}
