//! A lone caller's change in one round trip.
//!
//! The batch path (`mod.rs`) locks the rows, decides, then writes and commits: two round trips,
//! which a lone caller pays in full (a batch of many shares them). When a writer finds a single
//! change queued that reads and writes one row its node's hints (`hints.rs`) know, it decides
//! first, with the same pure rules (`decide.rs`) on the hinted row at a time the clock has
//! already passed (`ServerClock::decision_time`), and sends one statement of `lone.sql`, which is
//! its own transaction (autocommit):
//!
//! ```text
//! write the row if it is as hinted (clock, epoch checked), and the counts    one round trip
//! ```
//!
//! Not `BEGIN`, the batch's `SET LOCAL`s and `COMMIT` around it: they cost a lone caller a third
//! of its time (measured, `docs/BENCHMARKS.md`), and this statement needs none of them (its
//! plan is the server's own choice on primary keys; `statement_timeout` is the session's).
//!
//! # Rules
//! - The decision is the one the batch path would take: `lone.sql` writes only if the row is,
//!   locked, exactly what the decision read (absent where it read none), the decision's time is
//!   no later than the database clock's reading and at most [`DECISION_BOUND`] behind it, and
//!   this node's epoch is still its own. Otherwise nothing is written, the row's hint is
//!   forgotten, and the change runs through the batch path.
//! - A row created since, where the decision read none, fails the insert: the transaction rolls
//!   back and the change runs through the batch path.
//! - Only a change whose decision writes exactly one row goes this way: an answer that writes
//!   nothing (a key in flight, a lease lost, a denied check) was decided on a row nobody
//!   confirmed, so it takes the batch path, which locks it.
//! - Once the statement is sent, a connection that fails or goes silent leaves the change in
//!   doubt: [`Error::InDoubt`], as in the batch path's commit.
//! - A resolution is only tried with its record hinted (this node wrote the lease); a begin
//!   without a hint expects no row; a begin needs a spare lease token drawn within
//!   [`SPARE_TOKEN_AGE`](super::hints::SPARE_TOKEN_AGE).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::decide;
use super::hints::Hints;
use super::lock::{Locked, RateRow, RecordRow, state_slot};
use super::write::{Columns, Single};
use super::{Change, Stats, timed_out, to_i64};
use crate::engine::codec;
use crate::engine::oneshot;
use crate::engine::postgres::clock::ServerClock;
use crate::engine::postgres::node::NodeInfo;
use crate::engine::postgres::pipe::{Failure, Pipe};
use crate::engine::postgres::session::unavailable;
use crate::engine::postgres::sql::Tables;
use crate::engine::write_counters::Counters;
use crate::error::Error;

/// How far behind the database clock a lone caller's decision may be.
pub(crate) const DECISION_BOUND: Duration = Duration::from_millis(100);

/// What the writer passes in: its connection and the node's shared state.
pub(crate) struct Lone<'a> {
    pub pipe: &'a mut Pipe,
    pub node: &'a NodeInfo,
    pub slot: &'a str,
    pub hints: &'a Hints,
    pub clock: &'a ServerClock,
    pub counters: &'a Counters,
}

/// Runs `changes` in one round trip if it is a single change the hints allow; gives the changes
/// back for the batch path otherwise (nothing was written then).
pub(crate) fn run(lone: &mut Lone<'_>, changes: Vec<Change>) -> Result<Stats, Vec<Change>> {
    let [change] = changes.as_slice() else {
        return Err(changes);
    };
    if !lone.hints.should_try() {
        return Err(changes);
    }
    let Some(mut expected) = expect(lone.hints, lone.clock, change) else {
        return Err(changes);
    };
    let (answers, writes) = decide::decide(&mut expected.locked, lone.node, &changes);
    let Ok(columns) = Columns::of(&expected.locked, lone.node) else {
        return Err(changes);
    };
    let Some(single) = columns.single().filter(|_| writes == 1) else {
        return Err(changes);
    };
    let sent = send(
        lone,
        &single,
        expected.value.as_ref(),
        columns.counts(),
        expected.locked.now,
    );
    let forget = || {
        let records: Vec<[u8; 32]> = expected.locked.records.keys().copied().collect();
        let counters: Vec<[u8; 16]> = expected.locked.rates.keys().copied().collect();
        lone.hints.forget(&records, &counters);
    };
    match sent {
        Ok(row) => {
            let read = || -> Result<(bool, i64, bool, Option<i64>), tokio_postgres::Error> {
                Ok((
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                ))
            };
            let Ok((held, now, stopped, spare)) = read() else {
                // The row comes back whether or not the statement wrote: one that does not read
                // leaves the outcome unknown.
                forget();
                deliver_in_doubt(changes, "the database's answer did not read");
                return Ok(Stats::default());
            };
            lone.clock.observe(u64::try_from(now).unwrap_or(0));
            lone.clock.set_stopped(stopped);
            if let Some(spare) = spare.and_then(|token| u64::try_from(token).ok()) {
                lone.hints.put_spare(spare);
            }
            if !held {
                forget();
                lone.hints.stale();
                return Err(changes);
            }
            lone.hints.held();
            columns.committed(&expected.locked, lone.node, lone.hints);
            lone.counters.committed_in_one_round_trip();
            super::deliver(changes, answers);
            Ok(Stats {
                writes,
                committed: true,
            })
        }
        // Refused by the server (a row created since, where the decision read none; a
        // conflict): the statement's transaction rolled back.
        Err(Failure::Postgres(error)) if error.as_db_error().is_some() => {
            forget();
            lone.hints.stale();
            Err(changes)
        }
        // Nothing was sent without a connection.
        Err(Failure::Connect(_)) => Err(changes),
        Err(failure) => {
            lone.pipe.reset();
            forget();
            let message = match failure {
                Failure::Postgres(error) => super::doubt_message(&unavailable(
                    "the connection failed during the commit",
                    &error,
                )),
                _ => super::doubt_message(&timed_out("the commit")),
            };
            deliver_in_doubt(changes, &message);
            Ok(Stats::default())
        }
    }
}

