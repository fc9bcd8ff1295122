//! Idempotency keys and the digests that address records.
//!
//! A key is what the client sends (`Idempotency-Key: 8e03978e-...`); a scope is what the server
//! knows about who sent it (a tenant, a user, an endpoint). The same key in two scopes is two
//! records. The raw key never reaches the disk: records are addressed by
//! `SHA-256("tollgate/key/v1" || len(scope) || scope || len(key) || key)` with 4-byte big-endian
//! lengths, a framing in which no two (scope, key) pairs share an encoding.

use std::fmt;

use sha2::{Digest as _, Sha256};

pub use crate::error::KeyError;

/// Longest key accepted, in bytes (every byte is one visible ASCII character).
pub const MAX_KEY_LEN: usize = 255;
/// Longest scope accepted, in bytes of UTF-8.
pub const MAX_SCOPE_LEN: usize = 255;

const KEY_DOMAIN: &[u8] = b"tollgate/key/v1";

/// A validated idempotency key within its scope.
///
/// # Examples
///
/// ```
/// use tollgate::idempotency::{IdempotencyKey, KeyError};
///
/// let key = IdempotencyKey::new("user:42", "8e03978e-40d5-43e8-bc93-6894a57f9324")?;
/// assert_eq!(key.scope(), "user:42");
/// assert!(matches!(IdempotencyKey::new("user:42", "has space"), Err(KeyError::InvalidCharacter { position: 3 })));
/// # Ok::<(), KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    scope: String,
    key: String,
    digest: Digest,
}

impl IdempotencyKey {
    /// Validates `key` (1 to 255 visible ASCII characters) and `scope` (at most 255 bytes of UTF-8,
    /// empty allowed) and computes the digest that addresses the record.
    ///
    /// # Errors
    ///
    /// [`KeyError`] naming the first rule broken.
    pub fn new(scope: &str, key: &str) -> Result<Self, KeyError> {
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::KeyTooLong { len: key.len() });
        }
        if let Some(position) = key.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(KeyError::InvalidCharacter { position });
        }
        if scope.len() > MAX_SCOPE_LEN {
            return Err(KeyError::ScopeTooLong { len: scope.len() });
        }
        let digest = Digest::of_key(scope, key);
        Ok(Self {
            scope: scope.to_owned(),
            key: key.to_owned(),
            digest,
        })
    }

    /// The scope this key lives in.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key as the client sent it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The digest that addresses this key's record on disk.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

impl fmt::Debug for IdempotencyKey {
    // Keys can be secrets of a sort (guessable keys let others replay responses): show the digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyKey")
            .field("scope", &self.scope)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 digest that addresses a record. Displays as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub(crate) [u8; 32]);

impl Digest {
    fn of_key(scope: &str, key: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(KEY_DOMAIN);
        for part in [scope.as_bytes(), key.as_bytes()] {
            // Both parts are at most 255 bytes, so the conversion cannot fail; saturate anyway.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            hasher.update(len.to_be_bytes());
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first `bytes` bytes as hex, for logs (`bytes` is capped at 32).
    pub fn short_hex(&self, bytes: usize) -> String {
        hex(&self.0[..bytes.min(32)])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short_hex(8))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert_eq!(IdempotencyKey::new("", ""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::new("", &"a".repeat(256)),
            Err(KeyError::KeyTooLong { len: 256 })
        );
        assert!(IdempotencyKey::new("", &"a".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::new("", "ab\ncd"),
            Err(KeyError::InvalidCharacter { position: 2 })
        );
        assert_eq!(
            IdempotencyKey::new("", "é"),
            Err(KeyError::InvalidCharacter { position: 0 })
        );
        assert_eq!(
            IdempotencyKey::new(&"s".repeat(256), "k"),
            Err(KeyError::ScopeTooLong { len: 256 })
        );
        assert!(IdempotencyKey::new(&"é".repeat(127), "k").is_ok());
    }

    #[test]
    fn same_key_in_two_scopes_has_two_digests() {
        let a = IdempotencyKey::new("tenant-a", "k1").map(|k| k.digest());
        let b = IdempotencyKey::new("tenant-b", "k1").map(|k| k.digest());
        assert_ne!(a, b);
    }

    #[test]
    fn framing_is_unambiguous() {
        // "ab" + "c" and "a" + "bc" concatenate the same; the length framing keeps them apart.
        let a = IdempotencyKey::new("ab", "c").map(|k| k.digest());
        let b = IdempotencyKey::new("a", "bc").map(|k| k.digest());
        assert_ne!(a, b);
    }

    #[test]
    fn debug_does_not_show_the_raw_key() {
        let key = IdempotencyKey::new("s", "secret-key-123").map(|k| format!("{k:?}"));
        assert!(key.is_ok_and(|text| !text.contains("secret-key-123")));
    }
}
