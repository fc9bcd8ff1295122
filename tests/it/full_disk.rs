//! A full disk takes no replay down (issue 16), on the simulated disk: once a write fails for
//! want of space, replays, `get`, `list_records`, peeks and `stats` answer from the last committed
//! state, every write gets `Error::StorageFull` with the path, `health()` and `stats()` say the
//! store is degraded and why; once space returns, writes resume by themselves (with a new epoch)
//! and nothing acknowledged is lost. A store opened on a full disk opens for reads and takes no
//! lease over until it can bump its epoch; Batched rate counters keep deciding from memory and
//! are written once the disk has room again. A commit that fails with another I/O error is
//! reported in doubt, and its outcome read back from the file once it opens again.

use std::time::Duration;

use crate::fixture;
use fixture::{Fixture, LEASE_TTL, acquired, key, replay, request, response};
use tollgate::idempotency::Begin;
use tollgate::ratelimit::{CrashPolicy, Limit, Quota, RateDurability};
use tollgate::testing::SimDisk;
use tollgate::{DegradedCause, Error, Health, Store};

fn builder(fixture: &Fixture, durability: RateDurability, log: bool) -> tollgate::StoreBuilder {
    fixture
        .builder()
        .background_compaction(false)
        .rate_durability(durability)
        .write_ahead_log(log)
}

/// Fills the simulated disk and writes until the store cannot write any more.
fn fill_up(store: &Store, disk: &SimDisk, prefix: &str) -> fixture::Filled {
    disk.fill();
    fixture::write_until_degraded(store, prefix, 2000)
}

/// A store on `disk` whose key "done" is completed (and replays as "done").
fn with_one_completed_key(
    fixture: &Fixture,
    disk: &SimDisk,
    durability: RateDurability,
    log: bool,
) -> Store {
    let store = builder(fixture, durability, log)
        .open_simulated(disk)
        .unwrap();
    acquired(store.begin(&key("done"), &request("r")).unwrap())
        .complete(response("done"))
        .unwrap();
    store
}

fn is_full(error: &Error) -> bool {
    matches!(error, Error::StorageFull { path } if path.to_str() == Some("(simulated disk)"))
}

fn reads_go_on_when_the_disk_fills_and_writes_resume_when_space_returns(log: bool) {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let store = builder(&fixture, RateDurability::Immediate, log)
        .open_simulated(&disk)
        .unwrap();
    let limit = Limit::new("api", Quota::per_minute(10)).unwrap();
    for n in 0..20 {
        acquired(
            store
                .begin(&key(&format!("before{n}")), &request("r"))
                .unwrap(),
        )
        .complete(response("done"))
        .unwrap();
    }
    assert!(store.check(&limit, "s").unwrap().allowed());
    let mut running = acquired(store.begin(&key("running"), &request("r")).unwrap());
    let epoch = store.epoch();

    let filled = fill_up(&store, &disk, "filled");
    assert!(is_full(&filled.error), "{:?}", filled.error);
    assert!(disk.refused_for_space() > 0);

    // Reads answer from the last committed state.
    for name in (0..20)
        .map(|n| format!("before{n}"))
        .chain(filled.acknowledged.clone())
    {
        replay(store.begin(&key(&name), &request("r")).unwrap());
        assert!(store.get(&key(&name)).unwrap().is_some(), "{name}");
    }
    assert_eq!(
        store.list_records(None, 10_000).unwrap().len(),
        20 + filled.acknowledged.len() + filled.running.len() + 1
    );
    assert_eq!(store.peek(&limit, "s").unwrap().remaining(), 9);
    let stats = store.stats().unwrap();
    assert_eq!(stats.degraded, Some(DegradedCause::StorageFull));
    assert!(
        matches!(store.health(), Health::Degraded { ref reason } if reason.contains("no space")),
        "{:?}",
        store.health()
    );
    // A key in flight: still in flight (no write needed to say so) while the epoch is the
    // lease's; if a reopen in between took a new epoch, taking it over is a write, refused.
    let in_flight = store.begin(&key("running"), &request("r"));
    if store.epoch() == epoch {
        assert!(
            matches!(in_flight, Ok(Begin::InFlight { .. })),
            "{in_flight:?}"
        );
    } else {
        assert!(
            matches!(&in_flight, Err(error) if is_full(error)),
            "{in_flight:?}"
        );
    }
    // Every write gets the typed error, until space returns.
    let refused = store.begin(&key("new"), &request("r")).unwrap_err();
    assert!(is_full(&refused), "{refused:?}");
    // A second later the next write tries to reopen for writing; a few small writes may fit in
    // the room the refused commits left, then the disk refuses them again.
    fixture.clock.advance(Duration::from_secs(2));
    let refused = (0..1000)
        .find_map(|n| store.check(&limit, &format!("s{n}")).err())
        .expect("the disk fills again");
    assert!(is_full(&refused), "{refused:?}");
    assert!(is_full(&running.extend(LEASE_TTL).unwrap_err()));

    disk.unlimit_size();
    fixture.clock.advance(Duration::from_secs(2));
    let lease = acquired(store.begin(&key("new"), &request("r")).unwrap());
    assert!(!lease.recovered());
    lease.complete(response("after")).unwrap();
    assert_eq!(store.health(), Health::Ready);
    assert_eq!(store.stats().unwrap().degraded, None);
    assert!(store.epoch() > epoch, "writing again takes a new epoch");
    // The owner of the key in flight before the fill still completes it (its token is intact).
    running.complete(response("late but fine")).unwrap();
    assert!(store.check(&limit, "s").unwrap().allowed());
    store.close().unwrap();

    // Nothing acknowledged was lost.
    let store = builder(&fixture, RateDurability::Immediate, log)
        .open_simulated(&disk)
        .unwrap();
    for name in (0..20)
        .map(|n| format!("before{n}"))
        .chain(filled.acknowledged)
        .chain(["new".to_owned(), "running".to_owned()])
    {
        replay(store.begin(&key(&name), &request("r")).unwrap());
    }
    assert_eq!(store.peek(&limit, "s").unwrap().remaining(), 8);
    store.close().unwrap();
}

