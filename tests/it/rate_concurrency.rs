//! 16 threads hammering one subject never get more than the quota, in every durability mode of
//! every engine: every read-modify-write of a counter is atomic.

use crate::fixture;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use fixture::Fixture;
use tollgate::ratelimit::{Limit, Quota, RateDurability};

fn allowed_under_contention(fixture: &Fixture, durability: RateDurability, quota: Quota) -> usize {
    // The clock stands still (on PostgreSQL, the quotas refill far slower than the test runs):
    // no quota refills during the test, so the count is exact.
    let store = fixture
        .open_with(fixture.builder().rate_durability(durability))
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
    store.reset(&limit, "one-subject").unwrap();
    store.close().unwrap();
    allowed
}

on_every_counter_engine! {
    fn sixteen_threads_never_exceed_the_quota_in_any_mode(fixture) {
        let quotas = [
            Quota::per_hour(100),
            Quota::fixed_window(100, Duration::from_secs(24 * 3600)),
            Quota::sliding_window(100, Duration::from_secs(24 * 3600)),
        ];
        // PostgreSQL and Redis have Immediate counters only.
        let modes: &[RateDurability] = if fixture.immediate_only() {
            &[RateDurability::Immediate]
        } else {
            &[RateDurability::Immediate, RateDurability::default()]
        };
        for &durability in modes {
            for quota in quotas {
                // 640 attempts against a quota of 100 with no refill: exactly 100 pass.
                assert_eq!(
                    allowed_under_contention(&fixture, durability, quota),
                    100,
                    "{durability:?} {quota:?}"
                );
            }
        }
    }
}
