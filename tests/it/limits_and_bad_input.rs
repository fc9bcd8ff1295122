//! Bad input gets a typed error and loses nothing: oversized responses and checkpoints, a full
//! store, invalid keys and settings, files that are not tollgate stores or come from a newer format,
//! and a file that is already open.

use crate::fixture;

use std::time::Duration;

use fixture::{Fixture, RECORD_TTL, acquired, key, replay, request, response};
use tollgate::idempotency::{IdempotencyKey, KeyError, RecordState, StoredResponse};
use tollgate::{BeginOptions, Error, Store};

on_every_engine! {
    fn an_oversized_response_is_refused_and_the_lease_handed_back(fixture) {
        let store = fixture
            .builder()
            .max_response_bytes(100)
            .open(fixture.path())
            .unwrap();
        let lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        let big = StoredResponse::new(200, vec![0; 99]);
        let error = lease.complete(big).unwrap_err();
        assert!(matches!(
            error,
            Error::ResponseTooLarge {
                size: 101,
                limit: 100,
                ..
            }
        ));
        // Nothing was written: the record is still RUNNING and the lease still resolves it.
        assert_eq!(
            store.get(&key("k")).unwrap().unwrap().state,
            RecordState::Running
        );
        let lease = error.into_lease().unwrap();
        let error = lease
            .fail(StoredResponse::new(500, vec![0; 200]))
            .unwrap_err();
        let lease = error.into_lease().unwrap();
        lease
            .complete(StoredResponse::new(413, b"too large".to_vec()))
            .unwrap();
        assert_eq!(
            replay(store.begin(&key("k"), &request("r")).unwrap())
                .response()
                .status,
            413
        );
    }
}

on_every_engine! {
    fn an_oversized_checkpoint_or_name_is_refused_and_the_lease_stays_usable(fixture) {
        let store = fixture
            .builder()
            .max_response_bytes(100)
            .open(fixture.path())
            .unwrap();
        let mut lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
        assert!(matches!(
            lease.save_checkpoint("step", &[0; 100]),
            Err(Error::ResponseTooLarge { lease: None, .. })
        ));
        assert!(matches!(
            lease.save_checkpoint(&"n".repeat(256), b""),
            Err(Error::InvalidArgument(_))
        ));
        lease.save_checkpoint("step", b"small").unwrap();
        lease.complete(response("ok")).unwrap();
    }
}

#[test]
fn a_full_store_refuses_new_keys_but_serves_existing_ones() {
    let fixture = Fixture::new();
    let store = fixture
        .builder()
        .max_records(2)
        .open(fixture.path())
        .unwrap();
    acquired(store.begin(&key("a"), &request("r")).unwrap())
        .complete(response("a"))
        .unwrap();
    let running = acquired(store.begin(&key("b"), &request("r")).unwrap());
    assert!(matches!(
        store.begin(&key("c"), &request("r")),
        Err(Error::CapacityExceeded { limit: 2 })
    ));
    // Existing records still work: a replay, and the running one can complete.
    replay(store.begin(&key("a"), &request("r")).unwrap());
    fixture.clock.advance(Duration::from_secs(10));
    running.complete(response("b")).unwrap();
    // Once a record expires, its room is reused; live records are never evicted.
    fixture.clock.advance(RECORD_TTL - Duration::from_secs(10));
    acquired(store.begin(&key("c"), &request("r")).unwrap())
        .complete(response("c"))
        .unwrap();
    assert!(matches!(
        store.begin(&key("d"), &request("r")),
        Err(Error::CapacityExceeded { .. })
    ));
    replay(store.begin(&key("b"), &request("r")).unwrap());
    replay(store.begin(&key("c"), &request("r")).unwrap());
}

/// `bulk_load` checks its whole count against `max_records` first: a load that fits exactly is
/// written, one record more is refused with nothing written, and room freed by expired records
/// (swept first) counts.
#[test]
fn bulk_load_respects_max_records_all_or_nothing() {
    let fixture = Fixture::new();
    let store = fixture
        .builder()
        .max_records(5)
        .background_compaction(false)
        .open(fixture.path())
        .unwrap();
    let load = |prefix: &'static str, count: u64, ttl: Duration| {
        store.bulk_load(count, ttl, move |i| {
            (key(&format!("{prefix}{i}")), request("r"), response("x"))
        })
    };
    assert_eq!(load("short-", 2, Duration::from_secs(60)).unwrap(), 2);
    assert_eq!(load("fits-", 3, RECORD_TTL).unwrap(), 3);
    assert!(matches!(
        load("over-", 1, RECORD_TTL),
        Err(Error::CapacityExceeded { limit: 5 })
    ));
    assert_eq!(
        store.stats().unwrap().completed,
        5,
        "the refused load wrote nothing"
    );
    assert!(store.get(&key("over-0")).unwrap().is_none());
    // The two short-lived records expire; their room is swept and reused.
    fixture.clock.advance(Duration::from_secs(10 * 60));
    assert_eq!(load("after-", 2, RECORD_TTL).unwrap(), 2);
    assert!(matches!(
        load("again-", 1, RECORD_TTL),
        Err(Error::CapacityExceeded { limit: 5 })
    ));
}

