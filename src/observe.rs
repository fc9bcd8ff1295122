//! Observability hooks: `tracing` events (feature `tracing`) and `metrics` counters and histograms
//! (feature `metrics`). With neither feature every function here is empty and compiles away.
//!
//! Keys appear only as the first 8 bytes of their digest, in hex (`key = "36916e7af59c8b1a"`);
//! raw keys and subjects never do. Metric names (all prefixed `tollgate_`):
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `tollgate_begins_total` | counter | `outcome` = `acquired`, `takeover`, `replay`, `in_flight`, `mismatch` | `begin` answers |
//! | `tollgate_resolutions_total` | counter | `kind` = `complete`, `fail`, `release`, `extend`, `checkpoint`; `result` = `ok`, `fenced` | lease owners' writes; `fenced` is a stale owner refused |
//! | `tollgate_rate_checks_total` | counter | `limit`, `decision` = `allowed`, `denied` | rate decisions (by the deciding limit) |
//! | `tollgate_rate_shadow_denials_total` | counter | `limit` | requests a `RateLimitLayer` in shadow mode let through that its limits denied |
//! | `tollgate_http_leases_lost_total` | counter | | running handlers whose lease an `IdempotencyLayer` found taken over (their responses are not stored) |
//! | `tollgate_http_lease_extension_failures_total` | counter | | failed extensions of a running handler's lease (tried again a third of a lease later) |
//! | `tollgate_http_responses_not_recorded_total` | counter | | handler responses an `IdempotencyLayer` could not store (the store failed) |
//! | `tollgate_http_store_errors_total` | counter | `status` = `503`, `500` | requests a tower layer answered with a store failure (the cause is in the `store_error` event, never in the body) |
//! | `tollgate_rate_unavailable_total` | counter | `decision` = `allowed` (fail open), `denied` (fail closed) | requests a `RateLimitLayer` decided without its counters, which could not be reached |
//! | `tollgate_degraded` | gauge | | 1 while the store refuses writes and serves reads only, 0 once it writes again |
//! | `tollgate_degraded_total` | counter | | times the store entered the degraded state |
//! | `tollgate_redis_data_lost_total` | counter | `scope` = `bucket`, `namespace` | rate counters on Redis found lost (a restart without persistence, a flush, a failover to an empty replica) |
//! | `tollgate_writer_batch_size` | histogram | | commands per writer batch |
//! | `tollgate_commit_seconds` | histogram | | duration of each durable commit (including its fsync) |
//! | `tollgate_removed_records_total` | counter | | expired records removed by sweeps |
//! | `tollgate_removed_rate_states_total` | counter | | idle rate counters removed by sweeps |
//!
//! Events (target `tollgate`): `begin` (debug; info for a takeover), `resolution` (debug; warn when
//! fenced), `rate_denied` (debug), `rate_shadow_denied` (info), `rate_unavailable` (warn), `commit` (trace, inside a `writer_batch` span), `sweep_step`
//! (debug when it removed something), `poisoned` (error: a write failed), `degraded` (error: writes refused, reads go on), `recovered` (warn: writing again), `redis_data_lost` (error), and
//! from the tower layers `lease_lost` (error), `lease_extension_failed` (warn),
//! `response_not_recorded` (error), `store_error` (warn).

use crate::idempotency::Digest;

/// What a `begin` answered.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BeginOutcome {
    Acquired,
    Takeover,
    Replay,
    InFlight,
    Mismatch,
}

impl BeginOutcome {
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    fn name(self) -> &'static str {
        match self {
            BeginOutcome::Acquired => "acquired",
            BeginOutcome::Takeover => "takeover",
            BeginOutcome::Replay => "replay",
            BeginOutcome::InFlight => "in_flight",
            BeginOutcome::Mismatch => "mismatch",
        }
    }
}

#[cfg(feature = "tracing")]
fn prefix(digest: &Digest) -> String {
    digest.short_hex(8)
}

