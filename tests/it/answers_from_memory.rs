//! `Store::try_check_all` and `Store::try_begin` answer from memory or not at all: `Some` with
//! exactly what `check_all` and `begin` answer (and the same charge), `None` with no effect when
//! the answer needs the disk, a write or the network. Memory answers Batched checks of counters
//! in the cache and replays (or mismatches) of finished records in the replay cache; Immediate
//! checks, new counters, leases, running or expired records, and the PostgreSQL engine go the
//! blocking way.

use std::time::Duration;

use crate::fixture;
use fixture::{Fixture, RECORD_TTL, acquired, key, request, response};
use tollgate::idempotency::Begin;
use tollgate::ratelimit::{CrashPolicy, Limit, Quota, RateDurability};
use tollgate::{BeginOptions, Error};

fn batched(fixture: &Fixture) -> tollgate::Store {
    fixture
        .open_with(
            fixture
                .builder()
                .background_compaction(false)
                // Every charge answered from memory: under the default BoundedLoss only those a
                // reservation on disk covers are (tests/it/rate_reservations.rs).
                .crash_policy(CrashPolicy::TrustLastFlush)
                .rate_durability(RateDurability::Batched {
                    max_delay: Duration::from_secs(60),
                }),
        )
        .unwrap()
}

#[test]
fn batched_checks_of_cached_counters_are_answered_and_charged_from_memory() {
    let fixture = Fixture::new();
    let store = batched(&fixture);
    let limit = Limit::new("fast", Quota::per_minute(3)).unwrap();
    let other = Limit::new("other", Quota::per_minute(10)).unwrap();

    // Not in memory yet: no answer, and nothing charged.
    assert!(store.try_check_all(&[(&limit, "s")], 1).unwrap().is_none());
    assert_eq!(store.peek(&limit, "s").unwrap().remaining(), 3);
    // The blocking check loads the counter; from now on memory answers, charging as check does.
    assert_eq!(store.check(&limit, "s").unwrap().remaining(), 2);
    let fast = store.try_check_all(&[(&limit, "s")], 1).unwrap().unwrap();
    assert!(fast.allowed());
    assert_eq!(fast.remaining(), 1);
    let fast = store.try_check_all(&[(&limit, "s")], 1).unwrap().unwrap();
    assert_eq!(fast.remaining(), 0);
    let denied = store.try_check_all(&[(&limit, "s")], 1).unwrap().unwrap();
    assert!(!denied.allowed());
    assert_eq!(denied.policy(), "fast");
    assert!(denied.retry_after().is_some());
    assert!(
        !store.check(&limit, "s").unwrap().allowed(),
        "the fast path charged"
    );

    // Several limits: one of them not in memory means no answer and no charge on any.
    assert!(
        store
            .try_check_all(&[(&limit, "t"), (&other, "t")], 1)
            .unwrap()
            .is_none()
    );
    assert!(store.check(&other, "t").unwrap().allowed()); // loads `other`/t only
    assert!(
        store
            .try_check_all(&[(&other, "t"), (&limit, "t")], 1)
            .unwrap()
            .is_none()
    );
    assert_eq!(store.peek(&other, "t").unwrap().remaining(), 9);
    assert!(store.check(&limit, "t").unwrap().allowed());
    let both = store
        .try_check_all(&[(&other, "t"), (&limit, "t")], 2)
        .unwrap()
        .unwrap();
    assert!(
        both.allowed(),
        "fast/t has 2 left, other/t 9: cost 2 fits both"
    );
    assert_eq!((both.policy(), both.remaining()), ("fast", 0));
    let denied = store
        .try_check_all(&[(&other, "t"), (&limit, "t")], 1)
        .unwrap()
        .unwrap();
    assert!(!denied.allowed());
    // All or nothing: the denial charged other/t nothing.
    assert_eq!(store.peek(&other, "t").unwrap().remaining(), 7);
    store.close().unwrap();
}

