//! Batched checks race a `close` from another clone: every check answered "allowed" before the
//! close is on disk afterwards, and every check after it is refused with `Closed` (none is
//! silently lost). Batched checks take no store-wide lock, so this is the close protocol's test.

use crate::fixture;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use fixture::wait_for;
use tollgate::ratelimit::{Limit, Quota, RateDurability};
use tollgate::{Error, ManualClock, Store};

const THREADS: usize = 4;
const QUOTA: u32 = 1_000_000;

#[test]
fn every_allowed_check_before_close_is_persisted_and_later_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rates.redb");
    // The clock stands still: nothing refills, so the counts on disk are exact.
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let open = || {
        Store::builder()
            .clock(clock.clone())
            .rate_durability(RateDurability::Batched {
                max_delay: Duration::from_millis(5),
            })
            .background_compaction(false)
            .open(&path)
            .unwrap()
    };
    let store = open();
    let limit = Arc::new(Limit::new("race", Quota::per_hour(QUOTA)).unwrap());
    let done = Arc::new(AtomicU64::new(0));
    // Threads with at least one allowed check: the close waits for all of them, so that every
    // thread really races it (on 2 cores a thread may otherwise not have run at all).
    let running = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, limit, done, running, barrier) = (
                store.clone(),
                Arc::clone(&limit),
                Arc::clone(&done),
                Arc::clone(&running),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let mut allowed = 0u32;
                while allowed < QUOTA / 2 {
                    match store.check(&limit, &format!("subject-{t}")) {
                        Ok(decision) => {
                            assert!(decision.allowed());
                            allowed += 1;
                            if allowed == 1 {
                                running.fetch_add(1, Ordering::Relaxed);
                            }
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::Closed) => return allowed,
                        Err(other) => panic!("unexpected error {other}"),
                    }
                }
                panic!("{allowed} checks and still not refused: close did not stop them");
            })
        })
        .collect();
    barrier.wait();
    // Close while the checks are running (after enough of them to span several flushes).
    wait_for(
        "every thread checking, and 20,000 checks before the close",
        || {
            running.load(Ordering::Relaxed) == THREADS as u64
                && done.load(Ordering::Relaxed) >= 20_000
        },
    );
    let closer = store.clone();
    closer.close().unwrap();
    let allowed: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(allowed.iter().all(|&n| n > 0), "{allowed:?}");
    drop(store);

    let reopened = open();
    for (t, allowed) in allowed.iter().enumerate() {
        let remaining = reopened
            .peek(&limit, &format!("subject-{t}"))
            .unwrap()
            .remaining();
        assert_eq!(remaining, QUOTA - allowed, "subject-{t}");
    }
    reopened.close().unwrap();
}