fn an_open_on_a_full_disk_serves_replays_and_takes_no_lease_over(log: bool) {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let store = with_one_completed_key(&fixture, &disk, RateDurability::Immediate, log);
    // A key left running by a process that dies: a reopen that bumps the epoch takes it over.
    let _abandoned = acquired(store.begin(&key("abandoned"), &request("r")).unwrap());
    assert!(is_full(&fill_up(&store, &disk, "filler").error));
    let epoch = store.epoch();
    drop(store); // the process dies on a full disk

    let store = builder(&fixture, RateDurability::Immediate, log)
        .open_simulated(&disk)
        .expect("an open on a full disk opens for reads");
    assert!(matches!(store.health(), Health::Degraded { .. }));
    assert_eq!(
        store.stats().unwrap().degraded,
        Some(DegradedCause::StorageFull)
    );
    replay(store.begin(&key("done"), &request("r")).unwrap());
    // Not taken over. Without the log this store could not bump the epoch, so the lease counts
    // as live; with it, the epoch bump fit and the log's changes did not: the lease is free, but
    // taking it over is a write, refused.
    let abandoned = store.begin(&key("abandoned"), &request("r"));
    if store.epoch() == epoch {
        assert!(
            matches!(abandoned, Ok(Begin::InFlight { .. })),
            "{abandoned:?}"
        );
    } else {
        assert!(
            log && matches!(&abandoned, Err(error) if is_full(error)),
            "{abandoned:?}"
        );
    }
    assert!(is_full(
        &store.begin(&key("new"), &request("r")).unwrap_err()
    ));

    disk.unlimit_size();
    fixture.clock.advance(Duration::from_secs(2));
    let takeover = acquired(store.begin(&key("abandoned"), &request("r")).unwrap());
    assert!(
        takeover.recovered(),
        "with the epoch bumped, the dead process's lease is free"
    );
    takeover.complete(response("recovered")).unwrap();
    assert_eq!(store.health(), Health::Ready);
    store.close().unwrap();
}

/// Under the policies without reservations (here `DrainOnRecovery`) counters are flushed, and a
/// full disk fails the flush while memory keeps deciding.
fn batched_counters_keep_deciding_and_are_written_once_there_is_room(log: bool) {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let batched = RateDurability::Batched {
        max_delay: Duration::from_secs(3600),
    };
    let builder = |fixture: &Fixture, batched| {
        builder(fixture, batched, log).crash_policy(CrashPolicy::DrainOnRecovery)
    };
    let store = builder(&fixture, batched).open_simulated(&disk).unwrap();
    let limit = Limit::new("login", Quota::per_minute(5)).unwrap();
    for _ in 0..3 {
        assert!(store.check(&limit, "victim").unwrap().allowed());
    }
    // Enough other counters that their flush must grow the file.
    for n in 0..3000 {
        assert!(store.check(&limit, &format!("other{n}")).unwrap().allowed());
    }
    disk.fill();
    // The flush takes the changed counters and fails: it says why.
    assert!(is_full(&store.flush().unwrap_err()));
    // Decided from memory: the quota holds while the disk is full.
    assert!(store.check(&limit, "victim").unwrap().allowed());
    assert!(store.check(&limit, "victim").unwrap().allowed());
    assert!(!store.check(&limit, "victim").unwrap().allowed());
    // (Whether the store still refuses writes now depends on the room the failed commit's pages
    // left after the reopen; the counters it took are in memory either way.)

    disk.unlimit_size();
    fixture.clock.advance(Duration::from_secs(2));
    store.flush().unwrap();
    assert_eq!(store.health(), Health::Ready);
    store.close().unwrap();
    // Spent before and while full, written after: a reopen mints nothing.
    let store = builder(&fixture, batched).open_simulated(&disk).unwrap();
    assert!(!store.check(&limit, "victim").unwrap().allowed());
    assert_eq!(store.peek(&limit, "other7").unwrap().remaining(), 4);
    store.close().unwrap();
}

