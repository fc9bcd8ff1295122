//! A batch of changes from many callers of one node, in one transaction: the client-side group
//! commit.
//!
//! ```text
//! BEGIN; SET LOCAL …  +  lock.sql (clock, tokens, rows FOR UPDATE)    round trip 1
//!   decide every change in arrival order with the pure rules, on the locked rows
//! write.sql (records, counters, counts)  +  COMMIT                    round trip 2
//! ```
//!
//! Two round trips per transaction whatever its size (`pipe.rs` sends each pair together), two
//! prepared statements with their values in binary, each in the version for the tables the batch
//! touches (`sql.rs` `Tables`: a batch of begins and resolutions only starts no counter parts).
//!
//! # Rules
//! - Every decision is taken by `idempotency::machine` or `ratelimit::charge` on rows locked
//!   for this transaction, at the database clock's reading in the lock statement. Changes to one
//!   key in a batch see the ones before them.
//! - A row that did not exist is created by a plain `INSERT`; if another transaction created it
//!   since the lock, the decisions on it were taken on a state that no longer holds: the insert
//!   fails with a unique violation, the transaction is rolled back and the batch starts over (as
//!   on a deadlock or a serialization failure), up to [`MAX_ATTEMPTS`] times.
//! - A change's logical error (a lease lost, a cost too large) is its caller's answer; nothing
//!   is written for it, and the rest of the batch commits.
//! - Answers are sent after the commit. If the connection fails before the commit was sent,
//!   nothing was committed: every caller gets [`Error::Unavailable`]. If it fails while the
//!   commit is on its way, the outcome is unknown: callers whose change would have been written
//!   get [`Error::InDoubt`]; the others get their (read-only) answer.

use std::collections::BTreeMap;

use super::node::NodeInfo;
use super::pipe::{Failure, Pipe, ROUND_TRIP_TIMEOUT};
use super::session::{Kind, classify, kind, unavailable};
use super::sql::Tables;
use crate::engine::oneshot::{self, Delivery, Reply};
use crate::engine::write_counters::Counters;
use crate::engine::{BeginRequest, codec, lease_expiry, stored_rate};
use crate::error::{Error, Result};
use crate::idempotency::machine::{self, BeginDecision, BeginParams, Effect, Resolution};
use crate::idempotency::{Digest, Record, RecordBody};
use crate::ratelimit::RateState;
use crate::ratelimit::charge::{self, RateOp, RateOutcome};

/// Most changes in one transaction.
pub(crate) const MAX_BATCH: usize = 256;

/// Transactions tried for one batch before its callers get [`Error::Unavailable`].
const MAX_ATTEMPTS: usize = 8;

/// A caller's change, with the channel its answer goes back on.
pub(crate) enum Change {
    Begin {
        digest: Digest,
        request: BeginRequest,
        reply: Reply<Result<BeginDecision>>,
    },
    Resolve {
        digest: Digest,
        token: u64,
        resolution: Resolution,
        reply: Reply<Result<Option<u64>>>,
    },
    Rate {
        op: RateOp,
        reply: Reply<Result<RateOutcome>>,
    },
}

/// One change's decided answer, before the commit.
enum Answer {
    Begin(Result<BeginDecision>),
    Resolve(Result<Option<u64>>),
    /// A rate operation's outcome, and whether it changed a counter.
    Rate(Result<(RateOutcome, bool)>),
}

impl Answer {
    /// Whether the change writes a row (an in-doubt commit makes its outcome unknown).
    fn writes(&self) -> bool {
        match self {
            Answer::Begin(Ok(BeginDecision::Acquired { .. }))
            | Answer::Resolve(Ok(_))
            | Answer::Rate(Ok((_, true))) => true,
            Answer::Begin(_) | Answer::Resolve(Err(_)) | Answer::Rate(_) => false,
        }
    }
}

impl Change {
    /// The change's answer on its way, for [`oneshot::deliver`] (a caller that gave up waiting
    /// has gone; its answer is dropped then).
    fn delivery(self, answer: Answer) -> Delivery {
        match (self, answer) {
            (Change::Begin { reply, .. }, Answer::Begin(outcome)) => reply.delivery(outcome),
            (Change::Resolve { reply, .. }, Answer::Resolve(outcome)) => reply.delivery(outcome),
            (Change::Rate { reply, .. }, Answer::Rate(outcome)) => {
                reply.delivery(outcome.map(|(outcome, _)| outcome))
            }
            // Answers are built from their change (`decide`), so the kinds always match.
            (change, _) => change.failure(Error::Unavailable("internal: mismatched answer".into())),
        }
    }

    /// The change's failure on its way, for [`oneshot::deliver`].
    fn failure(self, error: Error) -> Delivery {
        match self {
            Change::Begin { reply, .. } => reply.delivery(Err(error)),
            Change::Resolve { reply, .. } => reply.delivery(Err(error)),
            Change::Rate { reply, .. } => reply.delivery(Err(error)),
        }
    }
}

