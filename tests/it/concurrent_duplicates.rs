//! 32 threads send the same request with the same key at the same moment: exactly one executes.

use crate::fixture;

use std::sync::{Arc, Barrier};

use fixture::{key, replay, request, response};
use tollgate::idempotency::Begin;

on_every_engine! {
    fn thirty_two_concurrent_duplicates_acquire_exactly_once(fixture) {
        let store = fixture.open();
        let barrier = Arc::new(Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let store = store.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    match store.begin(&key("pay-1"), &request("charge 10")).unwrap() {
                        Begin::Acquired(lease) => {
                            lease.complete(response("charged once")).unwrap();
                            "acquired"
                        }
                        Begin::InFlight { .. } => "in flight",
                        Begin::Replay(_) => "replay",
                        Begin::Mismatch => "mismatch",
                    }
                })
            })
            .collect();
        let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(outcomes.iter().filter(|o| **o == "acquired").count(), 1);
        assert!(
            outcomes
                .iter()
                .all(|o| ["acquired", "in flight", "replay"].contains(o))
        );
        let again = replay(store.begin(&key("pay-1"), &request("charge 10")).unwrap());
        assert_eq!(again.response().body, b"charged once");
    }
}

on_every_engine! {
    fn concurrent_distinct_keys_all_acquire_and_tokens_are_unique(fixture) {
        let store = fixture.open();
        let barrier = Arc::new(Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = store.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..20)
                        .map(|i| {
                            let lease = fixture::acquired(
                                store
                                    .begin(&key(&format!("{t}-{i}")), &request("x"))
                                    .unwrap(),
                            );
                            let token = lease.token();
                            lease.complete(response("ok")).unwrap();
                            token
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut tokens: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let count = tokens.len();
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), count);
    }
}
