//! Closing (or dropping) a store while its background thread sweeps joins both threads cleanly
//! (on Linux the test looks for them in `/proc`), and the next open continues where the sweep
//! stopped.

use crate::fixture;

use std::time::Duration;

use fixture::{Fixture, key, request, response, wait_for};

#[test]
fn close_during_a_sweep_joins_and_the_next_open_continues() {
    // A process of its own: other tests' stores run threads with the same names.
    if fixture::isolated(
        module_path!(),
        "close_during_a_sweep_joins_and_the_next_open_continues",
    ) {
        return;
    }
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
        #[cfg(target_os = "linux")]
        assert!(
            live_threads_named("tollgate-").len() >= 2,
            "the writer and the compactor are listed while the store is open"
        );
        if round == 1 {
            drop(store);
        } else {
            store.close().unwrap();
        }
        assert_eq!(
            live_threads_named("tollgate-"),
            Vec::<String>::new(),
            "round {round}: close and drop join the compactor and the writer"
        );
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

/// Names of this process's live threads that start with `prefix`, from `/proc` (Linux, which
/// truncates names to 15 bytes; other systems have no such list, and the check is Linux-only).
#[cfg(target_os = "linux")]
fn live_threads_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("Linux lists a process's threads in /proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn live_threads_named(_prefix: &str) -> Vec<String> {
    Vec::new()
}
