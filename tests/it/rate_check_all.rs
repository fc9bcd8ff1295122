//! `check_all` charges every limit or none, and reports the most restrictive one, on every
//! engine.

use crate::fixture;

use std::time::Duration;

use fixture::Fixture;
use tollgate::ratelimit::{Limit, Quota, RateDurability};

const DAY: Duration = Duration::from_secs(86_400);

on_every_counter_engine! {
    fn a_denial_by_any_limit_charges_none_of_them_in_either_mode(fixture) {
        let modes: &[RateDurability] = if fixture.immediate_only() {
            &[RateDurability::Immediate]
        } else {
            &[RateDurability::Immediate, RateDurability::default()]
        };
        for &durability in modes {
            // A fresh store (and fresh counters) for each mode.
            let fixture = fixture.fresh("check_all_mode");
            run_denial(&fixture, durability);
        }
    }
}

fn run_denial(fixture: &Fixture, durability: RateDurability) {
    {
        let store = fixture
            .open_with(fixture.builder().rate_durability(durability))
            .unwrap();
        let per_user = Limit::new("user", Quota::per_hour(100)).unwrap();
        // A day-long window: on PostgreSQL's real clock the test cannot straddle its boundary.
        let per_ip = Limit::new("ip", Quota::fixed_window(3, DAY)).unwrap();
        let global = Limit::new(
            "global",
            Quota::sliding_window(1000, Duration::from_secs(60)),
        )
        .unwrap();
        let checks = [
            (&per_user, "user:1"),
            (&per_ip, "10.0.0.1"),
            (&global, "all"),
        ];

        let first = store.check_all(&checks, 2).unwrap();
        assert!(first.allowed());
        assert_eq!((first.policy(), first.remaining()), ("ip", 1));

        // The ip limit has 1 left; a cost of 2 is denied, and nothing is charged anywhere.
        let denied = store.check_all(&checks, 2).unwrap();
        assert!(!denied.allowed());
        assert_eq!(denied.policy(), "ip");
        // The ip window's end: exactly a window away on the fixture's clock; on PostgreSQL's
        // clock, wherever in the window the test runs.
        let wait = denied.retry_after().unwrap();
        if fixture.is_postgres() {
            assert!(wait > Duration::ZERO && wait <= DAY, "{wait:?}");
        } else {
            // Windows are aligned to multiples of their length; the fixture's clock starts
            // 28,800 s into a day.
            assert_eq!(wait, DAY - Duration::from_secs(1_800_000_000 % 86_400));
        }
        assert_eq!(
            store.peek(&per_user, "user:1").unwrap().remaining(),
            98,
            "{durability:?}"
        );
        assert_eq!(store.peek(&per_ip, "10.0.0.1").unwrap().remaining(), 1);
        assert_eq!(store.peek(&global, "all").unwrap().remaining(), 998);

        // A cost that fits everywhere charges everywhere.
        assert!(store.check_all(&checks, 1).unwrap().allowed());
        assert_eq!(store.peek(&per_user, "user:1").unwrap().remaining(), 97);
        assert_eq!(store.peek(&per_ip, "10.0.0.1").unwrap().remaining(), 0);
        assert_eq!(store.peek(&global, "all").unwrap().remaining(), 997);
        store.close().unwrap();
    }
}

on_every_counter_engine! {
    fn among_denials_the_longest_wait_decides(fixture) {
        among_denials(&fixture);
    }
}

fn among_denials(fixture: &Fixture) {
    let store = fixture.open();
    let short = Limit::new("short", Quota::per_second(1)).unwrap();
    let long = Limit::new("long", Quota::per_hour(1)).unwrap();
    assert!(
        store
            .check_all(&[(&short, "s"), (&long, "s")], 1)
            .unwrap()
            .allowed()
    );
    let denied = store.check_all(&[(&short, "s"), (&long, "s")], 1).unwrap();
    assert_eq!((denied.allowed(), denied.policy()), (false, "long"));
    fixture.assert_remaining(denied.retry_after().unwrap(), Duration::from_secs(3600));
    assert_eq!(denied.limit(), 1);
}
