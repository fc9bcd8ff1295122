//! Quotas (how much, how often, which algorithm) and limits (a named quota).
//!
//! # Burst sizes
//!
//! A GCRA quota of `n` per `period` grants one unit every `period / n` and lets up to `burst`
//! units be spent at once (default `burst = n`). `Quota::per_minute(60)` therefore allows 60
//! requests in a burst, then one per second. `Quota::per_minute(60).with_burst(5)` allows 5 at
//! once, then one per second: smoother traffic for the same long-run rate.
//!
//! Fixed and sliding windows have no separate burst: up to `n` in a window.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::ratelimit::{Limit, Quota};
//!
//! let login = Limit::new("login", Quota::fixed_window(10, Duration::from_secs(15 * 60)))?;
//! let api = Limit::new("api", Quota::per_second(50).with_burst(200))?;
//! assert_eq!(api.quota().burst(), 200);
//! # let _ = login;
//! # Ok::<(), tollgate::Error>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::algorithm::Spec;
use crate::clock::duration_to_nanos;
use crate::error::{Error, Result};

/// Longest limit name, in bytes.
pub const MAX_LIMIT_NAME_LEN: usize = 64;
/// Longest subject, in bytes.
pub const MAX_SUBJECT_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Algorithm {
    Gcra,
    FixedWindow,
    SlidingWindow,
}

/// How much may be spent, how fast, and by which algorithm. Validated by [`Limit::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    algorithm: Algorithm,
    count: u32,
    period: Duration,
    burst: Option<u32>,
}

impl Quota {
    /// GCRA: `n` per `period`, burst `n`.
    pub fn new(n: u32, period: Duration) -> Self {
        Self {
            algorithm: Algorithm::Gcra,
            count: n,
            period,
            burst: None,
        }
    }

    /// GCRA: `n` per second, burst `n`.
    pub fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// GCRA: `n` per minute, burst `n`.
    pub fn per_minute(n: u32) -> Self {
        Self::new(n, Duration::from_secs(60))
    }

    /// GCRA: `n` per hour, burst `n`.
    pub fn per_hour(n: u32) -> Self {
        Self::new(n, Duration::from_secs(3600))
    }

    /// `n` per aligned window of `period` (windows start at multiples of `period` since the Unix
    /// epoch): what "60 per minute" often means.
    pub fn fixed_window(n: u32, period: Duration) -> Self {
        Self {
            algorithm: Algorithm::FixedWindow,
            ..Self::new(n, period)
        }
    }

    /// `n` per sliding `period`, estimated from the current and previous aligned windows' counts
    /// (the previous one weighted by how much of it the sliding period still covers).
    pub fn sliding_window(n: u32, period: Duration) -> Self {
        Self {
            algorithm: Algorithm::SlidingWindow,
            ..Self::new(n, period)
        }
    }

    /// Sets the GCRA burst: how much may be spent at once. GCRA only; [`Limit::new`] refuses it on
    /// a window quota.
    #[must_use]
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Units granted per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The most that can be spent at once: the burst for GCRA, `n` for windows.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.count)
    }

    pub(crate) fn spec(&self) -> Result<Spec> {
        let invalid = |what: &str| Err(Error::InvalidArgument(format!("invalid quota: {what}")));
        if self.count == 0 {
            return invalid("the count must be at least 1");
        }
        let period = duration_to_nanos(self.period);
        if period == 0 {
            return invalid("the period must be longer than zero");
        }
        let limit = u64::from(self.count);
        match self.algorithm {
            Algorithm::Gcra => {
                let burst = u64::from(self.burst());
                if burst == 0 {
                    return invalid("the burst must be at least 1");
                }
                let interval = period / limit;
                if interval == 0 {
                    return invalid("more than one unit per nanosecond");
                }
                if interval.checked_mul(burst).is_none() {
                    return invalid("burst × interval exceeds 584 years");
                }
                Ok(Spec::Gcra { interval, burst })
            }
            Algorithm::FixedWindow | Algorithm::SlidingWindow if self.burst.is_some() => {
                invalid("with_burst applies to GCRA quotas only")
            }
            Algorithm::FixedWindow => Ok(Spec::FixedWindow { limit, period }),
            Algorithm::SlidingWindow => Ok(Spec::SlidingWindow { limit, period }),
        }
    }
}

