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
//! memory, within reservations already on disk ([`CrashPolicy::BoundedLoss`], the default): a
//! crash mints no quota and costs a subject charged in its last second at most an eighth of its
//! burst. See `docs/DESIGN.md`.

mod algorithm;
pub(crate) mod charge;
pub(crate) mod crash_policy;
mod decision;
mod key;
mod quota;
mod reservation;

use std::time::Duration;

#[cfg(feature = "redis")]
pub(crate) use algorithm::Evaluation;
#[cfg(all(test, feature = "redis"))]
pub(crate) use algorithm::exact_idle_at;
pub(crate) use algorithm::{RateState, Spec, idle_at, is_idle, most_restrictive};
pub use decision::Decision;
pub(crate) use decision::PolicyName;
pub(crate) use key::{CounterKey, CounterKeys, check_subject};
pub(crate) use quota::QuotaParts;
pub use quota::{Limit, MAX_LIMIT_NAME_LEN, MAX_SUBJECT_LEN, Quota};
pub(crate) use reservation::{covers, reservation_units, reserve};

/// When a charging decision reaches the disk. Set with
/// [`StoreBuilder::rate_durability`](crate::StoreBuilder::rate_durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDurability {
    /// Every charging decision (and refund, and reset) is durable before it is returned, through
    /// the group-commit writer: concurrent checks share fsyncs.
    Immediate,
    /// Decisions come from memory. Under the default [`CrashPolicy::BoundedLoss`], a counter's
    /// charges are answered from memory while a reservation already on disk covers them (one
    /// group commit per eighth of its burst); under the other policies, changed counters are
    /// written at least every `max_delay`, and [`CrashPolicy`] says how a crash's lost changes
    /// are accounted for.
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
///
/// | policy | quota minted by a crash | quota lost by a crash | fsync on a check's path |
/// |---|---|---|---|
/// | `BoundedLoss` (default) | none | at most `max(1, burst / 8)` units, only for subjects charged in the last second | once per `burst / 8` units of a busy subject; at each charge of a subject idle for 0.4 s |
/// | `DrainOnRecovery` | none | everything, for every subject, for up to one window | never |
/// | `TrustLastFlush` | up to `max_delay` of decisions | none | never |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrashPolicy {
    /// The default: quota leasing, as Sentry Relay's quotas do. A counter's charges are answered
    /// from memory only while a reservation already durable on disk covers them: a charge that
    /// would go past it first writes the next one (the charge's new state plus
    /// `max(1, burst / 8)` units, in one group commit shared with every other caller waiting),
    /// and a counter not charged for 0.4 s has its true state written back. After a crash,
    /// - no subject gets more than its quota in any window: the disk is at least as spent as
    ///   memory was;
    /// - a subject never seen, or not charged in the last second, has its full remaining quota
    ///   at once;
    /// - a subject charged in the last second loses at most `max(1, burst / 8)` units (the
    ///   unused part of its reservation).
    ///
    /// On Redis counters (which Redis decides one by one, with no reservations), a loss of
    /// Redis' data is met as with `DrainOnRecovery`.
    #[default]
    BoundedLoss,
    /// Every counter, whether on disk or never seen, is treated as fully spent at the moment of
    /// recovery (the reopen), and refills from there at its normal rate: no subject gets more
    /// than its quota across the crash, and no check ever waits for a write, but for up to one
    /// window (or one burst refill) after a crash every subject, even one never seen, is denied.
    /// The default before `BoundedLoss`; for limits where a lockout after a crash is acceptable
    /// and a check must never wait for a disk.
    DrainOnRecovery,
    /// Trust the last flush: counters resume as they were written, and decisions made in the
    /// unflushed window (at most `max_delay`) are forgotten, so a subject may get up to that much
    /// extra quota once per crash.
    TrustLastFlush,
}