/// Under `BoundedLoss` (the default) a full disk stops only the charges that need a new
/// reservation: they are refused with `StorageFull` and charge nothing (answering them would let
/// a crash mint quota); charges within a reservation already on disk go on; once there is room
/// again everything does, and nothing was minted.
fn a_full_disk_refuses_only_charges_that_need_a_reservation(log: bool) {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let batched = RateDurability::Batched {
        max_delay: Duration::from_secs(3600),
    };
    let store = builder(&fixture, batched, log)
        .open_simulated(&disk)
        .unwrap();
    // 16 an hour: reservations of 2 units. The first check reserves 3.
    let limit = Limit::new("login", Quota::per_hour(16)).unwrap();
    assert_eq!(store.check(&limit, "victim").unwrap().remaining(), 15);
    fill_up(&store, &disk, "filler");
    // Within the reservation: answered from memory.
    assert_eq!(store.check(&limit, "victim").unwrap().remaining(), 14);
    assert_eq!(store.check(&limit, "victim").unwrap().remaining(), 13);
    // Past it: refused, typed, nothing charged; a subject never seen alike.
    let refused = store.check(&limit, "victim").unwrap_err();
    assert!(
        is_full(&refused) || matches!(refused, Error::Poisoned),
        "{refused:?}"
    );
    assert!(store.check(&limit, "newcomer").is_err());
    disk.unlimit_size();
    fixture.clock.advance(Duration::from_secs(2));
    let after = store.check(&limit, "victim").unwrap();
    assert_eq!(after.remaining(), 12, "the refused charge was not charged");
    store.close().unwrap();
    let store = builder(&fixture, batched, log)
        .open_simulated(&disk)
        .unwrap();
    assert_eq!(store.peek(&limit, "victim").unwrap().remaining(), 12);
    assert_eq!(store.peek(&limit, "newcomer").unwrap().remaining(), 16);
    store.close().unwrap();
}

fn a_failed_commit_is_in_doubt_and_its_outcome_is_read_back_from_the_file(log: bool) {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let store = with_one_completed_key(&fixture, &disk, RateDurability::Immediate, log);
    // The device fails from the next write on (not a full disk: an I/O error).
    disk.fail_at_operation(disk.operations() + 1);
    let failed = store.begin(&key("lost"), &request("r")).unwrap_err();
    assert!(matches!(failed, Error::InDoubt(_)), "{failed:?}");
    // The file cannot be opened again while every write fails (redb must repair it first):
    // nothing can be read, and the store says so.
    assert!(
        matches!(store.health(), Health::Failed { .. }),
        "{:?}",
        store.health()
    );
    assert!(matches!(
        store.get(&key("done")).unwrap_err(),
        Error::Poisoned
    ));
    assert_eq!(
        store.stats().unwrap_err().to_string(),
        Error::Poisoned.to_string()
    );

    disk.heal();
    fixture.clock.advance(Duration::from_secs(2));
    // Read back from the file: the completed key replays, the failed begin's lease is not there.
    replay(store.begin(&key("done"), &request("r")).unwrap());
    assert!(store.get(&key("lost")).unwrap().is_none());
    assert_eq!(store.health(), Health::Ready);
    acquired(store.begin(&key("lost"), &request("r")).unwrap())
        .complete(response("now"))
        .unwrap();
    store.close().unwrap();
}

fn closing_a_store_that_cannot_write_says_so(log: bool) {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let batched = RateDurability::Batched {
        max_delay: Duration::from_secs(3600),
    };
    let store = with_one_completed_key(&fixture, &disk, batched, log);
    assert!(is_full(&fill_up(&store, &disk, "filler").error));
    // Its last commit (the clean-shutdown mark, the counters) cannot be made.
    let closed = store.close().unwrap_err();
    assert!(is_full(&closed), "{closed:?}");
    disk.unlimit_size();
    let store = builder(&fixture, RateDurability::Immediate, log)
        .open_simulated(&disk)
        .unwrap();
    replay(store.begin(&key("done"), &request("r")).unwrap());
    store.close().unwrap();
}

/// Each scenario runs with the write-ahead log (the default for store files) and without it.
macro_rules! with_and_without_the_log {
    ($($scenario:ident),* $(,)?) => {
        mod with_the_log {
            $(#[test]
            fn $scenario() {
                super::$scenario(true);
            })*
        }
        mod without_the_log {
            $(#[test]
            fn $scenario() {
                super::$scenario(false);
            })*
        }
    };
}

with_and_without_the_log!(
    reads_go_on_when_the_disk_fills_and_writes_resume_when_space_returns,
    an_open_on_a_full_disk_serves_replays_and_takes_no_lease_over,
    batched_counters_keep_deciding_and_are_written_once_there_is_room,
    a_full_disk_refuses_only_charges_that_need_a_reservation,
    a_failed_commit_is_in_doubt_and_its_outcome_is_read_back_from_the_file,
    closing_a_store_that_cannot_write_says_so,
);