/// A `begin` answered `outcome` for the record `digest`.
#[allow(unused_variables)]
pub(crate) fn begin(digest: &Digest, outcome: BeginOutcome, attempt: u32) {
    #[cfg(feature = "tracing")]
    {
        if matches!(outcome, BeginOutcome::Takeover) {
            tracing::info!(target: "tollgate", key = %prefix(digest), attempt, "takeover: a new owner recovers an abandoned execution");
        } else {
            tracing::debug!(target: "tollgate", key = %prefix(digest), outcome = outcome.name(), "begin");
        }
    }
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_begins_total", "outcome" => outcome.name()).increment(1);
}

/// A lease owner's write (`kind`) was applied, or refused because the lease was taken over.
#[allow(unused_variables)]
pub(crate) fn resolution(digest: &Digest, kind: &'static str, token: u64, fenced: bool) {
    #[cfg(feature = "tracing")]
    {
        if fenced {
            tracing::warn!(target: "tollgate", key = %prefix(digest), kind, token, "fenced: a stale lease owner's write was refused");
        } else {
            tracing::debug!(target: "tollgate", key = %prefix(digest), kind, token, "resolution");
        }
    }
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tollgate_resolutions_total",
        "kind" => kind,
        "result" => if fenced { "fenced" } else { "ok" }
    )
    .increment(1);
}

/// A rate decision (counted under its deciding limit). Reads the decision only when a feature
/// is on: this runs on every check.
#[allow(unused_variables)]
pub(crate) fn rate(decision: &crate::ratelimit::Decision) {
    #[cfg(feature = "tracing")]
    if !decision.allowed() {
        tracing::debug!(target: "tollgate", limit = decision.policy(), "rate_denied");
    }
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tollgate_rate_checks_total",
        "limit" => decision.policy().to_owned(),
        "decision" => if decision.allowed() { "allowed" } else { "denied" }
    )
    .increment(1);
}

/// A request that the limits would have denied passed on, in shadow mode (the tower layer).
#[cfg(feature = "tower")]
#[allow(unused_variables)]
pub(crate) fn rate_shadow_denied(decision: &crate::ratelimit::Decision) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "tollgate", limit = decision.policy(), "rate_shadow_denied: a request over the limit passed (shadow mode)");
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tollgate_rate_shadow_denials_total",
        "limit" => decision.policy().to_owned()
    )
    .increment(1);
}

/// A `RateLimitLayer` could not reach its counters (`error`) and let the request through
/// (`open`) or refused it.
#[cfg(feature = "tower")]
#[allow(unused_variables)]
pub(crate) fn rate_unavailable(open: bool, error: &crate::Error) {
    let decision = if open { "allowed" } else { "denied" };
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tollgate", decision, error = %error, "rate_unavailable: the rate counters could not be reached");
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_rate_unavailable_total", "decision" => decision).increment(1);
}

/// An `IdempotencyLayer` found the lease of a running handler lost (taken over after it lapsed):
/// the handler's response is not stored.
#[cfg(feature = "tower")]
#[allow(unused_variables)]
pub(crate) fn lease_lost_in_handler(digest: &Digest) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tollgate", key = %prefix(digest), "lease_lost: a running handler's lease was taken over; its response is not stored");
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_http_leases_lost_total").increment(1);
}

/// An `IdempotencyLayer` could not extend a running handler's lease (it tries again).
#[cfg(feature = "tower")]
#[allow(unused_variables)]
pub(crate) fn lease_extension_failed(error: &crate::Error) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tollgate", error = %error, "lease_extension_failed: a running handler's lease could not be extended");
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_http_lease_extension_failures_total").increment(1);
}

/// An `IdempotencyLayer` could not store a handler's response (the key stays RUNNING until its
/// lease lapses; a retry then is a recovery).
#[cfg(feature = "tower")]
#[allow(unused_variables)]
pub(crate) fn response_not_recorded(error: &crate::Error) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tollgate", error = %error, "response_not_recorded: a handler's response could not be stored");
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_http_responses_not_recorded_total").increment(1);
}

