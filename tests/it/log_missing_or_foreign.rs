//! A store that wrote through its write-ahead log keeps acknowledged changes there until the
//! applier has copied them into redb. So the log is part of the store: a store whose log is gone
//! refuses to open (`Corrupted`, naming the log) rather than open without those changes, and a
//! log of another store (its frames keyed by another secret) is refused too. Put back, the log's
//! changes replay.

use crate::fixture;
use fixture::{Fixture, acquired, key, replay, request, response};
use tollgate::{Error, Store};

#[test]
fn a_store_whose_log_is_missing_or_foreign_refuses_to_open() {
    let fixture = Fixture::new();
    let path = fixture.path();
    let log = Store::log_path(&path);
    let store = fixture.open();
    assert!(store.hold_log_applier_for_tests(true));
    acquired(store.begin(&key("only-in-the-log"), &request("r")).unwrap())
        .complete(response("kept"))
        .unwrap();
    // A crash image: the change is acknowledged, in the log, not in redb.
    let image = fixture.dir.path().join("image.redb");
    fixture::copy_store(&path, &image);
    drop(store);

    let image_log = Store::log_path(&image);
    let saved = fixture.dir.path().join("saved.log");
    std::fs::rename(&image_log, &saved).unwrap();
    let missing = fixture.builder().open(&image).unwrap_err();
    assert!(
        matches!(&missing, Error::Corrupted(why) if why.contains("missing")),
        "{missing:?}"
    );

    // Another store's log in its place.
    let other = fixture.dir.path().join("other.redb");
    fixture.builder().open(&other).unwrap().close().unwrap();
    std::fs::copy(Store::log_path(&other), &image_log).unwrap();
    let foreign = fixture.builder().open(&image).unwrap_err();
    assert!(
        matches!(&foreign, Error::Corrupted(why) if why.contains("another store")),
        "{foreign:?}"
    );

    // Its own log back: the acknowledged change replays.
    std::fs::rename(&saved, &image_log).unwrap();
    let store = fixture.builder().open(&image).unwrap();
    let answer = replay(store.begin(&key("only-in-the-log"), &request("r")).unwrap());
    assert_eq!(answer.response(), &response("kept"));
    store.close().unwrap();
    assert!(log.exists());
}
