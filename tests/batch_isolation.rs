//! DESIGN I13, first half: one caller's logical error never fails the others in its batch. Four
//! commands are queued behind a writer parked inside a commit (the disk holds its sync), so they
//! are applied as one batch: a new lease, a fenced completion (`LeaseLost`), a begin over
//! `max_records` (`CapacityExceeded`) and a valid completion. The two errors go to their own
//! callers; the other two are answered, committed in the same commit and durable.

mod fixture;

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