/// A tower layer answered a request with a store failure (`temporary`: 503, else 500); the
/// client's body names none of it, so the cause is told here.
#[cfg(feature = "tower")]
#[allow(unused_variables)]
pub(crate) fn store_error_answered(what: &str, temporary: bool, error: &crate::Error) {
    let status = if temporary { "503" } else { "500" };
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tollgate", what, status, error = %error, "store_error: a request was answered with a store failure");
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_http_store_errors_total", "status" => status).increment(1);
}

/// The embedded store stopped writing and serves reads only (`reason`), until it can write again.
#[allow(unused_variables)]
pub(crate) fn degraded(reason: &str) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tollgate", reason, "degraded: writes are refused, reads go on");
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("tollgate_degraded_total").increment(1);
        metrics::gauge!("tollgate_degraded").set(1.0);
    }
}

/// The embedded store opened its file for writing again after being degraded.
pub(crate) fn recovered() {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "tollgate", "recovered: the store writes again");
    #[cfg(feature = "metrics")]
    metrics::gauge!("tollgate_degraded").set(0.0);
}

/// Rate counters on Redis found a bucket's data lost (its sentinel gone): the crash policy
/// applies to it.
#[cfg(feature = "redis")]
#[allow(unused_variables)]
pub(crate) fn redis_bucket_lost(namespace: &str) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tollgate", namespace, "redis_data_lost: a bucket of rate counters was lost in Redis; the crash policy applies");
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_redis_data_lost_total", "scope" => "bucket").increment(1);
}

/// Rate counters on Redis found their namespace's secret replaced (the namespace was lost and
/// created again): the store adopted the new one, and the crash policy applies to every bucket.
#[cfg(feature = "redis")]
#[allow(unused_variables)]
pub(crate) fn redis_namespace_lost(namespace: &str) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tollgate", namespace, "redis_data_lost: the Redis namespace was lost and created again; the crash policy applies to every counter");
    #[cfg(feature = "metrics")]
    metrics::counter!("tollgate_redis_data_lost_total", "scope" => "namespace").increment(1);
}

/// A span around one writer batch (tracing only).
pub(crate) struct BatchSpan {
    #[cfg(feature = "tracing")]
    _span: tracing::span::EnteredSpan,
}

/// Enters the span of a writer batch of `size` commands.
#[allow(unused_variables)]
pub(crate) fn batch(size: usize) -> BatchSpan {
    BatchSpan {
        #[cfg(feature = "tracing")]
        _span: tracing::trace_span!(target: "tollgate", "writer_batch", size).entered(),
    }
}

/// A batch of `size` commands committed `writes` changes in `elapsed`.
#[allow(unused_variables)]
pub(crate) fn commit(size: usize, writes: u64, elapsed: std::time::Duration) {
    #[cfg(feature = "tracing")]
    tracing::trace!(target: "tollgate", size, writes, micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), "commit");
    #[cfg(feature = "metrics")]
    {
        #[allow(clippy::cast_precision_loss)]
        metrics::histogram!("tollgate_writer_batch_size").record(size as f64);
        metrics::histogram!("tollgate_commit_seconds").record(elapsed.as_secs_f64());
    }
}

/// A sweep step removed `records` records and `rate_states` idle counters.
#[allow(unused_variables)]
pub(crate) fn sweep_step(records: u64, rate_states: u64) {
    #[cfg(feature = "tracing")]
    if records + rate_states > 0 {
        tracing::debug!(target: "tollgate", records, rate_states, "sweep_step");
    }
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("tollgate_removed_records_total").increment(records);
        metrics::counter!("tollgate_removed_rate_states_total").increment(rate_states);
    }
}

/// The store was poisoned by `error`.
#[allow(unused_variables)]
pub(crate) fn poisoned(error: &crate::Error) {
    #[cfg(feature = "tracing")]
    tracing::error!(target: "tollgate", %error, "poisoned: a storage error stopped the writer; reopen the store");
}
