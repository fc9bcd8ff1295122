//! Every operation is atomic, also inside a writer batch: an operation that fails half-way leaves
//! nothing behind. The bug this guards against: the writer applied a batch's commands in one
//! transaction and committed whatever a refused command had written before it failed (a bulk
//! load committed the records before the one it could not replace, and returned `Err`).

use crate::fixture;

use std::time::Duration;

use fixture::{
    Fixture, acquired, key, park_writer_in_a_flush, parkable_builder, replay, request, response,
    wait_for,
};
use tollgate::idempotency::{Begin, Fingerprint, StoredResponse};
use tollgate::testing::SimDisk;
use tollgate::{BeginOptions, Error};

/// Overwrites the stored value of `name`'s finished record with bytes that do not decode.
fn corrupt(fixture: &Fixture, name: &str) {
    let db = redb::Database::create(fixture.path()).unwrap();
    let txn = db.begin_write().unwrap();
    let records = redb::TableDefinition::<&[u8; 32], &[u8]>::new("tollgate_records");
    txn.open_table(records)
        .unwrap()
        .insert(key(name).digest().as_bytes(), &[1u8, 0xff, 0xff][..])
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_bulk_load_that_fails_half_way_writes_nothing() {
    let fixture = Fixture::new();
    let store = fixture.open();
    acquired(store.begin(&key("bulk-5"), &request("r")).unwrap())
        .complete(response("old"))
        .unwrap();
    store.close().unwrap();
    corrupt(&fixture, "bulk-5");

    let store = fixture.open();
    let before = store.stats().unwrap();
    // Records 0..5 are written before the loader meets the record it cannot replace.
    let loaded = store.bulk_load(10, Duration::from_secs(3600), |i| {
        (
            key(&format!("bulk-{i}")),
            Fingerprint::of(b"r"),
            StoredResponse::new(200, b"new".to_vec()),
        )
    });
    assert!(matches!(loaded, Err(Error::Corrupted(_))), "{loaded:?}");
    for i in [0, 1, 2, 3, 4, 6, 7, 8, 9] {
        assert_eq!(
            store.get(&key(&format!("bulk-{i}"))).unwrap(),
            None,
            "bulk-{i}"
        );
    }
    let after = store.stats().unwrap();
    assert_eq!(after.completed, before.completed);
    assert_eq!(after.commits, before.commits);
    store.close().unwrap();
    // Nothing of the load is on disk either.
    let store = fixture.open();
    assert_eq!(store.get(&key("bulk-0")).unwrap(), None);
}

/// A begin on a store over its `max_records` first sweeps expired records (a write), then is
/// refused. The sweep must be rolled back with it, and the takeover queued in the same batch must
/// still commit.
#[test]
fn a_begin_refused_after_its_sweep_undoes_the_sweep_and_its_batch_still_commits() {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let store = parkable_builder(&fixture).open_simulated(&disk).unwrap();
    let short = BeginOptions {
        record_ttl: Some(Duration::from_secs(1)),
        ..BeginOptions::default()
    };
    acquired(
        store
            .begin_with(&key("expires"), &request("r"), &short)
            .unwrap(),
    )
    .complete(response("ok"))
    .unwrap();
    acquired(store.begin(&key("live"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    // Left RUNNING by this run: the next open takes it over at once.
    drop(acquired(
        store.begin(&key("left-running"), &request("r")).unwrap(),
    ));
    store.close().unwrap();
    fixture.clock.advance(Duration::from_secs(60));

    // Three records (one expired) in a store now limited to two.
    let store = parkable_builder(&fixture)
        .max_records(2)
        .open_simulated(&disk)
        .unwrap();
    let queue = store.command_queue_for_tests().unwrap();
    park_writer_in_a_flush(&store, &disk);
    let refused = {
        let store = store.clone();
        std::thread::spawn(move || store.begin(&key("new"), &request("r")).map(|_| ()))
    };
    wait_for("the begin to queue", || queue.len() == 1);
    let takeover = {
        let store = store.clone();
        std::thread::spawn(
            move || match store.begin(&key("left-running"), &request("r")) {
                Ok(Begin::Acquired(lease)) => lease.recovered(),
                other => panic!("expected a takeover, got {other:?}"),
            },
        )
    };
    wait_for("the takeover to queue", || queue.len() == 2);
    drop(queue);
    disk.release_syncs();

    let refused = refused.join().unwrap();
    assert!(
        matches!(refused, Err(Error::CapacityExceeded { limit: 2 })),
        "{refused:?}"
    );
    assert!(
        takeover.join().unwrap(),
        "the takeover is flagged recovered"
    );
    // The refused begin's sweep was rolled back: the expired record is still on disk.
    let listed = store.list_records(None, 10).unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|(digest, _)| *digest == key("expires").digest())
    );
    store.close().unwrap();
    // The takeover committed (attempt 2), and the refused record was never created.
    let store = parkable_builder(&fixture).open_simulated(&disk).unwrap();
    let record = store.get(&key("left-running")).unwrap().unwrap();
    assert_eq!(record.attempts, 2);
    assert_eq!(store.get(&key("new")).unwrap(), None);
    replay(store.begin(&key("live"), &request("r")).unwrap());
}
