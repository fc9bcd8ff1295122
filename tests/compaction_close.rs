//! Closing (or dropping) a store while its background thread sweeps joins both threads cleanly,
//! and the next open continues where the sweep stopped.

mod fixture;

use std::time::Duration;

use fixture::{Fixture, key, request, response, wait_for};

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
    let builder = || {
        fixture
            .builder()
            .compaction_interval(Duration::from_millis(1))
            .compaction_batch(50)
    };
    let mut left = 20_000;
    for round in 0..3 {
        // Sweeps start at once and take many small steps; close lands in the middle of one.
        let store = builder().open(fixture.path()).unwrap();
        wait_for("the background sweep to start removing", || {
            store.stats().unwrap().completed < left
        });
        if round == 1 {
            drop(store);
        } else {
            store.close().unwrap();
        }
        // What the interrupted sweep removed stays removed.
        let store = fixture.open_without_compactor();
        let now = store.stats().unwrap().completed;
        assert!(
            now < left,
            "round {round}: {now} records left, {left} before"
        );
        left = now;
        store.close().unwrap();
    }
    assert!(left > 0, "the sweeps were interrupted before the end");
    // The next open's background thread continues and finishes the job by itself.
    let store = builder().open(fixture.path()).unwrap();
    wait_for(
        "the next open's sweeps to remove every expired record",
        || store.stats().unwrap().completed == 0,
    );
    assert!(store.get(&key("k19999")).unwrap().is_none());
    store.close().unwrap();
}
