//! What a record holds: the stored response, the checkpoint, and the record itself.
//!
//! [`Record`] is the one in-memory shape of an idempotency record, shared by the pure state machine
//! (which computes new records) and the storage layer (which encodes them, see `storage::codec`).
//! Times are nanoseconds since the Unix epoch, as the store's clamped clock gives them.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::clock::nanos_to_system_time;

/// A response to replay: status, headers and body, as the handler produced them.
///
/// # Examples
///
/// ```
/// use tollgate::idempotency::StoredResponse;
/// let response = StoredResponse::new(201, br#"{"id":"pay_1"}"#.to_vec())
///     .with_header("content-type", "application/json");
/// assert_eq!(response.status, 201);
/// assert_eq!(response.size(), 2 + 12 + 16 + 14);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status code (or any code of your protocol).
    pub status: u16,
    /// Header names and values, in order.
    #[serde(with = "header_bytes")]
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Header values as byte strings, not sequences of `u8` (postcard writes both as a length and the
/// bytes, so the format is the same; decoding a byte string is a copy instead of a loop).
mod header_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(super) fn serialize<S: Serializer>(
        headers: &[(String, Vec<u8>)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            headers
                .iter()
                .map(|(name, value)| (name, Bytes::new(value))),
        )
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        let headers = Vec::<(String, ByteBuf)>::deserialize(deserializer)?;
        Ok(headers
            .into_iter()
            .map(|(name, value)| (name, value.into_vec()))
            .collect())
    }
}

impl StoredResponse {
    /// A response with no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The size counted against `max_response_bytes`: 2 bytes of status plus the lengths of every
    /// header name and value plus the body.
    pub fn size(&self) -> usize {
        self.headers
            .iter()
            .fold(2 + self.body.len(), |sum, (name, value)| {
                sum.saturating_add(name.len()).saturating_add(value.len())
            })
    }
}

/// A named piece of progress saved by a lease owner with
/// [`Lease::save_checkpoint`](super::Lease::save_checkpoint), handed to whoever takes the record
/// over, so a recovered execution can resume instead of starting again (e.g. `"charged": ch_123`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// What step was reached.
    pub name: String,
    /// Whatever the step needs to resume.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Checkpoint {
    /// The size counted against `max_response_bytes`.
    pub(crate) fn size(&self) -> usize {
        self.name.len().saturating_add(self.data.len())
    }
}

/// Longest checkpoint name, in bytes.
pub const MAX_CHECKPOINT_NAME_LEN: usize = 255;

/// The state of a record, as [`RecordInfo`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// A lease owner is (or was, if the lease expired) executing the request.
    Running,
    /// Completed; the stored response is replayed.
    Completed,
    /// Failed terminally; the stored response is replayed.
    Failed,
}

/// How a finished record ended, as a [`Replay`](super::Replay) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Resolved by [`Lease::complete`](super::Lease::complete).
    Completed,
    /// Resolved by [`Lease::fail`](super::Lease::fail).
    Failed,
}

/// A summary of a record, from [`Store::get`](crate::Store::get).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordInfo {
    /// The record's state.
    pub state: RecordState,
    /// How many executions have been started: 1, plus one per takeover.
    pub attempts: u32,
    /// When the first execution began.
    pub created_at: SystemTime,
    /// When the record is forgotten and the key may be used afresh. For a RUNNING record this is
    /// its lease expiry plus the record TTL: an abandoned execution is remembered as long as a
    /// finished one, so that a late retry is told it is a recovery.
    pub expires_at: SystemTime,
    /// For a RUNNING record, when its current lease expires; `None` for a finished one.
    pub lease_expires_at: Option<SystemTime>,
}

/// An idempotency record, as stored.
#[allow(clippy::struct_field_names)] // `record_ttl` is the name used everywhere else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Fingerprint of the request that created the record.
    pub fingerprint: [u8; 32],
    /// When the first execution began.
    pub created_at: u64,
    /// When the record behaves as absent and may be removed.
    pub expires_at: u64,
    /// Executions started.
    pub attempts: u32,
    /// How long the record is kept once finished (or once its lease expires).
    pub record_ttl: u64,
    /// State-specific part.
    pub body: RecordBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RecordBody {
    Running {
        token: u64,
        epoch: u64,
        lease_expires_at: u64,
        checkpoint: Option<Checkpoint>,
    },
    Completed(StoredResponse),
    Failed(StoredResponse),
}

impl Record {
    /// Whether the record behaves as absent at `now`.
    pub(crate) fn is_expired(&self, now: u64) -> bool {
        now >= self.expires_at
    }

    pub(crate) fn info(&self) -> RecordInfo {
        let (state, lease_expires_at) = match &self.body {
            RecordBody::Running {
                lease_expires_at, ..
            } => (
                RecordState::Running,
                Some(nanos_to_system_time(*lease_expires_at)),
            ),
            RecordBody::Completed(_) => (RecordState::Completed, None),
            RecordBody::Failed(_) => (RecordState::Failed, None),
        };
        RecordInfo {
            state,
            attempts: self.attempts,
            created_at: nanos_to_system_time(self.created_at),
            expires_at: nanos_to_system_time(self.expires_at),
            lease_expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout before byte vectors were encoded as byte strings: sequences of `u8`.
    #[derive(Serialize)]
    struct SequenceEncoded {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    }

    #[test]
    fn byte_strings_encode_exactly_like_the_sequences_of_format_1() {
        let response = StoredResponse::new(201, (0..=255u8).collect::<Vec<_>>())
            .with_header("content-type", b"application/json".to_vec())
            .with_header("x-empty", Vec::new());
        let old = SequenceEncoded {
            status: response.status,
            headers: response.headers.clone(),
            body: response.body.clone(),
        };
        let new_bytes = postcard::to_allocvec(&response).unwrap();
        assert_eq!(new_bytes, postcard::to_allocvec(&old).unwrap());
        let decoded: StoredResponse = postcard::from_bytes(&new_bytes).unwrap();
        assert_eq!(decoded, response);
    }
}