#[test]
fn invalid_keys_are_typed_errors() {
    assert_eq!(IdempotencyKey::new("s", ""), Err(KeyError::Empty));
    assert_eq!(
        IdempotencyKey::new("s", "a b"),
        Err(KeyError::InvalidCharacter { position: 1 })
    );
    assert_eq!(
        IdempotencyKey::new("s", &"k".repeat(256)),
        Err(KeyError::KeyTooLong { len: 256 })
    );
    assert_eq!(
        IdempotencyKey::new(&"s".repeat(300), "k"),
        Err(KeyError::ScopeTooLong { len: 300 })
    );
    let as_store_error: Error = KeyError::Empty.into();
    assert!(matches!(as_store_error, Error::InvalidKey(KeyError::Empty)));
}

#[test]
fn invalid_settings_and_options_are_typed_errors() {
    let fixture = Fixture::new();
    for builder in [
        fixture.builder().lease_ttl(Duration::ZERO),
        fixture.builder().record_ttl(Duration::ZERO),
        fixture.builder().max_records(0),
        fixture.builder().max_response_bytes(usize::MAX),
    ] {
        assert!(matches!(
            builder.open(fixture.path()),
            Err(Error::InvalidArgument(_))
        ));
    }
    let store = fixture.open();
    let zero = BeginOptions {
        lease_ttl: Some(Duration::ZERO),
        ..BeginOptions::default()
    };
    assert!(matches!(
        store.begin_with(&key("k"), &request("r"), &zero),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let fixture = Fixture::new();
    let contents = b"this is somebody's notes file, not a database\n".repeat(200);
    std::fs::write(fixture.path(), &contents).unwrap();
    let result = Store::open(fixture.path());
    assert!(matches!(result, Err(Error::NotAStore(_))), "{result:?}");
    assert_eq!(std::fs::read(fixture.path()).unwrap(), contents);
}

#[test]
fn a_redb_database_of_another_program_is_refused() {
    let fixture = Fixture::new();
    {
        let db = redb::Database::create(fixture.path()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("users"))
            .unwrap()
            .insert("x", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open(fixture.path()),
        Err(Error::NotAStore(_))
    ));
}

#[test]
fn a_file_from_a_newer_format_is_refused_and_not_changed() {
    let fixture = Fixture::new();
    fixture.open().close().unwrap();
    let meta = redb::TableDefinition::<&str, &[u8]>::new("tollgate_meta");
    {
        let db = redb::Database::create(fixture.path()).unwrap();
        let txn = db.begin_write().unwrap();
        let mut future = vec![1u8];
        future.extend(99u64.to_le_bytes());
        txn.open_table(meta)
            .unwrap()
            .insert("format_version", future.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        Store::open(fixture.path()),
        Err(Error::IncompatibleFormat {
            found: 99,
            supported: 3
        })
    ));
    // The epoch was not bumped by the refused open.
    let db = redb::Database::create(fixture.path()).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(meta).unwrap();
    let epoch = redb::ReadableTable::get(&table, "epoch").unwrap().unwrap();
    assert_eq!(&epoch.value()[1..], 1u64.to_le_bytes());
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let fixture = Fixture::new();
    let store = fixture.open();
    assert!(matches!(
        fixture.builder().open(fixture.path()),
        Err(Error::AlreadyOpen)
    ));
    store.close().unwrap();
    fixture.open().close().unwrap();
}

#[test]
fn a_corrupted_record_value_fails_only_its_own_key() {
    let fixture = Fixture::new();
    let store = fixture.open();
    acquired(store.begin(&key("good"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    acquired(store.begin(&key("bad"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    store.close().unwrap();
    {
        let db = redb::Database::create(fixture.path()).unwrap();
        let txn = db.begin_write().unwrap();
        let records = redb::TableDefinition::<&[u8; 32], &[u8]>::new("tollgate_records");
        let digest = key("bad").digest();
        txn.open_table(records)
            .unwrap()
            .insert(digest.as_bytes(), &[1u8, 0xff, 0xff][..])
            .unwrap();
        txn.commit().unwrap();
    }
    let store = fixture.open();
    assert!(matches!(store.get(&key("bad")), Err(Error::Corrupted(_))));
    assert!(matches!(
        store.begin(&key("bad"), &request("r")),
        Err(Error::Corrupted(_))
    ));
    replay(store.begin(&key("good"), &request("r")).unwrap());
    acquired(store.begin(&key("new"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
}