/// Sends `single`, the row the decision writes (`expected_value`: its value as read), in one
/// round trip; `counts`: the counts' deltas; `now`: the decision's time.
fn send(
    lone: &mut Lone<'_>,
    single: &Single<'_>,
    expected_value: Option<&Vec<u8>>,
    counts: [i64; 4],
    now: u64,
) -> Result<tokio_postgres::Row, Failure> {
    let slot = lone.slot;
    let decided_at = to_i64(now);
    let bound = to_i64(u64::try_from(DECISION_BOUND.as_nanos()).unwrap_or(u64::MAX));
    let node_epoch = to_i64(lone.node.epoch);
    let spares = i32::from(!lone.hints.has_spare());
    let guard: [&(dyn ToSql + Sync); 5] =
        [&decided_at, &bound, &lone.node.id, &node_epoch, &spares];
    match single {
        Single::Record {
            digest,
            op,
            value,
            state,
            expires,
            owner,
        } => {
            let row: [&(dyn ToSql + Sync); 10] = [
                digest,
                &expected_value,
                value,
                state,
                expires,
                owner,
                &slot,
                &counts[0],
                &counts[1],
                &counts[2],
            ];
            lone.pipe
                .lone(false, *op as usize, &[&guard[..], &row].concat())
        }
        Single::Counter {
            key,
            op,
            value,
            idle,
        } => {
            let row: [&(dyn ToSql + Sync); 6] =
                [key, &expected_value, value, idle, &slot, &counts[3]];
            lone.pipe
                .lone(true, *op as usize, &[&guard[..], &row].concat())
        }
    }
}

/// Tells every change (each writes) that its commit is in doubt.
fn deliver_in_doubt(changes: Vec<Change>, message: &str) {
    oneshot::deliver(
        changes
            .into_iter()
            .map(|change| change.failure(Error::InDoubt(message.to_string())))
            .collect(),
    );
}

/// The row a lone change reads, as the hints have it, and its value as expected.
struct Expected {
    locked: Locked,
    /// The row's stored value (`None`: no row).
    value: Option<Vec<u8>>,
}

/// The hinted row of `change`, or `None` if the hints cannot tell: a rate change of several
/// counters, a resolution of a record not hinted, a hint that does not decode, a begin without a
/// spare token, no decision time.
fn expect(hints: &Hints, clock: &ServerClock, change: &Change) -> Option<Expected> {
    let now = clock.decision_time()?;
    let mut locked = Locked {
        records: BTreeMap::new(),
        rates: BTreeMap::new(),
        now,
        tokens: Vec::new(),
        tables: Tables::Records,
    };
    let value = match change {
        Change::Begin { digest, .. } | Change::Resolve { digest, .. } => {
            let hint = hints.record(&digest.0);
            if hint.is_none() && matches!(change, Change::Resolve { .. }) {
                return None;
            }
            let current = match &hint {
                Some(hint) => Some(codec::decode_record(&hint.value).ok()?),
                None => None,
            };
            locked.records.insert(
                digest.0,
                RecordRow {
                    existed: hint.is_some(),
                    old_slot: current.as_ref().map(state_slot),
                    owner_epoch: hint.as_ref().map_or(0, |hint| hint.owner_epoch),
                    current: Ok(current),
                    changed: false,
                },
            );
            if matches!(change, Change::Begin { .. }) {
                locked.tokens.push(hints.take_spare()?);
            }
            hint.map(|hint| hint.value)
        }
        Change::Rate { op, .. } => {
            let [target] = op.targets.as_slice() else {
                return None;
            };
            let stored = hints.counter(&target.key.0);
            let current = match &stored {
                Some(stored) => Some(codec::decode_rate(stored).ok()?.state),
                None => None,
            };
            locked.rates.insert(
                target.key.0,
                RateRow {
                    existed: stored.is_some(),
                    stored: stored.clone(),
                    current: Ok(current),
                    spec: None,
                    changed: false,
                },
            );
            locked.tables = Tables::Counters;
            stored
        }
    };
    Some(Expected { locked, value })
}
