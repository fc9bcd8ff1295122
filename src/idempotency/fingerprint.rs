//! Request fingerprints: "is this retry the same request?"
//!
//! A record remembers the fingerprint of the request that created it. A later request with the same
//! key but a different fingerprint is a client bug (a key reused for another payment) and gets
//! [`Begin::Mismatch`](super::Begin::Mismatch) instead of someone else's response.
//!
//! [`Fingerprint::of`] hashes bytes the caller chose. [`Fingerprint::request`] builds one from the
//! parts of an HTTP request, canonicalised so that meaningless differences do not matter: query
//! pairs are sorted, header names are compared case-insensitively and sorted. Every part is framed
//! with a tag and a length, so no two different requests hash the same input.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest of a request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub(crate) [u8; 32]);

impl Fingerprint {
    /// The SHA-256 of `bytes`.
    ///
    /// # Examples
    ///
    /// ```
    /// use tollgate::idempotency::Fingerprint;
    /// assert_eq!(Fingerprint::of(b"charge 10 EUR"), Fingerprint::of(b"charge 10 EUR"));
    /// assert_ne!(Fingerprint::of(b"charge 10 EUR"), Fingerprint::of(b"charge 99 EUR"));
    /// ```
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// A builder that fingerprints an HTTP request from its parts.
    ///
    /// # Examples
    ///
    /// ```
    /// use tollgate::idempotency::Fingerprint;
    /// let a = Fingerprint::request()
    ///     .method("POST").path("/payments")
    ///     .query("b", "2").query("a", "1")
    ///     .header("Content-Type", "application/json")
    ///     .body(br#"{"amount":10}"#)
    ///     .finish();
    /// let b = Fingerprint::request()
    ///     .method("POST").path("/payments")
    ///     .query("a", "1").query("b", "2")
    ///     .header("content-type", "application/json")
    ///     .body(br#"{"amount":10}"#)
    ///     .finish();
    /// assert_eq!(a, b);
    /// ```
    pub fn request() -> RequestFingerprint {
        RequestFingerprint::default()
    }

    /// Builds a fingerprint from its 32 bytes (for example one computed elsewhere).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", super::key::hex(&self.0[..8]))
    }
}

/// Builds a [`Fingerprint`] from the parts of an HTTP request. Made by [`Fingerprint::request`].
///
/// The method is compared case-sensitively (HTTP methods are), header names case-insensitively.
/// Add only the headers that change the meaning of the request (`Content-Type`, an API version), not
/// ones that vary between retries (`Date`, tracing ids).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RequestFingerprint {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl RequestFingerprint {
    /// The request method, e.g. `POST`.
    pub fn method(mut self, method: &str) -> Self {
        method.clone_into(&mut self.method);
        self
    }

    /// The request path, e.g. `/v1/payments`.
    pub fn path(mut self, path: &str) -> Self {
        path.clone_into(&mut self.path);
        self
    }

    /// One query pair. Pairs are sorted before hashing, so their order does not matter.
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.to_owned(), value.to_owned()));
        self
    }

    /// One header that belongs to the request's meaning. Names are lowercased and sorted.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The request body.
    pub fn body(mut self, body: &[u8]) -> Self {
        body.clone_into(&mut self.body);
        self
    }

    /// Hashes the parts.
    pub fn finish(mut self) -> Fingerprint {
        self.query.sort();
        self.headers.sort();
        let mut hasher = Sha256::new();
        hasher.update(b"tollgate/request/v1");
        let mut part = |tag: u8, bytes: &[u8]| {
            hasher.update([tag]);
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        part(b'M', self.method.as_bytes());
        part(b'P', self.path.as_bytes());
        for (name, value) in &self.query {
            part(b'q', name.as_bytes());
            part(b'v', value.as_bytes());
        }
        for (name, value) in &self.headers {
            part(b'h', name.as_bytes());
            part(b'v', value);
        }
        part(b'B', &self.body);
        Fingerprint(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_changes_the_fingerprint() {
        let base = || Fingerprint::request().method("POST").path("/p").body(b"x");
        let reference = base().finish();
        assert_ne!(reference, base().method("PUT").finish());
        assert_ne!(reference, base().path("/q").finish());
        assert_ne!(reference, base().query("a", "1").finish());
        assert_ne!(reference, base().header("x-api-version", "2").finish());
        assert_ne!(reference, base().body(b"y").finish());
    }

    #[test]
    fn framing_keeps_adjacent_parts_apart() {
        let a = Fingerprint::request().query("ab", "c").finish();
        let b = Fingerprint::request().query("a", "bc").finish();
        assert_ne!(a, b);
        let c = Fingerprint::request().method("PO").path("ST/").finish();
        let d = Fingerprint::request().method("POST").path("/").finish();
        assert_ne!(c, d);
    }
}
