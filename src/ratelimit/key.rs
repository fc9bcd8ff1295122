//! Counter keys: which (limit, subject) a counter belongs to.
//!
//! `SipHash-1-3-128(secret; u32be(len name) || name || u32be(len subject) || subject)`, 16 bytes.
//! The 128-bit secret is drawn when the store file is created and kept in its meta table. So:
//! - subjects (IP addresses, user ids, API keys) are never stored raw;
//! - a client cannot craft a subject that collides with another's counter without the secret
//!   (`SipHash` is a keyed pseudo-random function), and chance collisions are negligible at 128 bits;
//! - it costs about 100 instructions, where SHA-256 cost about 3,400 on the check path.

use std::hash::BuildHasher;

use siphasher::sip128::SipHasher13;

use super::quota::MAX_SUBJECT_LEN;
use crate::error::{Error, Result};

/// The key of one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CounterKey(pub [u8; 16]);

/// Checks that a subject is 1 to 512 bytes.
///
/// # Errors
/// [`Error::InvalidArgument`] otherwise.
pub(crate) fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_LEN {
        return Err(Error::InvalidArgument(format!(
            "subjects are 1 to {MAX_SUBJECT_LEN} bytes; got {}",
            subject.len()
        )));
    }
    Ok(())
}

/// Computes counter keys with a store's secret.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CounterKeys {
    secret: (u64, u64),
}

impl CounterKeys {
    pub(crate) fn new(secret: (u64, u64)) -> Self {
        Self { secret }
    }

    /// A fresh secret from the operating system's randomness (through std's randomly seeded
    /// `RandomState`), mixed with the time and process id.
    pub(crate) fn generate_secret(now: u64) -> (u64, u64) {
        let first = std::hash::RandomState::new().hash_one((now, std::process::id()));
        let second = std::hash::RandomState::new().hash_one((first, now.rotate_left(17)));
        (first, second)
    }

    /// The key of `subject`'s counter under the limit named `limit`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty subject or one over 512 bytes.
    pub(crate) fn key(&self, limit: &str, subject: &str) -> Result<CounterKey> {
        check_subject(subject)?;
        // One write of the whole framed input: SipHash's per-call overhead dominates for short
        // inputs. A small buffer serves the usual sizes (clearing the large one costs more than
        // hashing).
        let framed_len = 8 + limit.len() + subject.len();
        let mut small = [0u8; 128];
        let mut large;
        let framed: &mut [u8] = if framed_len <= small.len() {
            &mut small[..framed_len]
        } else {
            large = vec![0u8; framed_len];
            &mut large
        };
        let mut at = 0;
        for part in [limit.as_bytes(), subject.as_bytes()] {
            let end = at + 4 + part.len();
            let Some(slot) = framed.get_mut(at..end) else {
                return Err(Error::Corrupted("counter key framing overflow".into()));
            };
            slot[..4].copy_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            slot[4..].copy_from_slice(part);
            at = end;
        }
        let hasher = SipHasher13::new_with_keys(self.secret.0, self.secret.1);
        Ok(CounterKey(hasher.hash(framed).as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_framed_and_secret_dependent() {
        let keys = CounterKeys::new((1, 2));
        assert_eq!(keys.key("a", "x").ok(), keys.key("a", "x").ok());
        assert_ne!(keys.key("a", "x").ok(), keys.key("b", "x").ok());
        assert_ne!(keys.key("ab", "c").ok(), keys.key("a", "bc").ok());
        assert_ne!(
            keys.key("a", "x").ok(),
            CounterKeys::new((1, 3)).key("a", "x").ok()
        );
        assert!(keys.key("a", "").is_err());
        assert!(keys.key("a", &"s".repeat(513)).is_err());
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(
            CounterKeys::generate_secret(1),
            CounterKeys::generate_secret(1)
        );
    }
}