#[test]
fn bad_arguments_are_refused_as_check_all_refuses_them() {
    let fixture = Fixture::new();
    let store = batched(&fixture);
    let limit = Limit::new("fast", Quota::per_minute(3)).unwrap();
    assert!(matches!(
        store.try_check_all(&[(&limit, "s")], 4),
        Err(Error::CostTooLarge { cost: 4, limit: 3 })
    ));
    assert!(matches!(
        store.try_check_all(&[], 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.try_check_all(&[(&limit, "s"), (&limit, "s")], 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.try_check_all(&[(&limit, "")], 1),
        Err(Error::InvalidArgument(_))
    ));
    store.clone().close().unwrap();
    assert!(matches!(
        store.try_check_all(&[(&limit, "s")], 1),
        Err(Error::Closed)
    ));
}

#[test]
fn immediate_checks_always_need_the_writer() {
    let fixture = Fixture::new();
    let store = fixture
        .open_with(
            fixture
                .builder()
                .background_compaction(false)
                .rate_durability(RateDurability::Immediate),
        )
        .unwrap();
    let limit = Limit::new("durable", Quota::per_minute(3)).unwrap();
    assert!(store.check(&limit, "s").unwrap().allowed());
    assert!(store.try_check_all(&[(&limit, "s")], 1).unwrap().is_none());
    assert_eq!(store.peek(&limit, "s").unwrap().remaining(), 2);
    store.close().unwrap();
}

#[test]
fn finished_records_in_the_replay_cache_are_answered_from_memory() {
    let fixture = Fixture::new();
    let store = fixture.open_without_compactor();
    let options = BeginOptions::default();
    // No record: a begin takes a lease, which needs the writer.
    assert!(
        store
            .try_begin(&key("k"), &request("r"), &options)
            .unwrap()
            .is_none()
    );
    assert!(store.get(&key("k")).unwrap().is_none(), "try_begin wrote");
    let lease = acquired(store.begin(&key("k"), &request("r")).unwrap());
    // Running: the answer (in flight) is read from the file, not from memory.
    assert!(
        store
            .try_begin(&key("k"), &request("r"), &options)
            .unwrap()
            .is_none()
    );
    lease.complete(response("done")).unwrap();
    // The first replay reads the file and fills the cache; from then on memory answers.
    let replayed = match store.begin(&key("k"), &request("r")).unwrap() {
        Begin::Replay(replay) => replay.response().body.clone(),
        other => panic!("expected a replay, got {other:?}"),
    };
    assert_eq!(replayed, b"done");
    match store.try_begin(&key("k"), &request("r"), &options).unwrap() {
        Some(Begin::Replay(replay)) => assert_eq!(replay.response().body, b"done"),
        other => panic!("expected a replay from memory, got {other:?}"),
    }
    assert!(matches!(
        store
            .try_begin(&key("k"), &request("other"), &options)
            .unwrap(),
        Some(Begin::Mismatch)
    ));
    // Expired: the next begin takes a new lease, which memory cannot give.
    fixture.clock.advance(RECORD_TTL + Duration::from_secs(1));
    assert!(
        store
            .try_begin(&key("k"), &request("r"), &options)
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.begin(&key("k"), &request("r")).unwrap(),
        Begin::Acquired(_)
    ));
    store.clone().close().unwrap();
    assert!(matches!(
        store.try_begin(&key("k"), &request("r"), &options),
        Err(Error::Closed)
    ));
}

#[test]
fn without_a_replay_cache_every_begin_goes_the_blocking_way() {
    let fixture = Fixture::new();
    let store = fixture
        .open_with(
            fixture
                .builder()
                .background_compaction(false)
                .replay_cache_size(0),
        )
        .unwrap();
    acquired(store.begin(&key("k"), &request("r")).unwrap())
        .complete(response("done"))
        .unwrap();
    assert!(matches!(
        store.begin(&key("k"), &request("r")).unwrap(),
        Begin::Replay(_)
    ));
    assert!(
        store
            .try_begin(&key("k"), &request("r"), &BeginOptions::default())
            .unwrap()
            .is_none()
    );
    store.close().unwrap();
}

#[cfg(feature = "postgres")]
#[test]
fn on_postgres_memory_never_answers() {
    let Some(fixture) = Fixture::postgres("answers_from_memory") else {
        return;
    };
    let store = fixture.open();
    let limit = Limit::new("pg", Quota::per_minute(3)).unwrap();
    assert!(store.check(&limit, "s").unwrap().allowed());
    assert!(store.try_check_all(&[(&limit, "s")], 1).unwrap().is_none());
    assert_eq!(store.peek(&limit, "s").unwrap().remaining(), 2);
    acquired(store.begin(&key("k"), &request("r")).unwrap())
        .complete(response("done"))
        .unwrap();
    assert!(matches!(
        store.begin(&key("k"), &request("r")).unwrap(),
        Begin::Replay(_)
    ));
    assert!(
        store
            .try_begin(&key("k"), &request("r"), &BeginOptions::default())
            .unwrap()
            .is_none()
    );
    store.close().unwrap();
}
