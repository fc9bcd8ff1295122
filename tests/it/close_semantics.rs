//! `close` flushes, joins the writer and releases the file: clones and leases that outlive it get
//! `Error::Closed`, and the path can be reopened at once.

use crate::fixture;

use std::time::Duration;

use fixture::{
    Fixture, acquired, key, park_writer_in_a_flush, parkable_builder, replay, request, response,
    wait_for,
};
use tollgate::Error;
use tollgate::idempotency::Begin;
use tollgate::testing::SimDisk;

on_every_engine! {
    fn clones_and_leases_get_closed_after_close_and_the_file_reopens(fixture) {
        let store = fixture.open();
        let clone = store.clone();
        let mut lease = acquired(store.begin(&key("open"), &request("r")).unwrap());
        acquired(store.begin(&key("done"), &request("r")).unwrap())
            .complete(response("ok"))
            .unwrap();
        // A replay puts "done" in the replay cache: closed is closed there too.
        replay(store.begin(&key("done"), &request("r")).unwrap());
        store.close().unwrap();

        assert!(matches!(
            clone.begin(&key("x"), &request("r")),
            Err(Error::Closed)
        ));
        assert!(matches!(
            clone.begin(&key("done"), &request("r")),
            Err(Error::Closed)
        ));
        assert!(matches!(clone.get(&key("done")), Err(Error::Closed)));
        assert!(matches!(
            lease.extend(Duration::from_secs(1)),
            Err(Error::Closed)
        ));
        assert!(matches!(
            lease.complete(response("late")),
            Err(Error::Closed)
        ));
        // Closing again through a clone is harmless.
        clone.close().unwrap();

        let store = fixture.open();
        replay(store.begin(&key("done"), &request("r")).unwrap());
        // The lease died with the closed store: its record is taken over at once.
        assert!(acquired(store.begin(&key("open"), &request("r")).unwrap()).recovered());
    }
}

#[test]
fn dropping_every_handle_releases_the_file() {
    let fixture = Fixture::new();
    let store = fixture.open();
    let clone = store.clone();
    drop(store);
    // A clone keeps it open.
    assert!(matches!(
        fixture.builder().open(fixture.path()),
        Err(Error::AlreadyOpen)
    ));
    drop(clone);
    fixture.open().close().unwrap();
}

/// DESIGN: "Commands queued before `close` are applied; those behind it get `Closed`." The writer
/// thread is parked inside a commit (its timed flush of a batched rate counter, whose sync the
/// disk holds) while six begins queue behind it; then `close` queues its shutdown behind them. The
/// six must be applied and durable, not refused.
#[test]
fn commands_queued_ahead_of_close_are_applied_not_refused() {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let store = parkable_builder(&fixture).open_simulated(&disk).unwrap();
    let queue = store.command_queue_for_tests().unwrap();
    park_writer_in_a_flush(&store, &disk);
    let names = ["q1", "q2", "q3", "q4", "q5", "q6"];
    let queued: Vec<_> = names
        .into_iter()
        .map(|name| {
            let store = store.clone();
            let thread = std::thread::spawn(move || {
                store
                    .begin(&key(name), &request("r"))
                    .map(|begin| matches!(begin, Begin::Acquired(_)))
            });
            (name, thread)
        })
        .collect();
    wait_for("six begins to queue", || queue.len() == names.len());
    let closing = {
        let store = store.clone();
        std::thread::spawn(move || store.close())
    };
    wait_for("close's shutdown to queue behind them", || {
        queue.len() == names.len() + 1
    });
    drop(queue);
    disk.release_syncs();
    closing.join().unwrap().unwrap();
    for (name, thread) in queued {
        let answer = thread.join().unwrap();
        assert!(
            matches!(answer, Ok(true)),
            "{name}, queued before close, was answered {answer:?}"
        );
    }
    drop(store);
    let store = parkable_builder(&fixture).open_simulated(&disk).unwrap();
    for name in names {
        let lease = acquired(store.begin(&key(name), &request("r")).unwrap());
        assert!(lease.recovered(), "{name}'s lease was durable before close");
    }
}

on_every_engine! {
    fn close_waits_for_writes_already_queued(fixture) {
        let store = fixture.open();
        let (started, first_writes) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                let started = started.clone();
                std::thread::spawn(move || {
                    let mut completed = Vec::new();
                    for i in 0..50 {
                        let name = format!("{t}-{i}");
                        match store.begin(&key(&name), &request("r")) {
                            Ok(tollgate::idempotency::Begin::Acquired(lease)) => {
                                if lease.complete(response(&name)).is_ok() {
                                    completed.push(name);
                                }
                                if i == 0 {
                                    let _ = started.send(());
                                }
                            }
                            Ok(other) => panic!("unexpected {other:?}"),
                            Err(Error::Closed) => break,
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                    completed
                })
            })
            .collect();
        // Close while every thread is mid-stream (each has finished its first write).
        for _ in 0..8 {
            first_writes.recv_timeout(fixture::WAIT_DEADLINE).unwrap();
        }
        store.close().unwrap();
        let completed: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert!(completed.len() >= 8);
        let store = fixture.open();
        for name in completed {
            let again = replay(store.begin(&key(&name), &request("r")).unwrap());
            assert_eq!(again.response().body, name.as_bytes());
        }
    }
}
