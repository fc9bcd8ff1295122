//! `Store::reclaim_space` shrinks the file of a closed store whose free space sits in the middle of
//! the file (redb gives back free space at the tail by itself), keeps what is live, and refuses a
//! store that is open or a file that is not a store.

use crate::fixture;

use std::time::Duration;

use fixture::{Fixture, key, replay, request, response};
use tollgate::{Error, Store};

#[test]
fn reclaim_shrinks_a_fragmented_file_and_keeps_live_records() {
    let fixture = Fixture::new();
    let store = fixture.open_without_compactor();
    let body = "x".repeat(1000);
    // Written first, so stored first: these expire in a second and leave a hole mid-file.
    let early = body.clone();
    store
        .bulk_load(5_000, Duration::from_secs(1), move |i| {
            (key(&format!("early{i}")), request("r"), response(&early))
        })
        .unwrap();
    // Written after, near the end of the file: these stay live.
    let late = body.clone();
    store
        .bulk_load(5_000, Duration::from_secs(3600), move |i| {
            (key(&format!("late{i}")), request("r"), response(&late))
        })
        .unwrap();
    fixture.clock.advance(Duration::from_secs(1));
    assert_eq!(store.compact_now().unwrap().removed_records, 5_000);

    assert!(matches!(
        Store::reclaim_space(fixture.path()),
        Err(Error::AlreadyOpen)
    ));
    store.close().unwrap();
    let reclaimed = Store::reclaim_space(fixture.path()).unwrap();
    assert!(
        reclaimed.after_bytes * 4 < reclaimed.before_bytes * 3,
        "{reclaimed:?}"
    );

    let store = fixture.open();
    assert_eq!(
        replay(store.begin(&key("late4999"), &request("r")).unwrap())
            .response()
            .body,
        body.as_bytes()
    );
    assert_eq!(store.stats().unwrap().completed, 5_000);
    store.close().unwrap();

    let other = fixture.dir.path().join("other.redb");
    drop(redb::Database::create(&other).unwrap());
    assert!(matches!(
        Store::reclaim_space(&other),
        Err(Error::NotAStore(_))
    ));
}
