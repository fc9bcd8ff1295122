//! What the plain-harness benches share.

use std::time::Duration;

/// How long each configuration runs: `TOLLGATE_BENCH_SECONDS`, default 3.
pub fn seconds() -> Duration {
    let secs = std::env::var("TOLLGATE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}
