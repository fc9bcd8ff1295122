//! Round trip 1 of a batch: `lock.sql` locks every record and counter the batch touches (in key
//! order, records before counters, so batches never deadlock on shared keys) and reads the
//! database clock, the batch's lease tokens and this node's epoch. Its rows come back tagged by
//! [`RowKind`]; this file turns them into [`Locked`], what the decisions read.

use std::collections::BTreeMap;

use super::hints::Hints;
use super::{Attempt, Change, failed, is_cut};
use crate::engine::codec;
use crate::engine::postgres::node::NodeInfo;
use crate::engine::postgres::pipe::{Failure, Pipe};
use crate::engine::postgres::session::classify;
use crate::engine::postgres::sql::Tables;
use crate::error::{Error, Result};
use crate::idempotency::{Record, RecordBody};
use crate::ratelimit::{RateState, Spec};

/// What a row of `lock.sql` is (its `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    /// The database clock (`number`: nanoseconds since the Unix epoch).
    Clock,
    /// One fresh lease token from the sequence (`number`).
    Token,
    /// A locked record (`key`: its digest, `value`: the stored record, `number`: its owner's
    /// current epoch, 0 if the owner never registered).
    Record,
    /// A locked counter (`key`, `value`).
    Counter,
    /// This node's current epoch (`number`): fencing against a second store that opened this
    /// node's id since this one did.
    NodeEpoch,
}

impl RowKind {
    /// The kind `lock.sql` tags a row with; `None` for a tag it never sends.
    fn of(tag: i32) -> Option<RowKind> {
        Some(match tag {
            0 => RowKind::Clock,
            1 => RowKind::Token,
            2 => RowKind::Record,
            3 => RowKind::Counter,
            4 => RowKind::NodeEpoch,
            _ => return None,
        })
    }
}

/// A record row as locked, and as the batch leaves it.
pub(super) struct RecordRow {
    /// Whether the row existed when locked.
    pub existed: bool,
    /// The state it counted in when locked (for the counts).
    pub old_slot: Option<usize>,
    /// The owner's current epoch, from `nodes`.
    pub owner_epoch: u64,
    /// The record now (`Err`: the stored value does not decode).
    pub current: Result<Option<Record>, String>,
    /// Whether this batch wrote it (so its owner is this node).
    pub changed: bool,
}

/// A counter row as locked, and as the batch leaves it.
pub(super) struct RateRow {
    pub existed: bool,
    /// The stored value as locked (for the node's hints).
    pub stored: Option<Vec<u8>>,
    pub current: Result<Option<RateState>, String>,
    /// The spec it was last written under (for its idle time).
    pub spec: Option<Spec>,
    pub changed: bool,
}

/// A batch's rows, locked, with the clock reading and the lease tokens it decides with.
pub(super) struct Locked {
    pub records: BTreeMap<[u8; 32], RecordRow>,
    pub rates: BTreeMap<[u8; 16], RateRow>,
    /// The database clock's reading in the lock statement.
    pub now: u64,
    /// One fresh token per begin of the batch, in order.
    pub tokens: Vec<u64>,
    /// The version of the statements for the tables the batch touches.
    pub tables: Tables,
}

/// The slot of `record`'s state in the record counts: running, completed, failed.
pub(super) fn state_slot(record: &Record) -> usize {
    match record.body {
        RecordBody::Running { .. } => 0,
        RecordBody::Completed(_) => 1,
        RecordBody::Failed(_) => 2,
    }
}

