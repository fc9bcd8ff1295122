//! The replay cache never serves what the store would not: a cached finished record stops
//! replaying when it expires, and records replaced by `bulk_load` replay their new response.

use crate::fixture;

use std::time::Duration;

use fixture::{Fixture, RECORD_TTL, acquired, key, replay, request, response};
use tollgate::idempotency::{Begin, StoredResponse};
use tollgate::testing::SimDisk;

on_every_engine! {
    fn a_cached_replay_expires_with_its_record(fixture) {
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
        fixture.advance(&store, RECORD_TTL);
        let lease = acquired(store.begin(&key("k"), &request("other")).unwrap());
        assert!(!lease.recovered());
        lease.complete(response("second")).unwrap();
        let replayed = replay(store.begin(&key("k"), &request("other")).unwrap());
        assert_eq!(replayed.response(), &response("second"));
    }
}

/// A hit: once a replay is cached, it is served from memory, so it still answers when the disk
/// can no longer be read, while an uncached record (and the same record in a store without the
/// cache) cannot be.
#[test]
fn a_cached_replay_is_served_without_reading_the_file() {
    for cache_size in [tollgate::DEFAULT_REPLAY_CACHE_SIZE, 0] {
        let fixture = Fixture::new();
        let disk = SimDisk::new();
        let store = fixture
            .builder()
            .replay_cache_size(cache_size)
            // No page cache in redb either: an uncached read goes to the disk.
            .cache_size(0)
            .background_compaction(false)
            .open_simulated(&disk)
            .unwrap();
        for name in ["cached", "uncached"] {
            acquired(store.begin(&key(name), &request("a")).unwrap())
                .complete(response(name))
                .unwrap();
        }
        let _ = replay(store.begin(&key("cached"), &request("a")).unwrap());
        disk.cut_power_now();
        assert!(store.begin(&key("uncached"), &request("a")).is_err());
        let cached = store.begin(&key("cached"), &request("a"));
        if cache_size == 0 {
            assert!(cached.is_err(), "no cache: the replay needs the file");
        } else {
            assert_eq!(replay(cached.unwrap()).response(), &response("cached"));
        }
    }
}

on_every_engine! {
    fn bulk_load_replaces_cached_replays(fixture) {
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
