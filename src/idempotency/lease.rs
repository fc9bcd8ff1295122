//! What `begin` returns: a lease to execute under, a replay, or a reason to wait.
//!
//! A [`Lease`] is the exclusive right to execute one request. Its token fences it: after a takeover
//! every call on the old lease fails with [`Error::LeaseLost`]. Every method that changes the record
//! returns only once the change is durable.
//!
//! Dropping a lease without resolving it leaves the record RUNNING, exactly as a crash would: the
//! lease expires on time, or at once when the store is reopened, and the next `begin` takes over
//! with [`Lease::recovered`] set.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::key::Digest;
use super::machine::Resolution;
use super::record::{Checkpoint, MAX_CHECKPOINT_NAME_LEN, Outcome, StoredResponse};
use crate::clock::{duration_to_nanos, nanos_to_system_time};
use crate::error::{Error, Result};
use crate::store::Store;

/// The result of [`Store::begin`].
#[derive(Debug)]
#[must_use = "a Begin must be matched: it may hold a lease to resolve"]
pub enum Begin {
    /// This caller owns the record and must execute the request, then resolve the lease.
    Acquired(Lease),
    /// The request already finished: send the stored response again.
    Replay(Replay),
    /// Another caller holds a live lease on this key. Retry after `retry_after` (the time until that
    /// lease expires), or begin with [`BeginOptions::wait`](crate::BeginOptions::wait).
    InFlight {
        /// Time until the current lease expires.
        retry_after: Duration,
    },
    /// The key was used before for a different request (its fingerprint differs).
    Mismatch,
}

/// A finished request's stored outcome and response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub(crate) outcome: Outcome,
    pub(crate) response: StoredResponse,
}

impl Replay {
    /// Whether the request completed or failed.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The stored response.
    pub fn response(&self) -> &StoredResponse {
        &self.response
    }

    /// The stored response, owned.
    pub fn into_response(self) -> StoredResponse {
        self.response
    }
}

/// The exclusive, fenced right to execute one request. Returned in [`Begin::Acquired`].
#[must_use = "an unresolved lease leaves the record RUNNING until the lease expires"]
pub struct Lease {
    pub(crate) store: Store,
    pub(crate) digest: Digest,
    pub(crate) token: u64,
    pub(crate) attempt: u32,
    pub(crate) recovered: bool,
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) expires_at: u64,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("digest", &self.digest)
            .field("token", &self.token)
            .field("attempt", &self.attempt)
            .field("recovered", &self.recovered)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The fencing token: store-wide, strictly increasing, never reused. Pass it to downstream
    /// systems that can reject writes from stale owners.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Which execution this is: 1 for the first, plus one per takeover.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether an earlier execution of this request may have run (and may have had side effects):
    /// this lease took the record over from an owner whose lease expired or whose process restarted.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// The last checkpoint saved by an earlier owner (or by this lease).
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// When this lease expires, unless extended.
    pub fn expires_at(&self) -> SystemTime {
        nanos_to_system_time(self.expires_at)
    }

    /// The digest of the record this lease owns.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Stores `response` as the request's outcome; later `begin`s replay it. Durable on return.
    ///
    /// # Errors
    /// - [`Error::ResponseTooLarge`] if `response` is over `max_response_bytes`; nothing is written
    ///   and the lease is handed back inside the error ([`Error::into_lease`]).
    /// - [`Error::LeaseLost`] if the record was taken over.
    /// - [`Error::Poisoned`], [`Error::Closed`], [`Error::Storage`] as for any write.
    pub fn complete(self, response: StoredResponse) -> Result<()> {
        self.finish(response, Resolution::Complete)
    }

    /// Stores `response` as a terminal failure; later `begin`s replay it like a completion (with
    /// [`Outcome::Failed`]). For failures worth retrying, use [`Lease::release`]. Durable on return.
    ///
    /// # Errors
    /// As for [`Lease::complete`].
    pub fn fail(self, response: StoredResponse) -> Result<()> {
        self.finish(response, Resolution::Fail)
    }

    fn finish(
        self,
        response: StoredResponse,
        resolution: fn(StoredResponse) -> Resolution,
    ) -> Result<()> {
        let limit = self.store.max_response_bytes();
        let size = response.size();
        if size > limit {
            return Err(Error::ResponseTooLarge {
                size,
                limit,
                lease: Some(Box::new(self)),
            });
        }
        self.store
            .resolve(self.digest, self.token, resolution(response))
            .map(drop)
    }

    /// Deletes the RUNNING record, so the next request with this key executes afresh. For failures
    /// that are safe to retry. Durable on return.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the record was taken over; otherwise as for any write.
    pub fn release(self) -> Result<()> {
        self.store
            .resolve(self.digest, self.token, Resolution::Release)
            .map(drop)
    }

    /// Extends the lease to expire no earlier than `by` from now (it is never shortened). Durable on
    /// return.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the record was taken over; otherwise as for any write.
    pub fn extend(&mut self, by: Duration) -> Result<()> {
        let resolved = self.store.resolve(
            self.digest,
            self.token,
            Resolution::Extend(duration_to_nanos(by)),
        )?;
        if let Some(expires_at) = resolved {
            self.expires_at = expires_at;
        }
        Ok(())
    }

    /// Saves progress that a later owner receives on takeover (through [`Lease::checkpoint`]), so a
    /// recovered execution can resume. Replaces any earlier checkpoint. Durable on return.
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`] if `name` is longer than 255 bytes.
    /// - [`Error::ResponseTooLarge`] if `name` and `data` together exceed `max_response_bytes`
    ///   (`lease` is `None` in the error: this lease stays usable).
    /// - [`Error::LeaseLost`] if the record was taken over; otherwise as for any write.
    pub fn save_checkpoint(&mut self, name: &str, data: &[u8]) -> Result<()> {
        if name.len() > MAX_CHECKPOINT_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "checkpoint name is {} bytes; at most {MAX_CHECKPOINT_NAME_LEN} are allowed",
                name.len()
            )));
        }
        let checkpoint = Checkpoint {
            name: name.to_owned(),
            data: data.to_vec(),
        };
        let limit = self.store.max_response_bytes();
        let size = checkpoint.size();
        if size > limit {
            return Err(Error::ResponseTooLarge {
                size,
                limit,
                lease: None,
            });
        }
        self.store.resolve(
            self.digest,
            self.token,
            Resolution::SaveCheckpoint(checkpoint.clone()),
        )?;
        self.checkpoint = Some(checkpoint);
        Ok(())
    }
}
