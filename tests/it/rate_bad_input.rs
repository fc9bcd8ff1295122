//! Bad rate-limit input is a typed error, never a panic and never a silent forever-deny.

use std::time::Duration;

use tollgate::ratelimit::{Limit, Quota, RateDurability};
use tollgate::{Error, Store};

#[test]
fn bad_limits_subjects_costs_and_settings_are_typed_errors() {
    assert!(matches!(
        Limit::new("zero", Quota::per_second(0)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Limit::new("p", Quota::fixed_window(5, Duration::ZERO)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Limit::new(
            "w",
            Quota::sliding_window(5, Duration::from_secs(1)).with_burst(9)
        ),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Limit::new("", Quota::per_second(1)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Limit::new(&"x".repeat(65), Quota::per_second(1)),
        Err(Error::InvalidArgument(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::builder()
            .rate_durability(RateDurability::Batched {
                max_delay: Duration::ZERO
            })
            .open(dir.path().join("x.redb")),
        Err(Error::InvalidArgument(_))
    ));
    let store = Store::open(dir.path().join("rates.redb")).unwrap();
    let limit = Limit::new("api", Quota::per_second(10).with_burst(3)).unwrap();
    assert!(matches!(
        store.check_n(&limit, "s", 4),
        Err(Error::CostTooLarge { cost: 4, limit: 3 })
    ));
    assert!(matches!(
        store.check(&limit, ""),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.check(&limit, &"s".repeat(513)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.check_all(&[], 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.check_all(&[(&limit, "s"), (&limit, "s")], 1),
        Err(Error::InvalidArgument(_))
    ));
    // None of the refused calls charged anything.
    assert_eq!(store.peek(&limit, "s").unwrap().remaining(), 3);
    // Extreme but valid values saturate instead of overflowing.
    let huge = Limit::new(
        "huge",
        Quota::new(u32::MAX, Duration::from_secs(u64::MAX / 4)),
    )
    .unwrap();
    assert!(store.check_n(&huge, "s", u32::MAX).unwrap().allowed());
    assert!(store.refund(&huge, "s", u32::MAX).unwrap().allowed());
    store.close().unwrap();
}
