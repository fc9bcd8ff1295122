//! On-disk encoding, in one place. `docs/FORMAT.md` describes the same layout for readers of the
//! file.
//!
//! ```text
//! records  key:   digest (32 bytes, SHA-256 of the framed scope and key)
//!          value: [version = 1][postcard(Record)]
//! expiry   key:   [expires_at: u64 big-endian][kind: u8][id: 32 bytes]     (41 bytes)
//!          value: ()            big-endian so that byte order is time order
//! meta     key:   name (UTF-8)
//!          value: [version = 1][u64 little-endian]
//! rates    key:   counter key (16 bytes, SipHash-1-3-128 of the framed limit name and subject,
//!                 keyed by the store's secret)
//!          value: [version = 1][kind: u8][idle_at: u64 LE][a: u64 LE][b: u64 LE][c: u64 LE]
//!                 kind 1 GCRA (a = tat), 2 fixed window (a = window, b = count),
//!                 3 sliding window (a = window, b = previous, c = current)
//! ```
//!
//! Every value starts with a version byte, so a later format can be told apart and refused or
//! migrated. Decoding never trusts the input: a wrong version, a truncated or over-long value is a
//! typed [`Error::Corrupted`], and postcard never allocates more than the input holds.

use crate::error::Error;
use crate::idempotency::{Record, RecordBody};
use crate::ratelimit::RateState;

/// Version byte of record values.
pub(crate) const RECORD_V1: u8 = 1;
/// Version byte of meta values.
pub(crate) const META_V1: u8 = 1;

/// Length of an expiry-index key.
pub(crate) const EXPIRY_KEY_LEN: usize = 8 + 1 + 32;
/// Expiry-index kind of an idempotency record.
pub(crate) const KIND_RECORD: u8 = 1;
/// Expiry-index kind of a rate counter.
pub(crate) const KIND_RATE: u8 = 2;

/// Version byte of rate counter values.
pub(crate) const RATE_V1: u8 = 1;
/// Length of a rate counter value.
pub(crate) const RATE_VALUE_LEN: usize = 2 + 4 * 8;

/// A rate counter as stored: its state and when it becomes idle (its expiry-index time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredRate {
    pub state: RateState,
    pub idle_at: u64,
}

pub(crate) fn encode_rate(rate: &StoredRate) -> [u8; RATE_VALUE_LEN] {
    let (kind, fields) = match rate.state {
        RateState::Gcra { tat } => (1, [tat, 0, 0]),
        RateState::FixedWindow { window, count } => (2, [window, count, 0]),
        RateState::SlidingWindow {
            window,
            previous,
            current,
        } => (3, [window, previous, current]),
    };
    let mut out = [0; RATE_VALUE_LEN];
    out[0] = RATE_V1;
    out[1] = kind;
    for (slot, value) in out[2..]
        .chunks_exact_mut(8)
        .zip(std::iter::once(rate.idle_at).chain(fields))
    {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    out
}

pub(crate) fn decode_rate(bytes: &[u8]) -> Result<StoredRate, Error> {
    let corrupted = |what: &str| Error::Corrupted(format!("rate counter value: {what}"));
    let [RATE_V1, kind, rest @ ..] = bytes else {
        return Err(corrupted("unknown version or too short"));
    };
    if rest.len() != 4 * 8 {
        return Err(corrupted("wrong length"));
    }
    let mut words = [0u64; 4];
    for (word, chunk) in words.iter_mut().zip(rest.chunks_exact(8)) {
        *word = chunk
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| corrupted("wrong length"))?;
    }
    let [idle_at, a, b, c] = words;
    let state = match kind {
        1 => RateState::Gcra { tat: a },
        2 => RateState::FixedWindow {
            window: a,
            count: b,
        },
        3 => RateState::SlidingWindow {
            window: a,
            previous: b,
            current: c,
        },
        _ => return Err(corrupted("unknown algorithm")),
    };
    Ok(StoredRate { state, idle_at })
}

