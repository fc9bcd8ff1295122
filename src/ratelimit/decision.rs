//! The answer to a rate check, and its HTTP header fields.
//!
//! [`Decision::headers`] renders, as framework-agnostic `(name, value)` pairs:
//! - the IETF draft fields (draft-ietf-httpapi-ratelimit-headers-10):
//!   `RateLimit-Policy: "<name>";q=<limit>;w=<window seconds>` and
//!   `RateLimit: "<name>";r=<remaining>;t=<seconds until reset>`;
//! - the legacy fields most clients read: `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
//!   `X-RateLimit-Reset` (delta seconds, not a timestamp);
//! - `Retry-After: <seconds>` when denied.
//!
//! Seconds are rounded *up*, so a client that waits the advertised time is never early.

use std::time::Duration;

use super::quota::MAX_LIMIT_NAME_LEN;

/// A limit's name, held inline: a decision is made per request, and copying at most 64 bytes is
/// cheaper than sharing an allocation across threads (two atomic operations per decision).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyName {
    len: u8,
    bytes: [u8; MAX_LIMIT_NAME_LEN],
}

impl PolicyName {
    /// `name` (a valid limit name: ASCII, at most 64 bytes; anything longer is cut).
    pub(crate) fn new(name: &str) -> Self {
        let len = name.len().min(MAX_LIMIT_NAME_LEN);
        let mut bytes = [0; MAX_LIMIT_NAME_LEN];
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            len: u8::try_from(len).unwrap_or(0),
            bytes,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The result of a rate check, peek or refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    pub(crate) reset_after: Duration,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) policy: PolicyName,
    pub(crate) window: Duration,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The most that can be spent at once under the deciding limit (burst or window limit).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// What is left to spend now.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Time until the full quota is available again.
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// When denied, how long until the same request would be allowed (`None` when allowed).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The name of the deciding limit (for `check_all`, the most restrictive one).
    pub fn policy(&self) -> &str {
        self.policy.as_str()
    }

    /// The header fields for this decision, in a stable order.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::{ManualClock, Store, ratelimit::{Limit, Quota}};
    /// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
    /// # let clock = ManualClock::new(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    /// # let store = Store::builder().clock(clock).open(dir.path().join("t.redb"))?;
    /// let limit = Limit::new("api", Quota::fixed_window(100, Duration::from_secs(60)))?;
    /// let decision = store.check(&limit, "client-1")?;
    /// assert_eq!(decision.headers(), vec![
    ///     ("RateLimit-Policy", r#""api";q=100;w=60"#.to_owned()),
    ///     ("RateLimit", r#""api";r=99;t=60"#.to_owned()),
    ///     ("X-RateLimit-Limit", "100".to_owned()),
    ///     ("X-RateLimit-Remaining", "99".to_owned()),
    ///     ("X-RateLimit-Reset", "60".to_owned()),
    /// ]);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(6);
        self.for_each_header(|name, value| headers.push((name, value.to_owned())));
        headers
    }

    /// Each field of [`Decision::headers`], in the same order, passed to `field` as its name and
    /// its value, formatted in one buffer reused from field to field: for a server adapter that
    /// copies the values into its own response type, without a `String` per field.
    ///
    /// ```
    /// # use tollgate::{Store, ratelimit::{Limit, Quota}};
    /// let store = Store::in_memory()?;
    /// let limit = Limit::new("api", Quota::per_minute(100))?;
    /// let decision = store.check(&limit, "client-1")?;
    /// let mut fields = Vec::new();
    /// decision.for_each_header(|name, value| fields.push((name, value.to_owned())));
    /// assert_eq!(fields, decision.headers());
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn for_each_header(&self, mut field: impl FnMut(&'static str, &str)) {
        use std::fmt::Write as _;
        let reset = ceil_seconds(self.reset_after);
        let policy = self.policy.as_str();
        let mut value = String::with_capacity(policy.len() + 40);
        let mut emit = |name: &'static str, text: std::fmt::Arguments<'_>| {
            value.clear();
            let _ = value.write_fmt(text);
            field(name, &value);
        };
        let window = ceil_seconds(self.window);
        let (limit, remaining) = (self.limit, self.remaining);
        emit(
            "RateLimit-Policy",
            format_args!("\"{policy}\";q={limit};w={window}"),
        );
        emit(
            "RateLimit",
            format_args!("\"{policy}\";r={remaining};t={reset}"),
        );
        emit("X-RateLimit-Limit", format_args!("{limit}"));
        emit("X-RateLimit-Remaining", format_args!("{remaining}"));
        emit("X-RateLimit-Reset", format_args!("{reset}"));
        if let Some(retry) = self.retry_after {
            emit("Retry-After", format_args!("{}", ceil_seconds(retry)));
        }
    }
}

/// Whole seconds, rounded up.
fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool) -> Decision {
        Decision {
            allowed,
            limit: 10,
            remaining: if allowed { 3 } else { 0 },
            reset_after: Duration::from_millis(4_200),
            retry_after: (!allowed).then_some(Duration::from_millis(1_001)),
            policy: PolicyName::new("login"),
            window: Duration::from_secs(900),
        }
    }

    #[test]
    fn allowed_decision_headers_golden() {
        assert_eq!(
            decision(true).headers(),
            vec![
                ("RateLimit-Policy", "\"login\";q=10;w=900".to_owned()),
                ("RateLimit", "\"login\";r=3;t=5".to_owned()),
                ("X-RateLimit-Limit", "10".to_owned()),
                ("X-RateLimit-Remaining", "3".to_owned()),
                ("X-RateLimit-Reset", "5".to_owned()),
            ]
        );
    }

    #[test]
    fn denied_decision_headers_golden() {
        assert_eq!(
            decision(false).headers(),
            vec![
                ("RateLimit-Policy", "\"login\";q=10;w=900".to_owned()),
                ("RateLimit", "\"login\";r=0;t=5".to_owned()),
                ("X-RateLimit-Limit", "10".to_owned()),
                ("X-RateLimit-Remaining", "0".to_owned()),
                ("X-RateLimit-Reset", "5".to_owned()),
                ("Retry-After", "2".to_owned()),
            ]
        );
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_seconds(Duration::ZERO), 0);
        assert_eq!(ceil_seconds(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_seconds(Duration::from_secs(2)), 2);
    }
}
