//! The embedded engine's records: reads from a read transaction on the caller's thread (never
//! waiting for the writer), changes through the writer.

use super::Embedded;
use super::writer::Command;
use crate::engine::{BeginRequest, BulkRecords, RecordEngine};
use crate::error::Result;
use crate::idempotency::machine::{self, BeginDecision, BeginParams, Resolution};
use crate::idempotency::{Digest, Record};

impl RecordEngine for Embedded {
    fn now(&self) -> u64 {
        self.time.now()
    }

    fn read(&self, digest: &Digest) -> Result<Option<Record>> {
        self.with_backend(|backend, overlay| {
            match overlay.and_then(|overlay| overlay.record(digest)) {
                Some(latest) => Ok(latest.map(|record| (*record).clone())),
                None => backend.read_record(digest),
            }
        })
    }

    fn begin_without_writing(
        &self,
        digest: &Digest,
        request: BeginRequest,
    ) -> Result<Option<(BeginDecision, Record)>> {
        let Some(record) = self.read(digest)? else {
            return Ok(None);
        };
        let params = BeginParams {
            fingerprint: request.fingerprint,
            now: self.time.now(),
            epoch: self.epoch(),
            owner_epoch: self.epoch(),
            lease_ttl: request.lease_ttl,
            record_ttl: request.record_ttl,
            next_token: 0,
        };
        Ok(match machine::begin(Some(&record), &params) {
            BeginDecision::Acquired { .. } => None,
            decision => Some((decision, record)),
        })
    }

    fn begin(&self, digest: Digest, request: BeginRequest) -> Result<BeginDecision> {
        self.send(|reply| Command::Begin {
            digest,
            request,
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
