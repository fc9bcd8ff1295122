//! Golden header rendering from real decisions: the IETF draft fields, the legacy fields, and
//! Retry-After on a denial, with seconds rounded up.

use std::time::{Duration, SystemTime};

use tollgate::ratelimit::{Limit, Quota};
use tollgate::{ManualClock, Store};

#[test]
fn gcra_allow_and_deny_headers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let store = Store::builder()
        .clock(clock.clone())
        .open(dir.path().join("h.redb"))
        .unwrap();
    // 2 per 3 seconds: one unit every 1.5 s, burst 2, full refill in 3 s.
    let limit = Limit::new("search", Quota::new(2, Duration::from_secs(3))).unwrap();
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
}
