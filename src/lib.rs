//! # tollgate
//!
//! Embedded, crash-safe idempotency records and rate counters for Rust servers, on
//! [redb](https://docs.rs/redb); and the same [`Store`] on PostgreSQL for many servers (feature
//! `postgres`, [`StoreBuilder::open_postgres`]).
//!
//! APIs that charge cards or create orders get retried: by mobile apps on flaky networks, by
//! double-clicks, by proxies. An `Idempotency-Key` makes a retry safe only if the server remembers
//! what it did with that key, across restarts and crashes. tollgate keeps that memory in a local
//! file, with every decision durable before it is returned:
//!
//! - an explicit NEW → RUNNING → COMPLETED / FAILED state machine per key;
//! - fenced leases: a request that takes over from a crashed or stalled owner gets a higher token,
//!   is told it is a recovery, and receives the last checkpoint; the stale owner's writes fail;
//! - request fingerprints, so a key reused for a different request is refused, not replayed;
//! - TTLs with an expiry index, and a single writer that group-commits, so concurrent requests
//!   share one fsync.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tollgate::Store;
//! use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
//!
//! # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
//! let store = Store::builder()
//!     .record_ttl(Duration::from_secs(24 * 3600))
//!     .lease_ttl(Duration::from_secs(30))
//!     .open(dir.path().join("tollgate.redb"))?;
//!
//! let key = IdempotencyKey::new("customer:cus_42", "a7c1f0e2-charge")?;
//! let request = Fingerprint::request()
//!     .method("POST")
//!     .path("/v1/charges")
//!     .body(br#"{"amount":1000,"currency":"eur"}"#)
//!     .finish();
//!
//! let response = match store.begin(&key, &request)? {
//!     Begin::Acquired(lease) => {
//!         // Execute the side effect exactly here, then record the outcome durably.
//!         let response = StoredResponse::new(201, br#"{"id":"ch_1"}"#.to_vec())
//!             .with_header("content-type", "application/json");
//!         lease.complete(response.clone())?;
//!         response
//!     }
//!     Begin::Replay(replay) => replay.into_response(),
//!     Begin::InFlight { retry_after } => StoredResponse::new(409, format!("retry in {retry_after:?}")),
//!     Begin::Mismatch => StoredResponse::new(422, b"key reused for another request".to_vec()),
//! };
//! assert_eq!(response.status, 201);
//!
//! // A retry of the same request gets the same response, without executing again.
//! assert!(matches!(store.begin(&key, &request)?, Begin::Replay(r) if r.response().status == 201));
//! store.close()?;
//! # Ok::<(), tollgate::Error>(())
//! ```
//!
//! # Crate features
//!
//! - `test-support` (off; not a stable API): `tollgate::testing`, a simulated disk that can lose
//!   power at any sync or fail I/O on cue, the reference model and the fuzz targets' logic, and
//!   `StoreBuilder::open_simulated`. tollgate's own tests, power-loss harness and fuzz targets
//!   use it.
//!
//! - `tower` (off): [`tower::IdempotencyLayer`] and [`tower::RateLimitLayer`] for axum, hyper
//!   and any tower stack (brings `http`, `http-body`, `tokio`'s runtime handle and the tower traits).
//!
//! - `tracing` (off): events and spans for begins, takeovers, fencing refusals, rate denials,
//!   writer batches, sweeps and poisoning, with keys shown only as a digest prefix.
//! - `metrics` (off): counters and histograms through the `metrics` facade; the names are listed
//!   in `docs/DESIGN.md` ("Observability").
//! - `cli` (off): the `tollgate` command-line tool (`stats`, `inspect`, `list`, `compact`,
//!   `check`, `reclaim`).
//! - `postgres` (off): [`StoreBuilder::open_postgres`], `postgres_schema`, `node_id`,
//!   `postgres_pool_size`: records and counters in a PostgreSQL schema shared by many nodes
//!   (brings the synchronous `postgres` client and rustls). Calls block on the network; from
//!   async code, call them in `spawn_blocking`.
//! - `redis` (off): [`StoreBuilder::rate_counters_redis`], `redis_namespace`, `redis_timeout`,
//!   `redis_client_time`, `redis_denial_cache`: the rate counters on Redis or a Redis Cluster
//!   (one Lua script call per check, pipelined), beside records on either engine (brings the
//!   synchronous `redis` client). With `test-support`, `tollgate::testing::redis` starts
//!   throwaway servers and clusters for tests.
//!
//! # Durability
//!
//! `begin` (when it creates or takes over a record) and every lease resolution return only after
//! their write is durable: on a file store, appended to the store's write-ahead log
//! ([`Store::log_path`], beside the file) and synced; a background thread then copies the changes
//! into the redb file in large transactions, and reads see them at once. The two files are one
//! store: copy, move and delete them together. In-memory stores and
//! [`StoreBuilder::write_ahead_log`]`(false)` commit each batch to redb with an fsync instead.
//! See `docs/DESIGN.md` for the invariants and the durability rules, and `docs/FORMAT.md` for
//! the on-disk layout.
//!
//! ```
//! # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
//! # let path = dir.path().join("orders.redb");
//! use tollgate::Store;
//! use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
//!
//! let store = Store::builder()
//!     .log_memory(32 * 1024 * 1024) // up to 32 MiB of changes may wait for the redb file
//!     .open(&path)?;
//! let key = IdempotencyKey::new("orders", "retry-7")?;
//! if let Begin::Acquired(lease) = store.begin(&key, &Fingerprint::of(b"POST /orders"))? {
//!     lease.complete(StoredResponse::new(201, b"order 7".to_vec()))?; // durable in the log
//! }
//! assert!(Store::log_path(&path).exists());
//! store.close()?; // applies the log into the file first
//! # Ok::<(), tollgate::Error>(())
//! ```

#![forbid(unsafe_code)]
// On docs.rs (which builds with every feature and `--cfg docsrs`), each feature-gated item says
// which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![warn(
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
// Names like `store::StoreBuilder` read better than the alternatives; `#[must_use]` on every
// getter is noise (redb allows the same two).
#![allow(clippy::module_name_repetitions, clippy::must_use_candidate)]

mod clock;
mod engine;
mod error;
pub mod idempotency;
mod observe;
pub mod ratelimit;
mod status;
mod store;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use engine::postgres::{
    CALL_TIMEOUT as POSTGRES_CALL_TIMEOUT, DEFAULT_POOL_SIZE as DEFAULT_POSTGRES_POOL_SIZE,
    DEFAULT_SCHEMA as DEFAULT_POSTGRES_SCHEMA, DEFAULT_WRITERS as DEFAULT_POSTGRES_WRITERS,
};
pub use error::{Error, Result, StorageError};
pub use status::{CompactionReport, DegradedCause, Health, Stats};
pub use store::{
    BeginOptions, DEFAULT_CACHE_SIZE, DEFAULT_COMPACTION_BATCH, DEFAULT_COMPACTION_INTERVAL,
    DEFAULT_LEASE_TTL, DEFAULT_LOG_MEMORY, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RECORD_TTL,
    DEFAULT_REDIS_TIMEOUT, DEFAULT_REPLAY_CACHE_SIZE, HealthWatch, MAX_RESPONSE_BYTES_LIMIT,
    Reclaimed, Store, StoreBuilder,
};

// The README's quickstart runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
