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
//! ```
//!
//! Every value starts with a version byte, so a later format can be told apart and refused or
//! migrated. Decoding never trusts the input: a wrong version, a truncated or over-long value is a
//! typed [`Error::Corrupted`], and postcard never allocates more than the input holds.

use crate::error::Error;
use crate::idempotency::Record;

/// Version byte of record values.
pub(crate) const RECORD_V1: u8 = 1;
/// Version byte of meta values.
pub(crate) const META_V1: u8 = 1;

/// Length of an expiry-index key.
pub(crate) const EXPIRY_KEY_LEN: usize = 8 + 1 + 32;
/// Expiry-index kind of an idempotency record.
pub(crate) const KIND_RECORD: u8 = 1;

pub(crate) fn encode_record(record: &Record) -> Result<Vec<u8>, Error> {
    let mut out = vec![RECORD_V1];
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
    fn meta_values_round_trip_and_reject_garbage() {
        assert!(matches!(decode_meta("x", &encode_meta(42)), Ok(42)));
        assert!(decode_meta("x", &[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_meta("x", &[1, 0]).is_err());
    }
}
