//! What each command does inside the writer's transaction.
//!
//! The [`Sequencer`] owns the state that orders writes (the boot epoch, the next lease token, the
//! record counts) and applies one command at a time to the open tables: it reads what it needs,
//! asks the pure rules (`idempotency::machine`, `ratelimit::charge`) what to do, and writes the
//! result, keeping the answer in the command. The writer (`writer.rs`) owns batching, commits
//! and answers.

use std::sync::Arc;

use super::command::{Applied, Command};
use super::storage::RecordCounts;
use super::txn::Txn;
use crate::clock::StoreTime;
use crate::engine::processes::{Processes, owner_epoch};
use crate::engine::{BeginRequest, BulkRecords, Seen, lease_expiry, stored_rate};
use crate::error::Error;
use crate::idempotency::Digest;
use crate::idempotency::machine::{self, BeginDecision, Effect, Resolution};
use crate::ratelimit::charge::{self, RateOp, RateOutcome};
use crate::ratelimit::crash_policy::Recovery;

/// Expired records removed, at most, to make room when the store is at `max_records`.
const CAPACITY_SWEEP: usize = 64;

/// The writer's in-memory counters and limits, applied to each command.
pub(crate) struct Sequencer {
    pub time: Arc<StoreTime>,
    pub epoch: u64,
    /// Whose leases are live: decides whether a RUNNING record's lease may be taken over.
    pub processes: Arc<Processes>,
    pub next_token: u64,
    pub max_records: Option<u64>,
    pub recovery: Recovery,
    /// Records on disk by state, as of the last commit.
    pub record_counts: RecordCounts,
}

impl Sequencer {
    /// Applies one command to the open tables, keeping its answer in the command. A storage
    /// error is returned instead (it is the whole batch's).
    pub(crate) fn execute(
        &mut self,
        tables: &mut impl Txn,
        command: &mut Command,
    ) -> Result<Applied, Error> {
        let now = self.time.now();
        match command {
            Command::Begin {
                digest,
                request,
                seen,
                reply,
            } => {
                if let Seen::Absent { generation } = seen {
                    tables.absent_since(digest, *generation);
                }
                let outcome = self.begin(tables, digest, request, now);
                reply.set(outcome)
            }
            Command::Resolve {
                digest,
                token,
                resolution,
                reply,
            } => reply.set(resolve(tables, digest, *token, resolution, now)),
            Command::Rate { op, reply } => {
                let outcome = self.rate(tables, op, now);
                reply.set(outcome)
            }
            // A flush is handled by the writer itself, after the batch (see `apply`).
            Command::Flush { .. } | Command::Shutdown => Ok(Applied::Done),
            Command::Compact { limit, reply } => reply.set(tables.sweep(now, *limit)),
            Command::Bulk {
                count,
                records,
                reply,
            } => {
                let outcome = self.bulk(tables, *count, records, now);
                reply.set(outcome)
            }
        }
    }

    /// Writes every record `records` yields (called with 0, 1, 2, … until it returns `None`).
    fn bulk(
        &mut self,
        tables: &mut impl Txn,
        count: u64,
        records: &mut BulkRecords,
        now: u64,
    ) -> Result<u64, Error> {
        if let Some(limit) = self.max_records {
            // Checked before writing anything, so that a refusal leaves nothing half-loaded.
            // (Conservative: a record that replaces one with the same key counts as new.)
            let total = |tables: &mut dyn Txn| -> Result<u64, Error> {
                Ok(tables.record_count()?.saturating_add(count))
            };
            if total(tables)? > limit {
                tables.sweep(now, usize::MAX)?;
                if total(tables)? > limit {
                    return Err(Error::CapacityExceeded { limit });
                }
            }
        }
        let mut written = 0;
        while let Some((digest, record)) = records(written, now) {
            let existing = tables.record(&digest)?;
            tables.put_record(&digest, existing.as_ref(), &record)?;
            written += 1;
        }
        Ok(written)
    }

    fn rate(
        &self,
        tables: &mut impl Txn,
        op: &RateOp,
        now: u64,
    ) -> Result<(RateOutcome, bool), Error> {
        let mut states = Vec::with_capacity(op.targets.len());
        for target in &op.targets {
            let on_disk = tables.rate(&target.key.0)?.map(|rate| rate.state);
            states.push(self.recovery.on_load(&target.spec, on_disk, now));
        }
        let (outcome, changed) = charge::apply(op.kind, &op.targets, &mut states, now);
        if changed {
            for (target, state) in op.targets.iter().zip(states) {
                tables.put_rate(
                    &target.key.0,
                    stored_rate(&target.spec, state, now).as_ref(),
                )?;
            }
        }
        Ok((outcome, changed))
    }

    fn begin(
        &mut self,
        tables: &mut impl Txn,
        digest: &Digest,
        request: &BeginRequest,
        now: u64,
    ) -> Result<BeginDecision, Error> {
        let existing = tables.record(digest)?;
        let epoch = request.holder.unwrap_or(self.epoch);
        let owner_epoch = owner_epoch(&self.processes, existing.as_ref(), epoch, now);
        let params = request.params(now, epoch, owner_epoch, self.next_token);
        let decision = machine::begin(existing.as_ref(), &params);
        if let BeginDecision::Acquired { record, .. } = &decision {
            if existing.is_none() {
                self.make_room(tables, now)?;
            }
            tables.put_record(digest, existing.as_ref(), record)?;
            self.next_token = self.next_token.saturating_add(1);
        }
        Ok(decision)
    }

    /// Refuses a new record when the store is full, after removing already-expired records (never
    /// live ones: nothing is evicted).
    fn make_room(&self, tables: &mut impl Txn, now: u64) -> Result<(), Error> {
        let Some(limit) = self.max_records else {
            return Ok(());
        };
        if tables.record_count()? < limit {
            return Ok(());
        }
        tables.sweep(now, CAPACITY_SWEEP)?;
        if tables.record_count()? < limit {
            Ok(())
        } else {
            Err(Error::CapacityExceeded { limit })
        }
    }
}

/// Applies a lease owner's resolution, fenced by its token.
fn resolve(
    tables: &mut impl Txn,
    digest: &Digest,
    token: u64,
    resolution: &Resolution,
    now: u64,
) -> Result<Option<u64>, Error> {
    let existing = tables.record(digest)?;
    let effect = machine::resolve(existing.as_ref(), token, resolution.clone(), now)
        .map_err(|machine::Fenced| Error::LeaseLost)?;
    match effect {
        Effect::Put(record) => {
            tables.put_record(digest, existing.as_ref(), &record)?;
            Ok(lease_expiry(&record))
        }
        Effect::Delete => {
            if let Some(old) = &existing {
                tables.delete_record(digest, old)?;
            }
            Ok(None)
        }
    }
}