/// Locks the rows of `changes` and reads the clock, the tokens and this node's epoch; draws a
/// spare token for `hints` (for the next lone begin, `lone.rs`) if they hold none or the batch
/// draws tokens.
///
/// # Errors
/// The attempt's end when the lock fails: a retry, a reconnect (the connection was found cut),
/// or a failure ([`Error::Superseded`] when this node's epoch moved on).
pub(super) fn lock(
    pipe: &mut Pipe,
    node: &NodeInfo,
    changes: &[Change],
    hints: &Hints,
) -> Result<Locked, Attempt> {
    let mut records: BTreeMap<[u8; 32], RecordRow> = BTreeMap::new();
    let mut rates: BTreeMap<[u8; 16], RateRow> = BTreeMap::new();
    let mut begins = 0i32;
    for change in changes {
        match change {
            Change::Begin { digest, .. } | Change::Resolve { digest, .. } => {
                if matches!(change, Change::Begin { .. }) {
                    begins += 1;
                }
                records.entry(digest.0).or_insert_with(|| RecordRow {
                    existed: false,
                    old_slot: None,
                    owner_epoch: 0,
                    current: Ok(None),
                    changed: false,
                });
            }
            Change::Rate { op, .. } => {
                for target in &op.targets {
                    rates.entry(target.key.0).or_insert_with(|| RateRow {
                        existed: false,
                        stored: None,
                        current: Ok(None),
                        spec: None,
                        changed: false,
                    });
                }
            }
        }
    }
    let digests: Vec<&[u8]> = records.keys().map(<[u8; 32]>::as_slice).collect();
    let keys: Vec<&[u8]> = rates.keys().map(<[u8; 16]>::as_slice).collect();
    let tables = Tables::of(!records.is_empty(), !rates.is_empty());
    // A spare must be the largest token this node drew, so that a lone begin's lease token
    // follows the leases granted before it: a batch that draws tokens draws a new spare too.
    let spare = hints.enabled() && (begins > 0 || !hints.has_spare());
    let wanted = begins + i32::from(spare);
    let rows = match pipe.lock(tables, &[&digests, &keys, &wanted, &node.id]) {
        Ok(rows) => rows,
        Err(Failure::Postgres(error)) if is_cut(&error) => {
            return Err(Attempt::Reconnect(classify(
                &error,
                "cannot lock the batch's rows",
            )));
        }
        Err(failure) => return Err(failed(failure, "cannot lock the batch's rows")),
    };
    let mut locked = Locked {
        records,
        rates,
        now: 0,
        tokens: Vec::with_capacity(usize::try_from(begins).unwrap_or(0)),
        tables,
    };
    for row in &rows {
        read_row(row, node, &mut locked).map_err(Attempt::Failed)?;
    }
    // The sequence's values come in order: the last, the largest, is the spare.
    if spare && let Some(token) = locked.tokens.pop() {
        hints.put_spare(token);
    }
    Ok(locked)
}

/// Takes one row of `lock.sql` into `locked`.
fn read_row(row: &postgres::Row, node: &NodeInfo, locked: &mut Locked) -> Result<()> {
    let bad = |_| Error::Corrupted("the lock statement sent a malformed row".into());
    let tag: i32 = row.try_get(0).map_err(bad)?;
    let key: Option<&[u8]> = row.try_get(1).map_err(bad)?;
    let stored: Option<&[u8]> = row.try_get(2).map_err(bad)?;
    let number: i64 = row.try_get(3).map_err(bad)?;
    let value = u64::try_from(number).unwrap_or(0);
    match (RowKind::of(tag), key, stored) {
        (Some(RowKind::Clock), _, _) => locked.now = value,
        (Some(RowKind::NodeEpoch), _, _) if value != node.epoch => return Err(Error::Superseded),
        (Some(RowKind::Token), _, _) => locked.tokens.push(value),
        (Some(RowKind::Record), Some(key), Some(stored)) => {
            if let Some(row) = <[u8; 32]>::try_from(key)
                .ok()
                .and_then(|key| locked.records.get_mut(&key))
            {
                row.existed = true;
                row.owner_epoch = value;
                row.current = codec::decode_record(stored)
                    .map(Some)
                    .map_err(|error| error.to_string());
                row.old_slot = row
                    .current
                    .as_ref()
                    .ok()
                    .and_then(Option::as_ref)
                    .map(state_slot);
            }
        }
        (Some(RowKind::Counter), Some(key), Some(stored)) => {
            if let Some(row) = <[u8; 16]>::try_from(key)
                .ok()
                .and_then(|key| locked.rates.get_mut(&key))
            {
                row.existed = true;
                row.stored = Some(stored.to_vec());
                row.current = codec::decode_rate(stored)
                    .map(|stored| Some(stored.state))
                    .map_err(|error| error.to_string());
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::RowKind;

    #[test]
    fn every_tag_of_lock_sql_has_its_kind() {
        let tags = [
            (0, RowKind::Clock),
            (1, RowKind::Token),
            (2, RowKind::Record),
            (3, RowKind::Counter),
            (4, RowKind::NodeEpoch),
        ];
        for (tag, kind) in tags {
            assert_eq!(RowKind::of(tag), Some(kind));
            // lock.sql tags its rows with these numbers: the statement and the enum agree.
            assert!(
                include_str!("../sql/lock.sql").contains(&format!("SELECT {tag}")),
                "lock.sql sends no row of kind {tag}"
            );
        }
        assert_eq!(RowKind::of(5), None);
    }
}
