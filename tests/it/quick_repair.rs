//! A store opened with quick-repair works like any other and keeps its data across reopen with or
//! without the option (the choice is per open; the file format is the same).

use crate::fixture;

use fixture::{Fixture, acquired, key, replay, request, response};

#[test]
fn quick_repair_stores_work_and_interoperate() {
    let fixture = Fixture::new();
    let store = fixture
        .builder()
        .quick_repair(true)
        .open(fixture.path())
        .unwrap();
    acquired(store.begin(&key("a"), &request("r")).unwrap())
        .complete(response("with"))
        .unwrap();
    store.close().unwrap();
    let store = fixture
        .builder()
        .quick_repair(false)
        .open(fixture.path())
        .unwrap();
    replay(store.begin(&key("a"), &request("r")).unwrap());
    acquired(store.begin(&key("b"), &request("r")).unwrap())
        .complete(response("without"))
        .unwrap();
    store.close().unwrap();
    let store = fixture
        .builder()
        .quick_repair(true)
        .open(fixture.path())
        .unwrap();
    assert_eq!(
        replay(store.begin(&key("b"), &request("r")).unwrap())
            .response()
            .body,
        b"without"
    );
    assert_eq!(store.stats().unwrap().completed, 2);
}
