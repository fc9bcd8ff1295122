//! The embedded engine's records: reads from a read transaction on the caller's thread (never
//! waiting for the writer), changes through the writer.

use super::Embedded;
use super::command::Command;
use crate::engine::processes::owner_epoch;
use crate::engine::{BeginRequest, BulkRecords, Early, RecordEngine, Seen};
use crate::error::Result;
use crate::idempotency::machine::{self, BeginDecision, Resolution};
use crate::idempotency::{Digest, Record};

impl Embedded {
    /// The latest acknowledged record (the overlay's, else redb's), and, if there is none and
    /// the store writes through its log, the overlay's generation read before looking: the
    /// writer may trust the absence while the generation holds (see `log::overlay`).
    fn read_seen(&self, digest: &Digest) -> Result<(Option<Record>, Seen)> {
        self.with_backend(|backend, overlay| {
            let Some(overlay) = overlay else {
                return Ok((backend.read_record(digest)?, Seen::Nothing));
            };
            let generation = overlay.generation();
            match overlay.record(digest) {
                Some(latest) => Ok((latest.map(|record| (*record).clone()), Seen::Nothing)),
                None => match backend.read_record(digest)? {
                    Some(record) => Ok((Some(record), Seen::Nothing)),
                    None => Ok((None, Seen::Absent { generation })),
                },
            }
        })
    }
}

impl RecordEngine for Embedded {
    fn now(&self) -> u64 {
        self.time.now()
    }

    fn read(&self, digest: &Digest) -> Result<Option<Record>> {
        self.read_seen(digest).map(|(record, _)| record)
    }

    fn begin_without_writing(&self, digest: &Digest, request: BeginRequest) -> Result<Early> {
        let (record, seen) = self.read_seen(digest)?;
        let Some(record) = record else {
            return Ok(Early::Write(seen));
        };
        let now = self.time.now();
        let epoch = request.holder.unwrap_or(self.epoch());
        let owner_epoch = owner_epoch(self.processes(), Some(&record), epoch, now);
        let params = request.params(now, epoch, owner_epoch, 0);
        Ok(match machine::begin(Some(&record), &params) {
            BeginDecision::Acquired { .. } => Early::Write(Seen::Nothing),
            decision => Early::Answer(decision, record),
        })
    }

    fn begin(&self, digest: Digest, request: BeginRequest, seen: Seen) -> Result<BeginDecision> {
        self.send(|reply| Command::Begin {
            digest,
            request,
            seen,
            reply,
        })
    }

    fn resolve(&self, digest: Digest, token: u64, resolution: Resolution) -> Result<Option<u64>> {
        self.send(|reply| Command::Resolve {
            digest,
            token,
            resolution,
            reply,
        })
    }

    fn list(&self, after: Option<&Digest>, limit: usize) -> Result<Vec<(Digest, Result<Record>)>> {
        self.with_backend(|backend, overlay| {
            let Some(overlay) = overlay else {
                return backend.list_records(after, limit);
            };
            // The overlay's entries replace redb's (or remove them): redb is asked for enough
            // more that the first `limit` of the merge are all there.
            let latest = overlay.records_after(after);
            let mut merged: std::collections::BTreeMap<[u8; 32], Result<Record>> = backend
                .list_records(after, limit.saturating_add(latest.len()))?
                .into_iter()
                .map(|(digest, record)| (*digest.as_bytes(), record))
                .collect();
            for (digest, record) in latest {
                match record {
                    Some(record) => merged.insert(*digest.as_bytes(), Ok((*record).clone())),
                    None => merged.remove(digest.as_bytes()),
                };
            }
            Ok(merged
                .into_iter()
                .take(limit)
                .map(|(digest, record)| (Digest(digest), record))
                .collect())
        })
    }

    fn bulk_load(&self, count: u64, records: BulkRecords) -> Result<u64> {
        self.send(|reply| Command::Bulk {
            count,
            records,
            reply,
        })
    }
}
