//! Every rate operation on every engine, on counters that stand still while the test runs (day-long
//! windows, or a burst far larger than the refill in a test's seconds): `check_n` charges its
//! cost, `refund` gives back (never above a fresh counter), `peek` charges nothing, `reset`
//! forgets, a cost over the quota is `CostTooLarge` and charges nothing, and all of it survives a
//! reopen.

use std::time::Duration;

use tollgate::Error;
use tollgate::ratelimit::{Limit, Quota, RateDurability};

const DAY: Duration = Duration::from_secs(86_400);

on_every_counter_engine! {
    fn check_n_refund_peek_and_reset_on_every_algorithm(fixture) {
        let store = fixture
            .open_with(fixture.builder().rate_durability(RateDurability::Immediate))
            .unwrap();
        let limits = [
            Limit::new("gcra", Quota::new(10, DAY)).unwrap(),
            Limit::new("fixed", Quota::fixed_window(10, DAY)).unwrap(),
            Limit::new("sliding", Quota::sliding_window(10, DAY)).unwrap(),
        ];
        for limit in &limits {
            let name = limit.name();
            assert_eq!(store.check_n(limit, "s", 4).unwrap().remaining(), 6, "{name}");
            assert_eq!(store.peek(limit, "s").unwrap().remaining(), 6, "{name}");
            assert_eq!(store.refund(limit, "s", 3).unwrap().remaining(), 9, "{name}");
            // A refund never raises a counter above a fresh one.
            assert_eq!(store.refund(limit, "s", 50).unwrap().remaining(), 10, "{name}");
            assert_eq!(store.check_n(limit, "s", 10).unwrap().remaining(), 0, "{name}");
            assert!(!store.check(limit, "s").unwrap().allowed(), "{name}");
            assert!(
                matches!(store.check_n(limit, "other", 11), Err(Error::CostTooLarge { .. })),
                "{name}"
            );
            assert_eq!(store.peek(limit, "other").unwrap().remaining(), 10, "{name}");
            store.check_n(limit, "kept", 7).unwrap();
            store.reset(limit, "s").unwrap();
            assert_eq!(store.peek(limit, "s").unwrap().remaining(), 10, "{name}");
        }
        store.close().unwrap();
        let store = fixture
            .open_with(fixture.builder().rate_durability(RateDurability::Immediate))
            .unwrap();
        for limit in &limits {
            assert_eq!(store.peek(limit, "kept").unwrap().remaining(), 3, "{}", limit.name());
            assert_eq!(store.peek(limit, "s").unwrap().remaining(), 10, "{}", limit.name());
        }
        store.close().unwrap();
    }
}
