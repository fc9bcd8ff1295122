//! `open_read_only` on a file a process serves with `open_shared` reads through that process:
//! the live store's answers, every change refused before it is sent, nothing written (the
//! owner's write count stays), and the reader never takes the file over. A file held with a
//! plain `open` is still refused with `AlreadyOpen`.

use crate::fixture;

use std::time::Duration;

use fixture::{Fixture, acquired, key, replay, request, response};
use tollgate::idempotency::{Begin, RecordState};
use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Error, Health, Store};

#[test]
fn a_read_only_open_reads_a_live_shared_store_through_its_owner_and_writes_nothing() {
    let fixture = Fixture::new();
    let owner = fixture.builder().open_shared(fixture.path()).unwrap();
    acquired(owner.begin(&key("done"), &request("r")).unwrap())
        .complete(response("paid"))
        .unwrap();
    let _held = acquired(owner.begin(&key("held"), &request("r")).unwrap());
    let limit = Limit::new("api", Quota::per_second(10)).unwrap();
    assert!(owner.check(&limit, "alice").unwrap().allowed());
    let writes = owner.stats().unwrap().writes;

    let reader = fixture.builder().open_read_only(fixture.path()).unwrap();
    assert_eq!(reader.engine_name(), "shared");
    assert_eq!(
        reader.epoch(),
        owner.epoch(),
        "the owner's epoch, not one of its own"
    );
    assert!(matches!(reader.health(), Health::Degraded { .. }));
    let stats = reader.stats().unwrap();
    assert_eq!((stats.completed, stats.running), (1, 1));
    assert_eq!(
        reader.get(&key("done")).unwrap().unwrap().state,
        RecordState::Completed
    );
    assert_eq!(reader.list_records(None, 10).unwrap().len(), 2);
    assert_eq!(
        replay(reader.begin(&key("done"), &request("r")).unwrap())
            .response()
            .body,
        b"paid"
    );
    assert!(matches!(
        reader.begin(&key("held"), &request("r")).unwrap(),
        Begin::InFlight { .. }
    ));
    assert!(matches!(
        reader.begin(&key("new"), &request("r")),
        Err(Error::ReadOnly { .. })
    ));
    assert!(reader.peek(&limit, "alice").unwrap().allowed());
    assert!(matches!(
        reader.check(&limit, "alice"),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(reader.compact_now(), Err(Error::ReadOnly { .. })));
    assert_eq!(
        owner.stats().unwrap().writes,
        writes,
        "the reader wrote nothing"
    );

    // The owner goes: the reader does not take the file over.
    owner.close().unwrap();
    let reopened = Store::builder()
        .lease_ttl(Duration::from_secs(30))
        .open(fixture.path())
        .unwrap();
    assert!(reopened.get(&key("done")).unwrap().is_some());
    reopened.close().unwrap();
    reader.close().unwrap();
}

#[test]
fn a_file_held_by_a_plain_open_is_still_refused() {
    let fixture = Fixture::new();
    let owner = fixture.builder().open(fixture.path()).unwrap();
    assert!(matches!(
        fixture.builder().open_read_only(fixture.path()),
        Err(Error::AlreadyOpen)
    ));
    owner.close().unwrap();
}
