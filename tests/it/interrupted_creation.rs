//! A crash while a store file is being created must not leave a file that can never be opened.
//!
//! redb writes its magic number last, so a file cut off during creation is "not a redb database"
//! forever. tollgate therefore creates a store as `<path>.creating` and links it into place only
//! once it is complete; this test plants what such a cut leaves behind (images from a simulated
//! disk whose power went at each sync of a creation) and checks that opening `path` then succeeds
//! and removes the leftover.

use tollgate::Store;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::testing::SimDisk;

#[test]
fn leftover_from_an_interrupted_creation_does_not_block_the_store() {
    let mut leftovers = 0;
    for sync in 1.. {
        let disk = SimDisk::new();
        disk.cut_power_at_sync(sync);
        if Store::builder().open_simulated(&disk).is_ok() {
            break; // Creation finished before this sync.
        }
        leftovers += 1;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let creating = dir.path().join("store.redb.creating");
        std::fs::write(&creating, disk.durable_image()).unwrap();

        let store = Store::open(&path)
            .unwrap_or_else(|e| panic!("cut at sync {sync}: the store does not open: {e}"));
        // It is a working store: a lease, a completion, and (below) its replay after a reopen.
        let key = IdempotencyKey::new("creation", "k").unwrap();
        let request = Fingerprint::of(b"r");
        let Begin::Acquired(lease) = store.begin(&key, &request).unwrap() else {
            panic!("cut at sync {sync}: a fresh key is not acquired");
        };
        assert!(!lease.recovered(), "cut at sync {sync}: nothing ran before");
        lease
            .complete(StoredResponse::new(201, b"done".to_vec()))
            .unwrap();
        store.close().unwrap();
        assert!(path.exists(), "cut at sync {sync}: the store is in place");
        assert!(
            !creating.exists(),
            "cut at sync {sync}: the leftover is removed"
        );
        // And it reopens as an ordinary store that kept the completion.
        let store = Store::open(&path).unwrap();
        let Begin::Replay(replay) = store.begin(&key, &request).unwrap() else {
            panic!("cut at sync {sync}: the completion is not replayed after a reopen");
        };
        assert_eq!(replay.response().body, b"done");
        store.close().unwrap();
    }
    assert!(
        leftovers >= 2,
        "creation syncs {leftovers} times before it returns"
    );
}

#[test]
fn a_new_store_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    Store::open(&path).unwrap().close().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    // The file and its write-ahead log, nothing else.
    assert_eq!(
        names,
        vec![
            std::ffi::OsString::from("store.redb"),
            std::ffi::OsString::from("store.redb.log")
        ]
    );
}
