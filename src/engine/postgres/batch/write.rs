//! Round trip 2 of a batch: `write.sql` updates, creates and deletes the records and counters the
//! decisions changed, adds the batch's deltas to this connection's record and counter counts,
//! and the `COMMIT` goes with it. A row created since the lock makes the insert fail with a
//! unique violation: the batch starts over. The commit's outcome decides every answer: sent once
//! committed, `InDoubt` for a change that would have been written when the connection failed on
//! the way.

use tokio_postgres::types::ToSql;

use super::hints::{Hints, RecordHint};
use super::lock::{Locked, state_slot};
use super::{Answer, Attempt, Stats, timed_out, to_i64};
use crate::engine::postgres::node::NodeInfo;
use crate::engine::postgres::pipe::{Failure, Pipe};
use crate::engine::postgres::session::{Kind, classify, kind, unavailable};
use crate::engine::{codec, stored_rate};
use crate::error::Result;
use crate::idempotency::Record;

/// What the decisions changed, as `write.sql`'s column arrays.
pub(super) struct Columns {
    update: RecordColumns,
    create: RecordColumns,
    remove: Vec<Vec<u8>>,
    rate_update: RateColumns,
    rate_create: RateColumns,
    rate_remove: Vec<Vec<u8>>,
    /// What the batch adds to the running, completed, failed and counter counts.
    counts: [i64; 4],
}

impl Columns {
    /// The rows of `locked` the decisions changed.
    ///
    /// # Errors
    /// A record that cannot be encoded.
    pub(super) fn of(locked: &Locked, node: &NodeInfo) -> Result<Columns> {
        let mut columns = Columns {
            update: RecordColumns::default(),
            create: RecordColumns::default(),
            remove: Vec::new(),
            rate_update: RateColumns::default(),
            rate_create: RateColumns::default(),
            rate_remove: Vec::new(),
            counts: [0; 4],
        };
        let counts = &mut columns.counts;
        for (digest, row) in &locked.records {
            if !row.changed {
                continue;
            }
            let Ok(current) = &row.current else { continue };
            if let Some(old) = row.old_slot {
                counts[old] -= 1;
            }
            match (row.existed, current) {
                (true, Some(record)) => {
                    columns.update.push(digest, record, node)?;
                    counts[state_slot(record)] += 1;
                }
                (true, None) => columns.remove.push(digest.to_vec()),
                (false, Some(record)) => {
                    columns.create.push(digest, record, node)?;
                    counts[state_slot(record)] += 1;
                }
                (false, None) => {}
            }
        }
        for (key, row) in &locked.rates {
            if !row.changed {
                continue;
            }
            let (Ok(state), Some(spec)) = (&row.current, &row.spec) else {
                continue;
            };
            let stored = stored_rate(spec, *state, locked.now);
            match (row.existed, stored) {
                (true, Some(stored)) => columns.rate_update.push(key, &stored),
                (true, None) => {
                    columns.rate_remove.push(key.to_vec());
                    counts[3] -= 1;
                }
                (false, Some(stored)) => {
                    columns.rate_create.push(key, &stored);
                    counts[3] += 1;
                }
                (false, None) => {}
            }
        }
        Ok(columns)
    }

    /// `write.sql`'s 23 parameters, `slot` being this connection's row in `counts`.
    pub(super) fn params<'a>(&'a self, slot: &'a &'a str) -> Vec<&'a (dyn ToSql + Sync)> {
        vec![
            &self.update.digests,
            &self.update.values,
            &self.update.states,
            &self.update.expires,
            &self.update.owners,
            &self.remove,
            &self.create.digests,
            &self.create.values,
            &self.create.states,
            &self.create.expires,
            &self.create.owners,
            &self.rate_update.keys,
            &self.rate_update.values,
            &self.rate_update.idle,
            &self.rate_remove,
            &self.rate_create.keys,
            &self.rate_create.values,
            &self.rate_create.idle,
            slot,
            &self.counts[0],
            &self.counts[1],
            &self.counts[2],
            &self.counts[3],
        ]
    }

    /// The one row written, if exactly one is (a lone change's, `lone.rs`).
    pub(super) fn single(&self) -> Option<Single<'_>> {
        let records = self.update.digests.len() + self.create.digests.len() + self.remove.len();
        let counters =
            self.rate_update.keys.len() + self.rate_create.keys.len() + self.rate_remove.len();
        match (records, counters) {
            (1, 0) if !self.update.digests.is_empty() => record_row(&self.update, Op::Update),
            (1, 0) if !self.create.digests.is_empty() => record_row(&self.create, Op::Create),
            (1, 0) => Some(Single::Record {
                digest: self.remove.first()?,
                op: Op::Delete,
                value: None,
                state: 0,
                expires: 0,
                owner: None,
            }),
            (0, 1) if !self.rate_update.keys.is_empty() => {
                counter_row(&self.rate_update, Op::Update)
            }
            (0, 1) if !self.rate_create.keys.is_empty() => {
                counter_row(&self.rate_create, Op::Create)
            }
            (0, 1) => Some(Single::Counter {
                key: self.rate_remove.first()?,
                op: Op::Delete,
                value: None,
                idle: 0,
            }),
            _ => None,
        }
    }

    /// What the batch adds to the running, completed, failed and counter counts.
    pub(super) fn counts(&self) -> [i64; 4] {
        self.counts
    }

    /// Tells `hints` what a committed batch left in the rows of `locked`: the RUNNING records
    /// it wrote (owned by `node`), every counter it wrote or read; records it finished or
    /// removed are forgotten.
    pub(super) fn committed(&self, locked: &Locked, node: &NodeInfo, hints: &Hints) {
        let digest = |digest: &Vec<u8>| <[u8; 32]>::try_from(digest.as_slice()).ok();
        let key = |key: &Vec<u8>| <[u8; 16]>::try_from(key.as_slice()).ok();
        let written = [&self.update, &self.create]
            .into_iter()
            .flat_map(|columns| {
                let rows = columns.digests.iter().zip(&columns.values);
                rows.zip(&columns.states)
                    .filter_map(|((id, value), state)| {
                        // Only a RUNNING record (state 0) is worth keeping: its lease's resolution reads
                        // it; a finished one is replayed from the replay cache.
                        let hint = (*state == 0).then(|| RecordHint {
                            value: value.clone(),
                            owner_epoch: node.owner_epoch,
                        });
                        Some((digest(id)?, hint))
                    })
            });
        let removed = self
            .remove
            .iter()
            .filter_map(|id| Some((digest(id)?, None)));
        let read = (locked.rates.iter())
            .filter(|(_, row)| !row.changed)
            .map(|(key, row)| (*key, row.stored.clone()));
        let rates_written = [&self.rate_update, &self.rate_create]
            .into_iter()
            .flat_map(|columns| columns.keys.iter().zip(&columns.values))
            .filter_map(|(id, value)| Some((key(id)?, Some(value.clone()))));
        let rates_removed = self
            .rate_remove
            .iter()
            .filter_map(|id| Some((key(id)?, None)));
        hints.learn(
            written.chain(removed),
            read.chain(rates_written).chain(rates_removed),
        );
    }
}

