//! Spent quota stays spent across close and reopen, in both durability modes, and across a drop
//! without close (which still runs the final flush).

use std::time::{Duration, SystemTime};

use tollgate::ratelimit::{CrashPolicy, Limit, Quota, RateDurability};
use tollgate::{ManualClock, Store};

fn open(path: &std::path::Path, clock: &ManualClock, durability: RateDurability) -> Store {
    Store::builder()
        .clock(clock.clone())
        .rate_durability(durability)
        .open(path)
        .unwrap()
}

#[test]
fn spent_quota_survives_close_and_drop_in_both_modes() {
    let batched = RateDurability::Batched {
        max_delay: Duration::from_secs(3600),
    };
    for durability in [RateDurability::Immediate, batched] {
        for use_close in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rates.redb");
            let clock =
                ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
            let login =
                Limit::new("login", Quota::fixed_window(3, Duration::from_secs(900))).unwrap();
            let api = Limit::new("api", Quota::per_minute(10)).unwrap();

            let store = open(&path, &clock, durability);
            for _ in 0..3 {
                assert!(store.check(&login, "user:1").unwrap().allowed());
            }
            assert!(store.check_n(&api, "user:1", 7).unwrap().allowed());
            if use_close {
                store.close().unwrap();
            } else {
                drop(store);
            }

            clock.advance(Duration::from_secs(1));
            let store = open(&path, &clock, durability);
            let denied = store.check(&login, "user:1").unwrap();
            assert!(!denied.allowed(), "{durability:?} close={use_close}");
            assert_eq!(denied.retry_after(), Some(Duration::from_secs(899)));
            assert_eq!(denied.policy(), "login");
            // 7 of 10 spent a second ago; one unit refills every 6 s, so still 3 left.
            assert_eq!(store.peek(&api, "user:1").unwrap().remaining(), 3);
            clock.advance(Duration::from_secs(5));
            assert_eq!(store.peek(&api, "user:1").unwrap().remaining(), 4);
            // Another subject is untouched.
            assert_eq!(store.peek(&login, "user:2").unwrap().remaining(), 3);
            store.close().unwrap();
        }
    }
}

#[test]
fn flush_makes_batched_counters_durable_and_drops_idle_ones_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    // The flush's own work: under the default BoundedLoss each first check would have written
    // its reservation already (tests/it/rate_reservations.rs).
    let store = Store::builder()
        .clock(clock.clone())
        .crash_policy(CrashPolicy::TrustLastFlush)
        .rate_durability(RateDurability::Batched {
            max_delay: Duration::from_secs(3600),
        })
        .open(dir.path().join("rates.redb"))
        .unwrap();
    let limit = Limit::new("api", Quota::per_second(5)).unwrap();
    for subject in 0..1000 {
        assert!(
            store
                .check(&limit, &format!("client-{subject}"))
                .unwrap()
                .allowed()
        );
    }
    let writes_before = store.stats().unwrap().writes;
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.writes, writes_before + 1000);
    assert_eq!(stats.rate_counters_in_memory, 1000);

    // A second later every counter has refilled: idle, indistinguishable from fresh, so dropped.
    clock.advance(Duration::from_secs(1));
    store.flush().unwrap();
    assert_eq!(store.stats().unwrap().rate_counters_in_memory, 0);
    // Dropping them changed no decision.
    assert_eq!(store.check(&limit, "client-7").unwrap().remaining(), 4);

    // A busy counter stays while used, and leaves once unused for a whole pass.
    assert!(store.check_n(&limit, "busy", 5).unwrap().allowed());
    store.flush().unwrap();
    assert_eq!(store.stats().unwrap().rate_counters_in_memory, 2);
    store.flush().unwrap();
    assert_eq!(store.stats().unwrap().rate_counters_in_memory, 0);
    // Reloaded from disk, still spent.
    assert!(!store.check(&limit, "busy").unwrap().allowed());
}
