//! DESIGN I13, first half: one caller's logical error never fails the others in its batch. Four
//! commands are queued behind a writer parked inside a commit (the disk holds its sync), so they
//! are applied as one batch: a new lease, a fenced completion (`LeaseLost`), a begin over
//! `max_records` (`CapacityExceeded`) and a valid completion. The two errors go to their own
//! callers; the other two are answered, committed in the same commit and durable.
//! And a compaction step queued with a request still gets a commit of its own.

use crate::fixture;

use std::thread::JoinHandle;
use std::time::Duration;

use fixture::{
    Fixture, acquired, key, park_writer_in_a_flush, parkable_builder, replay, request, response,
    wait_for,
};
use tollgate::Error;
use tollgate::idempotency::Begin;
use tollgate::testing::SimDisk;

#[test]
fn a_logical_error_fails_only_its_own_command_in_a_shared_batch() {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let builder = || parkable_builder(&fixture).max_records(3);
    let store = builder().open_simulated(&disk).unwrap();
    // "b": its first lease goes stale (taken over after expiry); "c": a live lease.
    let stale = acquired(store.begin(&key("b"), &request("r")).unwrap());
    fixture
        .clock
        .advance(fixture::LEASE_TTL + Duration::from_secs(1));
    let _owner = acquired(store.begin(&key("b"), &request("r")).unwrap());
    let live = acquired(store.begin(&key("c"), &request("r")).unwrap());

    let queue = store.command_queue_for_tests().unwrap();
    park_writer_in_a_flush(&store, &disk);
    let commits_while_held = store.stats().unwrap().commits;

    // Queue in a fixed order: each waits until the previous one is in the queue.
    let mut threads: Vec<JoinHandle<String>> = Vec::new();
    let mut spawn = |work: Box<dyn FnOnce() -> String + Send>| {
        threads.push(std::thread::spawn(work));
        let queued = threads.len();
        wait_for("the command to queue", || queue.len() == queued);
    };
    let begin = |name: &'static str| -> Box<dyn FnOnce() -> String + Send> {
        let store = store.clone();
        Box::new(move || {
            let answer = store.begin(&key(name), &request("r"));
            format!("{:?}", answer.map(|b| matches!(b, Begin::Acquired(_))))
        })
    };
    spawn(begin("a"));
    spawn(Box::new(move || {
        format!("{:?}", stale.complete(response("stale")))
    }));
    spawn(begin("d"));
    spawn(Box::new(move || {
        format!("{:?}", live.complete(response("c")))
    }));
    drop(queue);
    disk.release_syncs();

    let answers: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        answers,
        [
            "Ok(true)".to_owned(),
            format!("{:?}", Err::<(), _>(Error::LeaseLost)),
            format!("{:?}", Err::<bool, _>(Error::CapacityExceeded { limit: 3 })),
            "Ok(())".to_owned(),
        ]
    );
    // The flush that was held, then the four commands' batch: one commit for all of them.
    assert_eq!(store.stats().unwrap().commits, commits_while_held + 2);

    drop(store);
    let store = builder().open_simulated(&disk).unwrap();
    assert!(acquired(store.begin(&key("a"), &request("r")).unwrap()).recovered());
    assert_eq!(
        replay(store.begin(&key("c"), &request("r")).unwrap())
            .response()
            .body,
        b"c"
    );
    assert!(store.get(&key("d")).unwrap().is_none());
}

/// DESIGN, compaction: a sweep step gets a transaction of its own, after the foreground requests
/// drained with it, so a request never shares a commit (and its larger fsync) with a sweep. A
/// begin and a compaction step queued together behind a parked writer make two commits.
#[test]
fn a_sweep_step_never_shares_a_commit_with_requests() {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let store = parkable_builder(&fixture).open_simulated(&disk).unwrap();
    store
        .bulk_load(5, Duration::from_secs(60), |i| {
            (key(&format!("old-{i}")), request("r"), response("x"))
        })
        .unwrap();
    fixture.clock.advance(Duration::from_secs(3600));

    let queue = store.command_queue_for_tests().unwrap();
    park_writer_in_a_flush(&store, &disk);
    let commits_while_held = store.stats().unwrap().commits;
    let begin = {
        let store = store.clone();
        std::thread::spawn(move || store.begin(&key("new"), &request("r")).map(drop))
    };
    wait_for("the begin to queue", || queue.len() == 1);
    let sweep = {
        let store = store.clone();
        std::thread::spawn(move || store.compact_now())
    };
    wait_for("the sweep step to queue", || queue.len() == 2);
    drop(queue);
    disk.release_syncs();
    begin.join().unwrap().unwrap();
    let report = sweep.join().unwrap().unwrap();
    assert_eq!(report.removed_records, 5);
    assert_eq!(report.batches, 1);
    // The held flush, then the begin's commit, then the step's own.
    assert_eq!(store.stats().unwrap().commits, commits_while_held + 3);
}