/// Writes what the decisions changed and commits; the attempt's end. Once committed, `hints`
/// learn what the rows now hold.
pub(super) fn write_and_commit(
    pipe: &mut Pipe,
    node: &NodeInfo,
    slot: &str,
    locked: &Locked,
    answers: Vec<Answer>,
    writes: u64,
    hints: &Hints,
) -> Attempt {
    let columns = match Columns::of(locked, node) {
        Ok(columns) => columns,
        Err(error) => return Attempt::Failed(error),
    };
    let result = pipe.write_and_commit(locked.tables, &columns.params(&slot));
    if result.is_ok() {
        columns.committed(locked, node, hints);
    }
    match result {
        Ok(_) => Attempt::Committed(
            answers,
            Stats {
                writes,
                // A batch that wrote nothing (replays, keys in flight, fenced resolutions, denied
                // checks) committed only its row locks: not a commit of anything.
                committed: writes > 0,
            },
        ),
        // The server refused the write: the COMMIT sent after it ended the transaction as a
        // rollback, so nothing was committed.
        Err(Failure::Postgres(error)) if error.as_db_error().is_some() => match kind(&error) {
            Kind::Retry => Attempt::Retry,
            _ => Attempt::Failed(classify(&error, "cannot write the batch")),
        },
        // The connection failed, or went silent, while the writes and the commit were on their
        // way: the outcome is unknown.
        Err(Failure::Postgres(error)) => Attempt::InDoubt(
            answers,
            unavailable("the connection failed during the commit", &error),
        ),
        Err(Failure::TimedOut) => Attempt::InDoubt(answers, timed_out("the commit")),
        Err(Failure::Connect(error)) => Attempt::Failed(error),
    }
}

/// How `lone.sql` writes its row (its `$2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Create = 0,
    Update = 1,
    Delete = 2,
}

/// The one row a lone change writes, with its new value (`None` for a delete).
pub(super) enum Single<'a> {
    Record {
        digest: &'a Vec<u8>,
        op: Op,
        value: Option<&'a Vec<u8>>,
        state: i16,
        expires: i64,
        owner: Option<&'a String>,
    },
    Counter {
        key: &'a Vec<u8>,
        op: Op,
        value: Option<&'a Vec<u8>>,
        idle: i64,
    },
}

/// The first row of `columns`, written by `op`.
fn record_row(columns: &RecordColumns, op: Op) -> Option<Single<'_>> {
    Some(Single::Record {
        digest: columns.digests.first()?,
        op,
        value: columns.values.first(),
        state: *columns.states.first()?,
        expires: *columns.expires.first()?,
        owner: columns.owners.first()?.as_ref(),
    })
}

/// The first row of `columns`, written by `op`.
fn counter_row(columns: &RateColumns, op: Op) -> Option<Single<'_>> {
    Some(Single::Counter {
        key: columns.keys.first()?,
        op,
        value: columns.values.first(),
        idle: *columns.idle.first()?,
    })
}

/// Record column arrays for `write.sql`.
#[derive(Default)]
struct RecordColumns {
    digests: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    states: Vec<i16>,
    expires: Vec<i64>,
    owners: Vec<Option<String>>,
}

impl RecordColumns {
    fn push(&mut self, digest: &[u8; 32], record: &Record, node: &NodeInfo) -> Result<()> {
        let slot = state_slot(record);
        self.values.push(codec::encode_record(record)?);
        self.digests.push(digest.to_vec());
        self.states.push(i16::try_from(slot).unwrap_or(0));
        self.expires.push(to_i64(record.expires_at));
        self.owners.push((slot == 0).then(|| node.id.clone()));
        Ok(())
    }
}

/// Counter column arrays for `write.sql`.
#[derive(Default)]
struct RateColumns {
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    idle: Vec<i64>,
}

impl RateColumns {
    fn push(&mut self, key: &[u8; 16], stored: &codec::StoredRate) {
        self.keys.push(key.to_vec());
        self.values.push(codec::encode_rate(stored).to_vec());
        self.idle.push(to_i64(stored.idle_at));
    }
}