pub(crate) fn encode_record(record: &Record) -> Result<Vec<u8>, Error> {
    // Sized once: the fixed fields take at most about 100 bytes, the rest is the payload.
    let payload = match &record.body {
        RecordBody::Completed(response) | RecordBody::Failed(response) => {
            response.size() + 8 * response.headers.len()
        }
        RecordBody::Running { checkpoint, .. } => checkpoint
            .as_ref()
            .map_or(0, |c| c.name.len() + c.data.len() + 8),
    };
    let mut out = Vec::with_capacity(128 + payload);
    out.push(RECORD_V1);
    postcard::to_io(record, &mut out)
        .map_err(|error| Error::Corrupted(format!("encoding a record failed: {error}")))?;
    Ok(out)
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, Error> {
    match bytes.split_first() {
        Some((&RECORD_V1, rest)) => {
            let (record, trailing) = postcard::take_from_bytes::<Record>(rest)
                .map_err(|error| Error::Corrupted(format!("undecodable record: {error}")))?;
            if trailing.is_empty() {
                Ok(record)
            } else {
                Err(Error::Corrupted(format!(
                    "record value has {} trailing bytes",
                    trailing.len()
                )))
            }
        }
        Some((version, _)) => Err(Error::Corrupted(format!(
            "record value has unknown version {version}"
        ))),
        None => Err(Error::Corrupted("empty record value".into())),
    }
}

/// The leading fields of a record value, decoded without the response or checkpoint.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub(crate) struct RecordHead {
    _fingerprint: [u8; 32],
    pub created_at: u64,
    pub expires_at: u64,
    _attempts: u32,
    pub record_ttl: u64,
    /// The body's variant: 0 running, 1 completed, 2 failed (postcard encodes it as a varint,
    /// exactly like a `u32`).
    pub state: u32,
}

/// Decodes only the head of a record value: what a sweep needs, without allocating.
pub(crate) fn decode_record_head(bytes: &[u8]) -> Result<RecordHead, Error> {
    match bytes.split_first() {
        Some((&RECORD_V1, rest)) => postcard::take_from_bytes::<RecordHead>(rest)
            .map(|(head, _)| head)
            .map_err(|error| Error::Corrupted(format!("undecodable record head: {error}"))),
        _ => Err(Error::Corrupted(
            "record value has an unknown version".into(),
        )),
    }
}

pub(crate) fn encode_meta(value: u64) -> [u8; 9] {
    let mut out = [0; 9];
    out[0] = META_V1;
    out[1..].copy_from_slice(&value.to_le_bytes());
    out
}

pub(crate) fn decode_meta(name: &str, bytes: &[u8]) -> Result<u64, Error> {
    match bytes {
        [META_V1, rest @ ..] => rest
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| Error::Corrupted(format!("meta value {name:?} has the wrong length"))),
        _ => Err(Error::Corrupted(format!(
            "meta value {name:?} has an unknown version"
        ))),
    }
}

/// The expiry-index time of a record: its `expires_at` rounded up to a thirty-second of its
/// `record_ttl` (the granule), plus its `created_at` modulo the granule.
///
/// - Rounding: a running record and the finished record that replaces it (same TTL, expiring a
///   lease's length apart) almost always share a granule, so a completion does not move the index
///   entry: one B-tree write fewer per completion.
/// - The `created_at` term: within a granule, entries would otherwise sort by digest, so a batch of
///   begins would land in random leaves of the index; ordered by creation they append at one
///   place. (Running and finished records share `created_at`, so the term never moves an entry.)
///
/// The result is never before `expires_at` and at most two granules (a sixteenth of the TTL)
/// after it: a sweep removes a record that much later, and an expired record reads as absent
/// either way.
pub(crate) fn record_index_at(expires_at: u64, record_ttl: u64, created_at: u64) -> u64 {
    let granule = (record_ttl / 32).max(1);
    expires_at
        .div_ceil(granule)
        .saturating_mul(granule)
        .max(expires_at)
        .saturating_add(created_at % granule)
}

pub(crate) fn expiry_key(expires_at: u64, kind: u8, id: &[u8; 32]) -> [u8; EXPIRY_KEY_LEN] {
    let mut key = [0; EXPIRY_KEY_LEN];
    key[..8].copy_from_slice(&expires_at.to_be_bytes());
    key[8] = kind;
    key[9..].copy_from_slice(id);
    key
}