/// A record row as locked, and as the batch leaves it.
struct RecordRow {
    /// Whether the row existed when locked.
    existed: bool,
    /// The state it counted in when locked (for the counts).
    old_slot: Option<usize>,
    /// The owner's current epoch, from `nodes`.
    owner_epoch: u64,
    /// The record now (`Err`: the stored value does not decode).
    current: Result<Option<Record>, String>,
    /// Whether this batch wrote it (so its owner is this node).
    changed: bool,
}

/// A counter row as locked, and as the batch leaves it.
struct RateRow {
    existed: bool,
    current: Result<Option<RateState>, String>,
    /// The spec it was last written under (for its idle time).
    spec: Option<crate::ratelimit::Spec>,
    changed: bool,
}

/// What one attempt ended with.
enum Attempt {
    Committed(Vec<Answer>, Stats),
    /// Start over (a row was created under us, a deadlock, a serialization failure).
    Retry,
    /// The connection was found cut (a server restart, a failover) while locking the batch's
    /// rows, before anything of it could commit: start over on a new connection, once.
    Reconnect(Error),
    /// Nothing was committed.
    Failed(Error),
    /// The commit's outcome is unknown.
    InDoubt(Vec<Answer>, Error),
}

/// What a committed batch changed, for `Stats`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    pub writes: u64,
    pub committed: bool,
}

/// Runs `changes` in one transaction (retrying as the rules say), counts what it committed in
/// `counters`, and answers every caller. Returns what was committed; `now` is set to the clock
/// reading the batch decided at.
pub(crate) fn run(
    pipe: &mut Pipe,
    node: &NodeInfo,
    slot: &str,
    changes: Vec<Change>,
    now: &mut Option<u64>,
    counters: &Counters,
) -> Stats {
    let mut reconnected = false;
    for _ in 0..MAX_ATTEMPTS {
        let outcome = match attempt(pipe, node, slot, &changes, now) {
            Attempt::Reconnect(_) if !reconnected => {
                reconnected = true;
                pipe.reset();
                continue;
            }
            Attempt::Reconnect(error) => Attempt::Failed(error),
            other => other,
        };
        match outcome {
            Attempt::Committed(answers, stats) => {
                // Counted before the answers, so that a caller reading `stats()` after its answer
                // sees its own write.
                if stats.committed {
                    counters.committed_writes(stats.writes);
                }
                oneshot::deliver(
                    changes
                        .into_iter()
                        .zip(answers)
                        .map(|(change, answer)| change.delivery(answer))
                        .collect(),
                );
                return stats;
            }
            Attempt::Retry => pipe.roll_back(),
            Attempt::Reconnect(_) => {} // mapped above
            Attempt::Failed(error) => {
                pipe.roll_back();
                oneshot::deliver(
                    changes
                        .into_iter()
                        .map(|change| change.failure(copy(&error)))
                        .collect(),
                );
                return Stats::default();
            }
            Attempt::InDoubt(answers, error) => {
                pipe.reset();
                let message = match &error {
                    Error::Unavailable(message) => message.clone(),
                    other => other.to_string(),
                };
                oneshot::deliver(
                    changes
                        .into_iter()
                        .zip(answers)
                        .map(|(change, answer)| {
                            if answer.writes() {
                                change.failure(Error::InDoubt(message.clone()))
                            } else {
                                change.delivery(answer)
                            }
                        })
                        .collect(),
                );
                return Stats::default();
            }
        }
    }
    oneshot::deliver(
        changes
            .into_iter()
            .map(|change| {
                change.failure(Error::Unavailable(
                    "the batch met a conflict on every attempt; retry".into(),
                ))
            })
            .collect(),
    );
    Stats::default()
}

