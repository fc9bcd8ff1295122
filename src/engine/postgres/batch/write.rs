//! Round trip 2 of a batch: `write.sql` updates, creates and deletes the records and counters the
//! decisions changed, adds the batch's deltas to this connection's record and counter counts,
//! and the `COMMIT` goes with it. A row created since the lock makes the insert fail with a
//! unique violation: the batch starts over. The commit's outcome decides every answer: sent once
//! committed, `InDoubt` for a change that would have been written when the connection failed on
//! the way.

use super::lock::{Locked, state_slot};
use super::{Answer, Attempt, Stats, timed_out, to_i64};
use crate::engine::postgres::node::NodeInfo;
use crate::engine::postgres::pipe::{Failure, Pipe};
use crate::engine::postgres::session::{Kind, classify, kind, unavailable};
use crate::engine::{codec, stored_rate};
use crate::error::Result;
use crate::idempotency::Record;

/// Writes what the decisions changed and commits; the attempt's end.
pub(super) fn write_and_commit(
    pipe: &mut Pipe,
    node: &NodeInfo,
    slot: &str,
    locked: &Locked,
    answers: Vec<Answer>,
    writes: u64,
) -> Attempt {
    let mut counts = [0i64; 4];
    let mut update = RecordColumns::default();
    let mut create = RecordColumns::default();
    let mut remove: Vec<Vec<u8>> = Vec::new();
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
                if let Err(error) = update.push(digest, record, node) {
                    return Attempt::Failed(error);
                }
                counts[state_slot(record)] += 1;
            }
            (true, None) => remove.push(digest.to_vec()),
            (false, Some(record)) => {
                if let Err(error) = create.push(digest, record, node) {
                    return Attempt::Failed(error);
                }
                counts[state_slot(record)] += 1;
            }
            (false, None) => {}
        }
    }
    let mut rate_update = RateColumns::default();
    let mut rate_create = RateColumns::default();
    let mut rate_remove: Vec<Vec<u8>> = Vec::new();
    for (key, row) in &locked.rates {
        if !row.changed {
            continue;
        }
        let (Ok(state), Some(spec)) = (&row.current, &row.spec) else {
            continue;
        };
        let stored = stored_rate(spec, *state, locked.now);
        match (row.existed, stored) {
            (true, Some(stored)) => rate_update.push(key, &stored),
            (true, None) => {
                rate_remove.push(key.to_vec());
                counts[3] -= 1;
            }
            (false, Some(stored)) => {
                rate_create.push(key, &stored);
                counts[3] += 1;
            }
            (false, None) => {}
        }
    }
    let result = pipe.write_and_commit(
        locked.tables,
        &[
            &update.digests,
            &update.values,
            &update.states,
            &update.expires,
            &update.owners,
            &remove,
            &create.digests,
            &create.values,
            &create.states,
            &create.expires,
            &create.owners,
            &rate_update.keys,
            &rate_update.values,
            &rate_update.idle,
            &rate_remove,
            &rate_create.keys,
            &rate_create.values,
            &rate_create.idle,
            &slot,
            &counts[0],
            &counts[1],
            &counts[2],
            &counts[3],
        ],
    );
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
