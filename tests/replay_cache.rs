//! The replay cache never serves what the store would not: a cached finished record stops
//! replaying when it expires, and records replaced by `bulk_load` replay their new response.

mod fixture;

use std::time::Duration;

use fixture::{Fixture, RECORD_TTL, acquired, key, replay, request, response};
use tollgate::idempotency::{Begin, StoredResponse};

#[test]
fn a_cached_replay_expires_with_its_record() {
    let fixture = Fixture::new();
    let store = fixture.open_without_compactor();
    acquired(store.begin(&key("k"), &request("a")).unwrap())
        .complete(response("first"))
        .unwrap();
    // Twice: the first replay reads the file and fills the cache, the second is served from it.
    for _ in 0..2 {
        let replayed = replay(store.begin(&key("k"), &request("a")).unwrap());
        assert_eq!(replayed.response(), &response("first"));
    }
    assert!(matches!(
        store.begin(&key("k"), &request("other")).unwrap(),
        Begin::Mismatch
    ));
    fixture.clock.advance(RECORD_TTL);
    let lease = acquired(store.begin(&key("k"), &request("other")).unwrap());
    assert!(!lease.recovered());
    lease.complete(response("second")).unwrap();
    let replayed = replay(store.begin(&key("k"), &request("other")).unwrap());
    assert_eq!(replayed.response(), &response("second"));
}

#[test]
fn bulk_load_replaces_cached_replays() {
    let fixture = Fixture::new();
    let store = fixture.open_without_compactor();
    acquired(store.begin(&key("k"), &request("a")).unwrap())
        .complete(response("before"))
        .unwrap();
    let _ = replay(store.begin(&key("k"), &request("a")).unwrap());
    store
        .bulk_load(1, Duration::from_secs(60), |_| {
            (
                key("k"),
                request("a"),
                StoredResponse::new(200, b"after".to_vec()),
            )
        })
        .unwrap();
    let replayed = replay(store.begin(&key("k"), &request("a")).unwrap());
    assert_eq!(replayed.response().body, b"after");
}

#[test]
fn a_store_without_replay_cache_replays_from_the_file() {
    let fixture = Fixture::new();
    let store = fixture
        .builder()
        .replay_cache_size(0)
        .open(fixture.path())
        .unwrap();
    acquired(store.begin(&key("k"), &request("a")).unwrap())
        .complete(response("kept"))
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            replay(store.begin(&key("k"), &request("a")).unwrap()).response(),
            &response("kept")
        );
    }
}