/// Splits an expiry-index key into (`expires_at`, kind, id).
pub(crate) fn decode_expiry_key(key: &[u8]) -> Result<(u64, u8, [u8; 32]), Error> {
    let corrupted = || Error::Corrupted("expiry index key has the wrong length".into());
    if key.len() != EXPIRY_KEY_LEN {
        return Err(corrupted());
    }
    let expires_at = key[..8]
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupted())?;
    let id = key[9..].try_into().map_err(|_| corrupted())?;
    Ok((expires_at, key[8], id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{Checkpoint, RecordBody, StoredResponse};

    fn sample() -> Record {
        Record {
            fingerprint: [3; 32],
            created_at: 1,
            expires_at: 2,
            attempts: 3,
            record_ttl: 4,
            body: RecordBody::Running {
                token: 5,
                epoch: 6,
                lease_expires_at: 7,
                checkpoint: Some(Checkpoint {
                    name: "step".into(),
                    data: vec![1, 2, 3],
                }),
            },
        }
    }

    #[test]
    fn records_round_trip() {
        let records = [
            sample(),
            Record {
                body: RecordBody::Completed(
                    StoredResponse::new(200, b"body".to_vec()).with_header("a", b"b".to_vec()),
                ),
                ..sample()
            },
        ];
        for record in records {
            let bytes = encode_record(&record).map_err(|e| e.to_string());
            let decoded = bytes.and_then(|b| decode_record(&b).map_err(|e| e.to_string()));
            assert_eq!(decoded, Ok(record));
        }
    }

    #[test]
    fn the_head_decoder_reads_what_the_full_decoder_reads() {
        for body in [
            sample().body,
            RecordBody::Completed(StoredResponse::new(1, vec![9; 300])),
            RecordBody::Failed(StoredResponse::new(2, Vec::new())),
        ] {
            let record = Record { body, ..sample() };
            let bytes = encode_record(&record).expect("encodes");
            let head = decode_record_head(&bytes).expect("decodes");
            let state = match record.body {
                RecordBody::Running { .. } => 0,
                RecordBody::Completed(_) => 1,
                RecordBody::Failed(_) => 2,
            };
            assert_eq!((head.expires_at, head.state), (record.expires_at, state));
        }
        assert!(decode_record_head(&[]).is_err());
        assert!(decode_record_head(&[1, 2, 3]).is_err());
    }

    #[test]
    fn bad_record_bytes_are_typed_errors() {
        assert!(matches!(decode_record(&[]), Err(Error::Corrupted(_))));
        assert!(matches!(decode_record(&[9, 0]), Err(Error::Corrupted(_))));
        let Ok(mut bytes) = encode_record(&sample()) else {
            panic!("encoding failed")
        };
        bytes.push(0);
        assert!(matches!(decode_record(&bytes), Err(Error::Corrupted(_))));
        bytes.truncate(10);
        assert!(matches!(decode_record(&bytes), Err(Error::Corrupted(_))));
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_it() {
        // version, fingerprint, then varint lengths claiming ~2^63 bytes of headers and body.
        let mut bytes = vec![RECORD_V1];
        bytes.extend([0u8; 32]);
        bytes.extend([1, 1, 1, 1, 2]);
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(decode_record(&bytes), Err(Error::Corrupted(_))));
    }

    #[test]
    fn expiry_keys_sort_by_time() {
        let early = expiry_key(5, KIND_RECORD, &[0xff; 32]);
        let late = expiry_key(256, KIND_RECORD, &[0; 32]);
        assert!(early < late);
        assert!(matches!(decode_expiry_key(&late), Ok((256, KIND_RECORD, id)) if id == [0; 32]));
        assert!(decode_expiry_key(&late[..40]).is_err());
    }

    #[test]
    fn rate_values_round_trip_and_reject_garbage() {
        for state in [
            RateState::Gcra { tat: 7 },
            RateState::FixedWindow {
                window: 60,
                count: 3,
            },
            RateState::SlidingWindow {
                window: 60,
                previous: 4,
                current: u64::MAX,
            },
        ] {
            let rate = StoredRate { state, idle_at: 99 };
            assert_eq!(decode_rate(&encode_rate(&rate)).ok(), Some(rate));
        }
        let good = encode_rate(&StoredRate {
            state: RateState::Gcra { tat: 1 },
            idle_at: 1,
        });
        assert!(decode_rate(&good[..10]).is_err());
        let mut bad_kind = good;
        bad_kind[1] = 9;
        assert!(decode_rate(&bad_kind).is_err());
        let mut bad_version = good;
        bad_version[0] = 2;
        assert!(decode_rate(&bad_version).is_err());
        assert!(decode_rate(&[]).is_err());
    }

    #[test]
    fn meta_values_round_trip_and_reject_garbage() {
        assert!(matches!(decode_meta("x", &encode_meta(42)), Ok(42)));
        assert!(decode_meta("x", &[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_meta("x", &[1, 0]).is_err());
    }
}