/// An error again, for another caller (errors are not `Clone`).
pub(crate) fn copy(error: &Error) -> Error {
    match error {
        Error::Unavailable(message) => Error::Unavailable(message.clone()),
        Error::InDoubt(message) => Error::InDoubt(message.clone()),
        Error::Corrupted(message) => Error::Corrupted(message.clone()),
        Error::Closed => Error::Closed,
        Error::Superseded => Error::Superseded,
        other => Error::storage(std::io::Error::other(other.to_string())),
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A failed round trip before the commit: retried, unavailable, or a storage error.
fn failed(failure: Failure, what: &str) -> Attempt {
    match failure {
        Failure::Postgres(error) if kind(&error) == Kind::Retry => Attempt::Retry,
        Failure::Postgres(error) => Attempt::Failed(classify(&error, what)),
        Failure::TimedOut => Attempt::Failed(timed_out(what)),
        Failure::Connect(error) => Attempt::Failed(error),
    }
}

/// Whether `error` says the connection itself is gone: closed, cut (an I/O error), or ended by
/// the server's shutdown or crash. A new connection may work at once (the server restarted).
fn is_cut(error: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    let io = std::error::Error::source(error)
        .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some());
    error.is_closed()
        || io
        || error.code().is_some_and(|code| {
            *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN
        })
}

fn timed_out(what: &str) -> Error {
    Error::Unavailable(format!(
        "{what}: no answer from the database within {} s",
        ROUND_TRIP_TIMEOUT.as_secs()
    ))
}

#[allow(clippy::too_many_lines)] // One transaction, read top to bottom.
fn attempt(
    pipe: &mut Pipe,
    node: &NodeInfo,
    slot: &str,
    changes: &[Change],
    now_out: &mut Option<u64>,
) -> Attempt {
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
    let rows = match pipe.lock(tables, &[&digests, &keys, &begins, &node.id]) {
        Ok(rows) => rows,
        Err(Failure::Postgres(error)) if is_cut(&error) => {
            return Attempt::Reconnect(classify(&error, "cannot lock the batch's rows"));
        }
        Err(failure) => return failed(failure, "cannot lock the batch's rows"),
    };
    let mut now = 0u64;
    let mut tokens = Vec::with_capacity(usize::try_from(begins).unwrap_or(0));
    for row in &rows {
        let read = (|| -> Result<()> {
            let bad = |_| Error::Corrupted("the lock statement sent a malformed row".into());
            let kind: i32 = row.try_get(0).map_err(bad)?;
            let key: Option<&[u8]> = row.try_get(1).map_err(bad)?;
            let stored: Option<&[u8]> = row.try_get(2).map_err(bad)?;
            let number: i64 = row.try_get(3).map_err(bad)?;
            let value = u64::try_from(number).unwrap_or(0);
            match (kind, key, stored) {
                (0, _, _) => now = value,
                (4, _, _) if value != node.epoch => return Err(Error::Superseded),
                (1, _, _) => tokens.push(value),
                (2, Some(key), Some(stored)) => {
                    if let Some(row) = <[u8; 32]>::try_from(key)
                        .ok()
                        .and_then(|key| records.get_mut(&key))
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
                (3, Some(key), Some(stored)) => {
                    if let Some(row) = <[u8; 16]>::try_from(key)
                        .ok()
                        .and_then(|key| rates.get_mut(&key))
                    {
                        row.existed = true;
                        row.current = codec::decode_rate(stored)
                            .map(|stored| Some(stored.state))
                            .map_err(|error| error.to_string());
                    }
                }
                _ => {}
            }
            Ok(())
        })();
        if let Err(error) = read {
            return Attempt::Failed(error);
        }
    }
    *now_out = Some(now);

    // Decide, in arrival order.
    let mut next_token = tokens.into_iter();
    let mut answers = Vec::with_capacity(changes.len());
    let mut writes = 0u64;
    for change in changes {
        let answer = match change {
            Change::Begin {
                digest, request, ..
            } => {
                let row = records.get_mut(&digest.0);
                Answer::Begin(row.map_or_else(
                    || Err(Error::Unavailable("internal: unlocked record".into())),
                    |row| begin(row, node, *request, now, &mut next_token),
                ))
            }
            Change::Resolve {
                digest,
                token,
                resolution,
                ..
            } => {
                let row = records.get_mut(&digest.0);
                Answer::Resolve(row.map_or_else(
                    || Err(Error::Unavailable("internal: unlocked record".into())),
                    |row| resolve(row, *token, resolution, now),
                ))
            }
            Change::Rate { op, .. } => Answer::Rate(rate(&mut rates, op, now)),
        };
        writes += u64::from(answer.writes());
        answers.push(answer);
    }

    // Write what changed.
    let mut counts = [0i64; 4];
    let mut update = RecordColumns::default();
    let mut create = RecordColumns::default();
    let mut remove: Vec<Vec<u8>> = Vec::new();
    for (digest, row) in &records {
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
    for (key, row) in &rates {
        if !row.changed {
            continue;
        }
        let (Ok(state), Some(spec)) = (&row.current, &row.spec) else {
            continue;
        };
        let stored = stored_rate(spec, *state, now);
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
        tables,
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

fn state_slot(record: &Record) -> usize {
    match record.body {
        RecordBody::Running { .. } => 0,
        RecordBody::Completed(_) => 1,
        RecordBody::Failed(_) => 2,
    }
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
        .ok_or_else(|| Error::Unavailable("internal: no lease token".into()))?;
    let params = BeginParams {
        fingerprint: request.fingerprint,
        now,
        epoch: node.epoch,
        owner_epoch,
        lease_ttl: request.lease_ttl,
        record_ttl: request.record_ttl,
        next_token: token,
    };
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
            .ok_or_else(|| Error::Unavailable("internal: unlocked counter".into()))?;
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
