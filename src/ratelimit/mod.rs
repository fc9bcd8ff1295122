//! Durable rate counters: GCRA, fixed and sliding windows, charged all-or-nothing across limits.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::Store;
//! use tollgate::ratelimit::{Limit, Quota};
//!
//! # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
//! let store = Store::open(dir.path().join("tollgate.redb"))?;
//! let login = Limit::new("login", Quota::fixed_window(10, Duration::from_secs(15 * 60)))?;
//! let per_ip = Limit::new("ip", Quota::per_second(20))?;
//!
//! // Both limits are charged, or neither.
//! let decision = store.check_all(&[(&login, "user:42"), (&per_ip, "203.0.113.9")], 1)?;
//! assert!(decision.allowed());
//! assert_eq!(decision.policy(), "login"); // the most restrictive: 9 left of 10
//! for (name, value) in decision.headers() {
//!     println!("{name}: {value}");
//! }
//! store.close()?;
//! # Ok::<(), tollgate::Error>(())
//! ```
//!
//! Counters survive restarts. With [`RateDurability::Batched`] (the default) decisions come from
//! memory and reach the disk within `max_delay`; after a crash, [`CrashPolicy`] decides how the
//! decisions lost with the unflushed window are accounted for. See `docs/DESIGN.md`.

mod algorithm;
pub(crate) mod charge;
mod decision;
mod key;
mod quota;

use std::time::Duration;

#[cfg(feature = "redis")]
pub(crate) use algorithm::Evaluation;
pub(crate) use algorithm::{RateState, Spec, idle_at, is_idle, most_restrictive};
pub use decision::Decision;
pub(crate) use decision::PolicyName;
pub(crate) use key::{CounterKey, CounterKeys, check_subject};
pub use quota::{Limit, MAX_LIMIT_NAME_LEN, MAX_SUBJECT_LEN, Quota};

/// When a charging decision reaches the disk. Set with
/// [`StoreBuilder::rate_durability`](crate::StoreBuilder::rate_durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDurability {
    /// Every charging decision (and refund, and reset) is durable before it is returned, through
    /// the group-commit writer: concurrent checks share fsyncs.
    Immediate,
    /// Decisions come from memory; changed counters are written by the writer thread at least
    /// every `max_delay`. A crash loses at most the last `max_delay` of changes; [`CrashPolicy`]
    /// keeps that from minting quota.
    Batched {
        /// The longest a changed counter stays only in memory.
        max_delay: Duration,
    },
}

impl Default for RateDurability {
    /// `Batched { max_delay: 50 ms }`.
    fn default() -> Self {
        RateDurability::Batched {
            max_delay: Duration::from_millis(50),
        }
    }
}

/// How counters are treated after an unclean shutdown of a store that ran in
/// [`RateDurability::Batched`] mode (a crash, a kill, a power loss: any end without the final
/// flush of `close` or drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrashPolicy {
    /// The default. Every counter, whether on disk or never seen, is treated as fully spent at the
    /// moment of recovery (the reopen), and refills from there at its normal rate. This is the most
    /// restrictive state any lost decisions could have produced, so no subject gets more than its
    /// quota across the crash. The cost: for up to one window (or one burst refill) after a crash,
    /// subjects get less than their quota.
    #[default]
    DrainOnRecovery,
    /// Trust the last flush: counters resume as they were written, and decisions made in the
    /// unflushed window (at most `max_delay`) are forgotten, so a subject may get up to that much
    /// extra quota once per crash.
    TrustLastFlush,
}
