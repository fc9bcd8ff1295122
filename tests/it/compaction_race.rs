//! A sweep racing with begin/complete on the same keys from several threads loses nothing live:
//! every record a thread completed after the clock moved is still replayed after the sweeps.

use crate::fixture;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use fixture::{Fixture, RECORD_TTL, key, replay, request, response};
use tollgate::idempotency::Begin;

#[test]
fn sweeps_racing_with_writers_on_the_same_keys_lose_nothing_live() {
    let fixture = Fixture::new();
    let store = fixture
        .builder()
        .background_compaction(false)
        .compaction_batch(16)
        .open(fixture.path())
        .unwrap();
    // Every key starts with an expired record, so sweeps and writers contend for the same keys.
    store
        .bulk_load(400, Duration::from_secs(1), |i| {
            (key(&format!("k{i}")), request("old"), response("old"))
        })
        .unwrap();
    fixture.clock.advance(Duration::from_secs(1));

    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut removed = 0;
            while !stop.load(Ordering::Relaxed) {
                removed += store.compact_now().unwrap().removed_records;
            }
            removed
        })
    };
    let barrier = Arc::new(Barrier::new(4));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (store, barrier) = (store.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut completed = Vec::new();
                for i in (t..400).step_by(4) {
                    let name = format!("k{i}");
                    match store.begin(&key(&name), &request("new")).unwrap() {
                        Begin::Acquired(lease) => {
                            lease.complete(response(&name)).unwrap();
                            completed.push(name);
                        }
                        other => panic!("expired records must behave as absent, got {other:?}"),
                    }
                }
                completed
            })
        })
        .collect();
    let completed: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let removed_while_racing = sweeper.join().unwrap();
    let removed_after = store.compact_now().unwrap().removed_records;

    assert_eq!(completed.len(), 400);
    // Each old record was either swept or replaced, never both, and nothing new was swept.
    let stats = store.stats().unwrap();
    assert_eq!(stats.completed, 400);
    assert!(removed_while_racing + removed_after <= 400);
    for name in &completed {
        assert_eq!(
            replay(store.begin(&key(name), &request("new")).unwrap())
                .response()
                .body,
            name.as_bytes()
        );
    }
    // Once these expire (and at most two index granules, a sixteenth of the TTL, have passed), a sweep
    // takes all of them.
    fixture.clock.advance(RECORD_TTL + RECORD_TTL / 16);
    assert_eq!(store.compact_now().unwrap().removed_records, 400);
}
