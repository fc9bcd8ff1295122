//! Golden header rendering from real decisions: the IETF draft fields, the legacy fields, and
//! Retry-After on a denial, with seconds rounded up. On every engine: on PostgreSQL the schema's
//! clock is stopped at the test's `ManualClock` before each check, so the decisions fall on the
//! same instants.

#[cfg(feature = "postgres")]
use crate::fixture;

use std::time::{Duration, SystemTime};

use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Clock, ManualClock, Store, StoreBuilder};

fn scenario(open: impl FnOnce(StoreBuilder) -> Store) {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let store = open(Store::builder().clock(clock.clone()));
    // The store's clock stands where the test's is (nothing to do on the embedded engine, whose
    // clock is the test's).
    let at = |store: &Store| store.set_database_clock_for_tests(clock.now()).unwrap();
    // 2 per 3 seconds: one unit every 1.5 s, burst 2, full refill in 3 s.
    let limit = Limit::new("search", Quota::new(2, Duration::from_secs(3))).unwrap();
    at(&store);
    let first = store.check(&limit, "k").unwrap();
    assert_eq!(
        first.headers(),
        vec![
            ("RateLimit-Policy", r#""search";q=2;w=3"#.to_owned()),
            ("RateLimit", r#""search";r=1;t=2"#.to_owned()),
            ("X-RateLimit-Limit", "2".to_owned()),
            ("X-RateLimit-Remaining", "1".to_owned()),
            ("X-RateLimit-Reset", "2".to_owned()),
        ]
    );
    store.check(&limit, "k").unwrap();
    clock.advance(Duration::from_millis(100));
    at(&store);
    let denied = store.check(&limit, "k").unwrap();
    assert_eq!(
        denied.headers(),
        vec![
            ("RateLimit-Policy", r#""search";q=2;w=3"#.to_owned()),
            ("RateLimit", r#""search";r=0;t=3"#.to_owned()),
            ("X-RateLimit-Limit", "2".to_owned()),
            ("X-RateLimit-Remaining", "0".to_owned()),
            ("X-RateLimit-Reset", "3".to_owned()),
            ("Retry-After", "2".to_owned()),
        ]
    );
    assert_eq!(denied.retry_after(), Some(Duration::from_millis(1400)));
    store.close().unwrap();
}

#[test]
fn gcra_allow_and_deny_headers() {
    let dir = tempfile::tempdir().unwrap();
    scenario(|builder| builder.open(dir.path().join("h.redb")).unwrap());
}

#[cfg(feature = "postgres")]
#[test]
fn gcra_allow_and_deny_headers_on_postgres() {
    let server = require_postgres!();
    let schema = fixture::postgres::unique_schema("rate_headers");
    scenario(|builder| {
        builder
            .postgres_schema(&schema)
            .open_postgres(&server.conn)
            .unwrap()
    });
}
