//! Closing (or dropping) a store while its background thread sweeps joins both threads cleanly,
//! and the next open continues where the sweep stopped.

mod fixture;

use std::time::Duration;

use fixture::{Fixture, key, request, response};

#[test]
fn close_during_a_sweep_joins_and_the_next_open_continues() {
    let fixture = Fixture::new();
    {
        let store = fixture.open_without_compactor();
        store
            .bulk_load(20_000, Duration::from_secs(1), |i| {
                (key(&format!("k{i}")), request("r"), response("x"))
            })
            .unwrap();
        store.close().unwrap();
    }
    fixture.clock.advance(Duration::from_secs(2));
    for round in 0..3 {
        // Sweeps start at once and take many small steps; close lands in the middle of one.
        let store = fixture
            .builder()
            .compaction_interval(Duration::from_millis(1))
            .compaction_batch(50)
            .open(fixture.path())
            .unwrap();
        while store.stats().unwrap().last_compaction.is_none()
            && store.stats().unwrap().completed == 20_000
        {
            std::thread::yield_now();
        }
        if round == 1 {
            drop(store);
        } else {
            store.close().unwrap();
        }
    }
    let store = fixture.open_without_compactor();
    store.compact_now().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.completed, 0);
    assert!(store.get(&key("k19999")).unwrap().is_none());
}
