//! Between the two round trips of a batch: every change decided in arrival order, on the locked
//! rows, by the pure rules (`idempotency::machine`, `ratelimit::charge`), at the clock reading of
//! the lock statement. Changes to one key see the ones before them; a change's logical error is
//! its caller's answer and writes nothing.
//!
//! Fencing on PostgreSQL, in one list (DESIGN, P1, P3 and P4): a lease's token comes from the schema's
//! sequence (`lock.sql`, kind `Token`); a RUNNING record's owner epoch is its node's current one
//! (`lock.sql`, kind `Record`; this node's own once the batch wrote the row); a node whose id was
//! opened again since is superseded (`lock.sql`, kind `NodeEpoch`, checked in `lock.rs`); a
//! resolution with a stale token is refused by `machine::resolve` (here).

use std::collections::BTreeMap;

use super::Answer;
use super::Change;
use super::lock::{Locked, RateRow, RecordRow};
use crate::engine::postgres::node::NodeInfo;
use crate::engine::{BeginRequest, lease_expiry};
use crate::error::{Error, Result};
use crate::idempotency::machine::{self, BeginDecision, Effect, Resolution};
use crate::ratelimit::charge::{self, RateOp, RateOutcome};

/// Decides every change on `locked`, leaving the rows as the batch would write them: each
/// caller's answer, and how many changes will be written.
pub(super) fn decide(
    locked: &mut Locked,
    node: &NodeInfo,
    changes: &[Change],
) -> (Vec<Answer>, u64) {
    let now = locked.now;
    let mut next_token = std::mem::take(&mut locked.tokens).into_iter();
    let mut answers = Vec::with_capacity(changes.len());
    let mut writes = 0u64;
    for change in changes {
        let answer = match change {
            Change::Begin {
                digest, request, ..
            } => Answer::Begin(
                unlocked_record(locked.records.get_mut(&digest.0))
                    .and_then(|row| begin(row, node, *request, now, &mut next_token)),
            ),
            Change::Resolve {
                digest,
                token,
                resolution,
                ..
            } => Answer::Resolve(
                unlocked_record(locked.records.get_mut(&digest.0))
                    .and_then(|row| resolve(row, *token, resolution, now)),
            ),
            Change::Rate { op, .. } => Answer::Rate(rate(&mut locked.rates, op, now)),
        };
        writes += u64::from(answer.writes());
        answers.push(answer);
    }
    (answers, writes)
}

/// The row a change's record was locked in; every record of the batch is (a bug otherwise).
fn unlocked_record(row: Option<&mut RecordRow>) -> Result<&mut RecordRow> {
    row.ok_or_else(|| Error::Internal("a batch's record was not locked".into()))
}

fn begin(
    row: &mut RecordRow,
    node: &NodeInfo,
    request: BeginRequest,
    now: u64,
    tokens: &mut impl Iterator<Item = u64>,
) -> Result<BeginDecision> {
    let current = row.current.clone().map_err(Error::Corrupted)?;
    let owner_epoch = if row.changed {
        node.owner_epoch
    } else {
        row.owner_epoch
    };
    // Tokens come from the sequence, one per begin of the batch (unused ones are skipped).
    let token = tokens
        .next()
        .ok_or_else(|| Error::Internal("a batch's begin got no lease token".into()))?;
    let params = request.params(now, node.epoch, owner_epoch, token);
    let decision = machine::begin(current.as_ref(), &params);
    if let BeginDecision::Acquired { record, .. } = &decision {
        row.current = Ok(Some(record.clone()));
        row.changed = true;
    }
    Ok(decision)
}

fn resolve(
    row: &mut RecordRow,
    token: u64,
    resolution: &Resolution,
    now: u64,
) -> Result<Option<u64>> {
    let current = row.current.clone().map_err(Error::Corrupted)?;
    let effect = machine::resolve(current.as_ref(), token, resolution.clone(), now)
        .map_err(|machine::Fenced| Error::LeaseLost)?;
    row.changed = true;
    match effect {
        Effect::Put(record) => {
            let expiry = lease_expiry(&record);
            row.current = Ok(Some(record));
            Ok(expiry)
        }
        Effect::Delete => {
            row.current = Ok(None);
            Ok(None)
        }
    }
}

fn rate(
    rates: &mut BTreeMap<[u8; 16], RateRow>,
    op: &RateOp,
    now: u64,
) -> Result<(RateOutcome, bool)> {
    let mut states = Vec::with_capacity(op.targets.len());
    for target in &op.targets {
        let row = rates
            .get(&target.key.0)
            .ok_or_else(|| Error::Internal("a batch's counter was not locked".into()))?;
        states.push(row.current.clone().map_err(Error::Corrupted)?);
    }
    let (outcome, changed) = charge::apply(op.kind, &op.targets, &mut states, now);
    if changed {
        for (target, state) in op.targets.iter().zip(states) {
            if let Some(row) = rates.get_mut(&target.key.0) {
                row.current = Ok(state);
                row.spec = Some(target.spec);
                row.changed = true;
            }
        }
    }
    Ok((outcome, changed))
}