/// A quota as plain values, for a shared store's protocol (`engine::shared`): the algorithm
/// (0 GCRA, 1 fixed window, 2 sliding window), the count, the period in nanoseconds, the burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct QuotaParts {
    pub algorithm: u8,
    pub count: u32,
    pub period_nanos: u64,
    pub burst: Option<u32>,
}

impl Quota {
    pub(crate) fn parts(&self) -> QuotaParts {
        QuotaParts {
            algorithm: match self.algorithm {
                Algorithm::Gcra => 0,
                Algorithm::FixedWindow => 1,
                Algorithm::SlidingWindow => 2,
            },
            count: self.count,
            period_nanos: u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX),
            burst: self.burst,
        }
    }

    /// The quota `parts` describe (checked by [`Limit::new`] like any other).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown algorithm.
    pub(crate) fn from_parts(parts: QuotaParts) -> Result<Quota> {
        let algorithm = match parts.algorithm {
            0 => Algorithm::Gcra,
            1 => Algorithm::FixedWindow,
            2 => Algorithm::SlidingWindow,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown rate algorithm {other}"
                )));
            }
        };
        Ok(Quota {
            algorithm,
            count: parts.count,
            period: Duration::from_nanos(parts.period_nanos),
            burst: parts.burst,
        })
    }
}

/// A named, validated quota. The name namespaces the counters: two limits with different names
/// count separately for the same subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    name: Arc<str>,
    quota: Quota,
    pub(crate) spec: Spec,
}

impl Limit {
    /// A limit called `name` enforcing `quota`.
    ///
    /// Names are 1 to 64 characters of `A–Z a–z 0–9 _ - . :` (they appear in headers and logs).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad name, a zero count, burst or period, a burst on a window
    /// quota, or a rate above one unit per nanosecond.
    pub fn new(name: &str, quota: Quota) -> Result<Limit> {
        if name.is_empty() || name.len() > MAX_LIMIT_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "limit names are 1 to {MAX_LIMIT_NAME_LEN} bytes; got {}",
                name.len()
            )));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
        {
            return Err(Error::InvalidArgument(format!(
                "limit names use A-Z a-z 0-9 _ - . : only; found {bad:?}"
            )));
        }
        Ok(Limit {
            name: Arc::from(name),
            spec: quota.spec()?,
            quota,
        })
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit's quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_quotas_and_names_are_typed_errors() {
        let second = Duration::from_secs(1);
        for quota in [
            Quota::per_second(0),
            Quota::new(1, Duration::ZERO),
            Quota::per_second(1).with_burst(0),
            Quota::fixed_window(5, second).with_burst(2),
            Quota::sliding_window(0, second),
            Quota::new(10, Duration::from_nanos(5)),
        ] {
            assert!(
                matches!(Limit::new("ok", quota), Err(Error::InvalidArgument(_))),
                "{quota:?}"
            );
        }
        for name in ["", "has space", "ü", &"n".repeat(65)] {
            assert!(matches!(
                Limit::new(name, Quota::per_second(1)),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(Limit::new("api:v1.read-write_x", Quota::per_second(1)).is_ok());
    }

    #[test]
    fn gcra_spec_from_rate_and_burst() {
        let limit = Limit::new("a", Quota::per_minute(60).with_burst(5)).unwrap();
        assert_eq!(
            limit.spec,
            Spec::Gcra {
                interval: 1_000_000_000,
                burst: 5
            }
        );
    }
}
