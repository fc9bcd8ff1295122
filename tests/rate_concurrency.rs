//! 16 threads hammering one subject never get more than the quota, in either durability mode:
//! every read-modify-write of a counter is atomic.

use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use tollgate::ratelimit::{Limit, Quota, RateDurability};
use tollgate::{ManualClock, Store};

fn allowed_under_contention(durability: RateDurability, quota: Quota) -> usize {
    let dir = tempfile::tempdir().unwrap();
    // The clock stands still: no quota refills during the test, so the count is exact.
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let store = Store::builder()
        .clock(clock)
        .rate_durability(durability)
        .open(dir.path().join("rates.redb"))
        .unwrap();
    let limit = Arc::new(Limit::new("hammer", quota).unwrap());
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (store, limit, barrier) = (store.clone(), Arc::clone(&limit), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                (0..40)
                    .filter(|_| store.check(&limit, "one-subject").unwrap().allowed())
                    .count()
            })
        })
        .collect();
    let allowed = threads.into_iter().map(|t| t.join().unwrap()).sum();
    store.close().unwrap();
    allowed
}

#[test]
fn sixteen_threads_never_exceed_the_quota_in_either_mode() {
    let quotas = [
        Quota::per_hour(100),
        Quota::fixed_window(100, Duration::from_secs(3600)),
        Quota::sliding_window(100, Duration::from_secs(3600)),
    ];
    for durability in [RateDurability::Immediate, RateDurability::default()] {
        for quota in quotas {
            // 640 attempts against a quota of 100 with no refill: exactly 100 pass.
            assert_eq!(
                allowed_under_contention(durability, quota),
                100,
                "{durability:?} {quota:?}"
            );
        }
    }
}
