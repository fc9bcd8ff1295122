//! The embedded engine's protocol: what a caller asks the writer ([`Command`]), the reply each
//! command carries ([`Pending`], typed by its answer, so an answer reaches only the caller that
//! asked and in the shape it asked for), and how its application ended ([`Applied`]).
//!
//! Answers are sent only after the batch committed ([`Command::answer`]), or replaced by the
//! batch's error ([`Command::fail`]).

use crate::engine::{BeginRequest, BulkRecords, Swept};
use crate::error::Error;
use crate::idempotency::Digest;
use crate::idempotency::machine::{BeginDecision, Resolution};
use crate::ratelimit::charge::{RateOp, RateOutcome};

/// A request to the writer.
pub(crate) enum Command {
    Begin {
        digest: Digest,
        request: BeginRequest,
        /// What the caller's own read saw (see [`crate::engine::Seen`]).
        seen: crate::engine::Seen,
        reply: Pending<BeginDecision>,
    },
    /// A lease resolution; answered with the lease's new expiry for an extension.
    Resolve {
        digest: Digest,
        token: u64,
        resolution: Resolution,
        reply: Pending<Option<u64>>,
    },
    /// A rate operation in Immediate mode: its outcome, and whether it changed a counter.
    Rate {
        op: RateOp,
        reply: Pending<(RateOutcome, bool)>,
    },
    /// Flush batched rate counters now and, with `evict`, drop idle ones from memory (without:
    /// a caller waiting for its reservation to be written).
    Flush {
        reply: Pending<()>,
        evict: bool,
    },
    /// Remove up to `limit` due expiry-index entries with their records and counters.
    Compact {
        limit: usize,
        reply: Pending<Swept>,
    },
    /// Write records in a transaction of their own (the bulk-load helper); answered with how
    /// many were written.
    Bulk {
        count: u64,
        records: BulkRecords,
        reply: Pending<u64>,
    },
    Shutdown,
}

/// A caller's reply channel, with the answer once the command was applied. The answer is sent
/// only after the batch committed ([`Command::answer`]), or replaced by the batch's error.
pub(crate) struct Pending<T> {
    reply: crate::engine::oneshot::Reply<Result<T, Error>>,
    outcome: Option<Result<T, Error>>,
}

impl<T> Pending<T> {
    /// A reply and the receiver its caller waits on.
    pub(crate) fn channel() -> (Self, crate::engine::oneshot::Answer<Result<T, Error>>) {
        let (reply, answer) = crate::engine::oneshot::channel();
        (
            Self {
                reply,
                outcome: None,
            },
            answer,
        )
    }

    /// Keeps `outcome` as the answer, unless it is a storage error: that one is the batch's
    /// (returned, to abort the transaction).
    pub(crate) fn set(&mut self, outcome: Result<T, Error>) -> Result<Applied, Error> {
        match outcome {
            Err(fatal @ Error::Storage(_)) => Err(fatal),
            Err(refused) => {
                self.outcome = Some(Err(refused));
                Ok(Applied::Refused)
            }
            Ok(value) => {
                self.outcome = Some(Ok(value));
                Ok(Applied::Done)
            }
        }
    }

    pub(super) fn send(self, outcome: Result<T, Error>) {
        // The caller may have gone (its thread ended); nothing to do then.
        self.reply.send(outcome);
    }

    /// Sends the kept answer (or `error` if the command was never applied).
    pub(super) fn finish(mut self, error: impl FnOnce() -> Error) {
        let outcome = self.outcome.take().unwrap_or_else(|| Err(error()));
        self.send(outcome);
    }
}

/// How a command's application ended, for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Done,
    /// The command's answer is an error (lease lost, capacity, …); the batch goes on.
    Refused,
}

impl Command {
    /// Sends the answer kept by the command's application.
    pub(super) fn answer(self) {
        self.finish(|| Error::Closed);
    }

    /// Answers `error` instead of whatever the command's application kept.
    pub(super) fn fail(self, error: Error) {
        match self {
            Command::Begin { reply, .. } => reply.send(Err(error)),
            Command::Resolve { reply, .. } => reply.send(Err(error)),
            Command::Rate { reply, .. } => reply.send(Err(error)),
            Command::Flush { reply, .. } => reply.send(Err(error)),
            Command::Compact { reply, .. } => reply.send(Err(error)),
            Command::Bulk { reply, .. } => reply.send(Err(error)),
            Command::Shutdown => {}
        }
    }

    pub(super) fn finish(self, error: impl FnOnce() -> Error) {
        match self {
            Command::Begin { reply, .. } => reply.finish(error),
            Command::Resolve { reply, .. } => reply.finish(error),
            Command::Rate { reply, .. } => reply.finish(error),
            Command::Flush { reply, .. } => reply.finish(error),
            Command::Compact { reply, .. } => reply.finish(error),
            Command::Bulk { reply, .. } => reply.finish(error),
            Command::Shutdown => {}
        }
    }

    /// Whether this command gets a transaction of its own.
    pub(super) fn runs_alone(&self) -> bool {
        matches!(self, Command::Compact { .. } | Command::Bulk { .. })
    }

    /// How many records or counters this command changed, by the answer it keeps.
    pub(super) fn changes(&self) -> u64 {
        match self {
            Command::Begin { reply, .. } => u64::from(matches!(
                reply.outcome,
                Some(Ok(BeginDecision::Acquired { .. }))
            )),
            Command::Resolve { reply, .. } => u64::from(matches!(reply.outcome, Some(Ok(_)))),
            Command::Rate { reply, .. } => u64::from(matches!(reply.outcome, Some(Ok((_, true))))),
            Command::Bulk { reply, .. } => match reply.outcome {
                Some(Ok(written)) => written,
                _ => 0,
            },
            Command::Compact { reply, .. } => match reply.outcome {
                Some(Ok(swept)) => swept.records + swept.rate_states,
                _ => 0,
            },
            Command::Flush { .. } | Command::Shutdown => 0,
        }
    }
}
