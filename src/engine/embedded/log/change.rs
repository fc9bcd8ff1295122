//! The payload of a batch frame: the changes of whole commands, in the order they were applied.
//!
//! Each change is a tag byte and its fields (integers little-endian; values in the engines'
//! shared codec, `engine::codec`):
//!
//! ```text
//! tag 1  put record    digest [32], length u32, encoded record [length]
//! tag 2  delete record digest [32]
//! tag 3  put counter   key [16], encoded counter [RATE_VALUE_LEN]
//! tag 4  delete counter key [16]
//! tag 5  counters      next lease token u64, clock high-water mark u64 (ns)
//! ```
//!
//! A change sets a state, never a difference, so applying a frame twice, or applying an older
//! frame's change before a newer one of the same key, ends in the newer state: recovery may
//! replay frames redb already holds.

use crate::engine::codec::{self, RATE_VALUE_LEN, StoredRate};
use crate::error::Error;
use crate::idempotency::{Digest, Record};

const PUT_RECORD: u8 = 1;
const DELETE_RECORD: u8 = 2;
const PUT_RATE: u8 = 3;
const DELETE_RATE: u8 = 4;
const COUNTERS: u8 = 5;

/// One change, as recovery reads it back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    PutRecord(Digest, Record),
    DeleteRecord(Digest),
    PutRate([u8; 16], StoredRate),
    DeleteRate([u8; 16]),
    /// The writer's counters once the frame's commands were applied.
    Counters {
        next_token: u64,
        clock: u64,
    },
}

/// Appends a record put, its value already encoded.
pub(crate) fn put_record(out: &mut Vec<u8>, digest: &Digest, encoded: &[u8]) {
    out.reserve(1 + 32 + 4 + encoded.len());
    out.push(PUT_RECORD);
    out.extend_from_slice(digest.as_bytes());
    let length = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(encoded);
}

pub(crate) fn delete_record(out: &mut Vec<u8>, digest: &Digest) {
    out.push(DELETE_RECORD);
    out.extend_from_slice(digest.as_bytes());
}

/// Appends a counter's new state (`None`: deleted).
pub(crate) fn put_rate(out: &mut Vec<u8>, key: &[u8; 16], rate: Option<&StoredRate>) {
    if let Some(rate) = rate {
        out.push(PUT_RATE);
        out.extend_from_slice(key);
        out.extend_from_slice(&codec::encode_rate(rate));
    } else {
        out.push(DELETE_RATE);
        out.extend_from_slice(key);
    }
}

pub(crate) fn counters(out: &mut Vec<u8>, next_token: u64, clock: u64) {
    out.push(COUNTERS);
    out.extend_from_slice(&next_token.to_le_bytes());
    out.extend_from_slice(&clock.to_le_bytes());
}

/// Appends `change` (test support and recovery tests: the writer appends encoded values).
#[cfg(test)]
pub(crate) fn encode(out: &mut Vec<u8>, change: &Change) -> Result<(), Error> {
    match change {
        Change::PutRecord(digest, record) => {
            put_record(out, digest, &codec::encode_record(record)?);
        }
        Change::DeleteRecord(digest) => delete_record(out, digest),
        Change::PutRate(key, rate) => put_rate(out, key, Some(rate)),
        Change::DeleteRate(key) => put_rate(out, key, None),
        Change::Counters { next_token, clock } => counters(out, *next_token, *clock),
    }
    Ok(())
}

/// Reads bytes off the front of a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Corrupted(
                "a log frame's change runs past the frame".into(),
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, Error> {
        self.array().map(u64::from_le_bytes)
    }
}

/// Decodes every change of a payload. A frame whose MAC holds was written by this store, so a
/// change that does not decode is damage (or a bug), reported as [`Error::Corrupted`], never
/// taken for the log's end.
pub(crate) fn decode(payload: &[u8]) -> Result<Vec<Change>, Error> {
    let mut reader = Reader(payload);
    let mut out = Vec::new();
    while let Some(&tag) = reader.0.first() {
        reader.take(1)?;
        out.push(match tag {
            PUT_RECORD => {
                let digest = Digest(reader.array()?);
                let length = u32::from_le_bytes(reader.array()?) as usize;
                Change::PutRecord(digest, codec::decode_record(reader.take(length)?)?)
            }
            DELETE_RECORD => Change::DeleteRecord(Digest(reader.array()?)),
            PUT_RATE => {
                let key = reader.array()?;
                Change::PutRate(key, codec::decode_rate(reader.take(RATE_VALUE_LEN)?)?)
            }
            DELETE_RATE => Change::DeleteRate(reader.array()?),
            COUNTERS => Change::Counters {
                next_token: reader.u64()?,
                clock: reader.u64()?,
            },
            other => {
                return Err(Error::Corrupted(format!(
                    "a log frame holds a change of unknown kind {other}"
                )));
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{RecordBody, StoredResponse};
    use crate::ratelimit::RateState;

    pub(crate) fn sample() -> Vec<Change> {
        let record = Record {
            fingerprint: [3; 32],
            created_at: 10,
            expires_at: 20,
            attempts: 1,
            record_ttl: 5,
            body: RecordBody::Completed(StoredResponse::new(200, b"body".to_vec())),
        };
        vec![
            Change::PutRecord(Digest([1; 32]), record),
            Change::DeleteRecord(Digest([2; 32])),
            Change::PutRate(
                [4; 16],
                StoredRate {
                    state: RateState::Gcra { tat: 99 },
                    idle_at: 100,
                },
            ),
            Change::DeleteRate([5; 16]),
            Change::Counters {
                next_token: 7,
                clock: 8,
            },
        ]
    }

    #[test]
    fn changes_round_trip() {
        let mut out = Vec::new();
        for change in sample() {
            encode(&mut out, &change).expect("encode");
        }
        assert_eq!(decode(&out).expect("decode"), sample());
    }

    #[test]
    fn a_truncated_or_unknown_change_is_corruption() {
        let mut out = Vec::new();
        for change in sample() {
            encode(&mut out, &change).expect("encode");
        }
        for cut in 1..out.len() {
            // Every strict prefix either ends on a change boundary (fewer changes) or is refused.
            if let Ok(changes) = decode(&out[..cut]) {
                assert!(changes.len() < sample().len());
            }
        }
        assert!(matches!(decode(&[9]), Err(Error::Corrupted(_))));
        // A record length that points past the payload is refused without allocating it.
        let mut huge = vec![PUT_RECORD];
        huge.extend_from_slice(&[0; 32]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(Error::Corrupted(_))));
    }
}
