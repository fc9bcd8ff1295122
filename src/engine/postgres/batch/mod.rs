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

mod decide;
mod hints;
mod lock;
mod lone;
mod write;

pub(crate) use hints::Hints;
pub(crate) use lone::{Lone, run as run_lone};

use super::node::NodeInfo;
use super::pipe::{Failure, Pipe, ROUND_TRIP_TIMEOUT};
use super::session::{Kind, classify, kind};
use crate::engine::BeginRequest;
use crate::engine::oneshot::{self, Delivery, Reply};
use crate::engine::write_counters::Counters;
use crate::error::{Error, Result};
use crate::idempotency::Digest;
use crate::idempotency::machine::{BeginDecision, Resolution};
use crate::ratelimit::charge::{RateOp, RateOutcome};

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
            (change, _) => change.failure(Error::Internal(
                "a batch's answer does not match its change".into(),
            )),
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
    hints: &Hints,
) -> Stats {
    let mut reconnected = false;
    for _ in 0..MAX_ATTEMPTS {
        let outcome = match attempt(pipe, node, slot, &changes, now, hints) {
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
                deliver(changes, answers);
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
                forget(&changes, hints);
                let message = doubt_message(&error);
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

/// Sends each change its decided answer (after the commit).
fn deliver(changes: Vec<Change>, answers: Vec<Answer>) {
    oneshot::deliver(
        changes
            .into_iter()
            .zip(answers)
            .map(|(change, answer)| change.delivery(answer))
            .collect(),
    );
}

/// What an in-doubt caller is told of the failure that left its commit in doubt.
fn doubt_message(error: &Error) -> String {
    match error {
        Error::Unavailable(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Forgets the hints of every row `changes` touch (their outcome is unknown).
fn forget(changes: &[Change], hints: &Hints) {
    let mut records = Vec::new();
    let mut counters = Vec::new();
    for change in changes {
        match change {
            Change::Begin { digest, .. } | Change::Resolve { digest, .. } => records.push(digest.0),
            Change::Rate { op, .. } => counters.extend(op.targets.iter().map(|t| t.key.0)),
        }
    }
    hints.forget(&records, &counters);
}

/// An error again, for another caller (errors are not `Clone`).
pub(crate) fn copy(error: &Error) -> Error {
    match error {
        Error::Unavailable(message) => Error::Unavailable(message.clone()),
        Error::InDoubt(message) => Error::InDoubt(message.clone()),
        Error::Corrupted(message) => Error::Corrupted(message.clone()),
        Error::Internal(message) => Error::Internal(message.clone()),
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

/// One transaction for `changes`: lock their rows and read the clock (round trip 1), decide
/// every change in arrival order with the pure rules, write what changed and commit (round
/// trip 2). `now_out` is set to the clock reading the batch decided at.
fn attempt(
    pipe: &mut Pipe,
    node: &NodeInfo,
    slot: &str,
    changes: &[Change],
    now_out: &mut Option<u64>,
    hints: &Hints,
) -> Attempt {
    let mut locked = match lock::lock(pipe, node, changes, hints) {
        Ok(locked) => locked,
        Err(attempt) => return attempt,
    };
    *now_out = Some(locked.now);
    let (answers, writes) = decide::decide(&mut locked, node, changes);
    write::write_and_commit(pipe, node, slot, &locked, answers, writes, hints)
}
