//! tower layers (feature `tower`): make any tower service, such as an axum `Router`, idempotent
//! under an `Idempotency-Key` and rate-limited, with the store's durable state behind both.
//!
//! ```text
//! Router::new()
//!     .route("/payments", post(create_payment))
//!     .layer(IdempotencyLayer::new(store.clone()))          // inner: runs second
//!     .layer(RateLimitLayer::new(store, [limit]).key(...))   // outer: runs first
//! ```
//!
//! Rate limiting runs first, as the payment APIs studied do: a 429 is never stored as the
//! outcome of an idempotent request. An answer memory can give (a Batched check of a counter in
//! memory, [`Store::try_check_all`]; a replay from the replay cache, [`Store::try_begin`]) is
//! given on the async worker; store calls that may wait on an fsync or a database run in
//! `tokio::task::spawn_blocking`, so the layers need a tokio runtime. Responses and refusals
//! follow draft-ietf-httpapi-idempotency-key-header and draft-ietf-httpapi-ratelimit-headers;
//! refusals carry an `application/problem+json` body (RFC 9457).
//!
//! | situation | answer |
//! |---|---|
//! | covered method without a key (when required), malformed key | 400 |
//! | a scope or a required subject found no identity | 401 (configurable), before any state |
//! | request body over the limit | 413, before any state |
//! | same key, same request, still running | 409 with `Retry-After: 1`, a poll hint (or wait, if configured) |
//! | same key, different request | 422 |
//! | same key, finished | the stored status, headers and body, plus `Idempotent-Replayed: true` |
//! | handler answered 5xx or panicked | the answer (500 for a panic); the key is released |
//! | rate limit exhausted | 429 with `Retry-After` and the RateLimit fields (shadow mode: passed on) |
//! | request costs more than a limit's burst | 429 without `Retry-After` |
//!
//! [`Store::try_check_all`]: crate::Store::try_check_all
//! [`Store::try_begin`]: crate::Store::try_begin

mod idempotency;
mod key_header;
mod problem;
mod rate_limit;

pub use idempotency::{
    DEFAULT_MAX_BODY_BYTES, HOP_BY_HOP, IDEMPOTENT_REPLAYED, Idempotency, IdempotencyContext,
    IdempotencyLayer, IntoScope,
};
pub use key_header::{IDEMPOTENCY_KEY, parse_idempotency_key};
pub use rate_limit::{GLOBAL_SUBJECT, RateLimit, RateLimitLayer, WhenUnavailable};

/// The inner service that `poll_ready` drove to readiness, for one call; a fresh clone takes its
/// place and waits for the next `poll_ready` (tower's rule for services used by spawned futures).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let fresh = inner.clone();
    std::mem::replace(inner, fresh)
}
