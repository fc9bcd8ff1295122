//! The shared store's messages: what a client asks its owner, and what the owner answers. Each
//! crosses the socket as one frame (`frame.rs`); the payloads are postcard encodings of these
//! types, described in FORMAT.md ("The shared store's protocol").
//!
//! A connection opens with a [`Hello`] answered by a [`Welcome`]; then each [`Request`] gets one
//! [`Reply`], in order. Everything decoded here is checked again where it is used: a digest is
//! 32 bytes by its type, a limit is rebuilt through `Limit::new`, a subject through the rate
//! façade's own check, a key count against the connection's limit.

use serde::{Deserialize, Serialize};

use crate::engine::{BeginRequest, Swept};
use crate::error::Error;
use crate::idempotency::Record;
use crate::idempotency::machine::{BeginDecision, Resolution};
use crate::ratelimit::charge::{OpKind, RateOutcome};
use crate::ratelimit::{Limit, Quota, QuotaParts};
use crate::status::{CompactionReport, DegradedCause, Health, Stats};

/// The first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The client's process id (shown in errors and logs; never trusted for anything).
    pub pid: u32,
    /// The epoch the client's process had with an earlier owner (it reconnects), or on this
    /// owner (a further connection of the same process); `None` for a process new to the store.
    pub claim: Option<u64>,
    /// Whether this connection anchors the process's epoch: when it closes, the process has
    /// ended and its leases are taken over at once. A process keeps exactly one open.
    pub anchor: bool,
    /// The client's `max_response_bytes`: frames on this connection may carry the larger of
    /// the two sides' (plus `FRAME_OVERHEAD`).
    pub max_response_bytes: u64,
}

/// The owner's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Welcome {
    /// The connection serves the process at `epoch`.
    Admitted {
        epoch: u64,
        /// The owner's own epoch (what `Store::epoch` reports on every process).
        store_epoch: u64,
        owner_pid: u32,
        max_response_bytes: u64,
    },
    /// The claimed epoch has ended (its leases may have been taken over): start as a new
    /// process.
    EpochEnded,
    /// Not admitted, with the reason.
    Refused(String),
}

/// A begin's parameters as they cross the socket: never the holder (the owner sets it from the
/// connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireBegin {
    pub fingerprint: [u8; 32],
    pub lease_ttl: u64,
    pub record_ttl: u64,
}

impl WireBegin {
    pub(crate) fn of(request: BeginRequest) -> Self {
        WireBegin {
            fingerprint: request.fingerprint,
            lease_ttl: request.lease_ttl,
            record_ttl: request.record_ttl,
        }
    }

    /// The request, for the process at `holder`.
    pub(crate) fn request(self, holder: u64) -> BeginRequest {
        BeginRequest {
            fingerprint: self.fingerprint,
            lease_ttl: self.lease_ttl,
            record_ttl: self.record_ttl,
            holder: Some(holder),
        }
    }
}

/// A limit as it crosses the socket: its name and quota, validated again by `Limit::new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireLimit {
    pub name: String,
    pub quota: QuotaParts,
}

impl WireLimit {
    pub(crate) fn of(limit: &Limit) -> Self {
        WireLimit {
            name: limit.name().to_owned(),
            quota: limit.quota().parts(),
        }
    }

    /// The limit, checked as any other.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a name or quota `Limit::new` refuses.
    pub(crate) fn limit(&self) -> Result<Limit, Error> {
        Limit::new(&self.name, Quota::from_parts(self.quota)?)
    }
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Request {
    /// `RecordEngine::read`.
    Read {
        digest: [u8; 32],
    },
    /// A begin that reads first: answered without writing if it can be, else begun at once.
    Begin {
        digest: [u8; 32],
        request: WireBegin,
    },
    /// A begin's answer if it needs no write (`RecordEngine::begin_without_writing`), else
    /// [`Begun::MustWrite`]: what a read-only client asks.
    BeginRead {
        digest: [u8; 32],
        request: WireBegin,
    },
    /// `RecordEngine::resolve`.
    Resolve {
        digest: [u8; 32],
        token: u64,
        resolution: Resolution,
    },
    /// Up to `limit` records after `after`, as many as fit the connection's frames.
    List {
        after: Option<[u8; 32]>,
        limit: u32,
    },
    /// `CounterEngine::run`.
    Rate {
        kind: OpKind,
        checks: Vec<(WireLimit, String)>,
    },
    /// `RecordEngine::bulk_load` of these records, in one transaction.
    Bulk {
        records: Vec<([u8; 32], Record)>,
    },
    /// `CounterEngine::flush`.
    Flush,
    /// One compaction step.
    Compact {
        limit: u32,
    },
    Stats,
    Health,
    /// On the anchor only: the process is leaving; its epoch ends, answered [`Reply::Done`] once it
    /// has (so that a close returns only when its leases are free).
    Leave,
}

/// How a [`Request::Begin`] went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Begun {
    /// Answered without writing, on `record` (a replay, in flight, a mismatch).
    Read(BeginDecision, Record),
    /// Decided and stored by the owner's writer.
    Written(BeginDecision),
    /// The begin would write ([`Request::BeginRead`] only): nothing was done.
    MustWrite,
}

/// The owner's answer to one request.
// Decoded once per call and matched at once: boxing the larger answers would only allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Reply {
    Record(Option<Record>),
    Begun(Begun),
    Resolved(Option<u64>),
    /// Records in digest order; `end`: there are no more after them.
    Listed {
        records: Vec<([u8; 32], Result<Record, WireError>)>,
        end: bool,
    },
    Rate(RateOutcome),
    /// Records a bulk load wrote.
    Loaded(u64),
    Done,
    Swept(Swept),
    Stats(WireStats),
    Health(WireHealth),
    /// The operation failed on the owner, with this error.
    Failed(WireError),
    /// The owner is closing: the request (if one was sent) was not executed; connect again.
    Goodbye,
}

/// An owner's error as its client reports it: the same variant, the message without the
/// owner's paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireError {
    LeaseLost,
    CapacityExceeded(u64),
    CostTooLarge { cost: u32, limit: u32 },
    InvalidArgument(String),
    Poisoned,
    StorageFull,
    ReadOnly(String),
    Closed,
    Unavailable(String),
    InDoubt(String),
    Corrupted(String),
    Internal(String),
    Storage(String),
}

impl WireError {
    pub(crate) fn of(error: &Error) -> Self {
        match error {
            Error::LeaseLost => WireError::LeaseLost,
            Error::CapacityExceeded { limit } => WireError::CapacityExceeded(*limit),
            Error::CostTooLarge { cost, limit } => WireError::CostTooLarge {
                cost: *cost,
                limit: *limit,
            },
            Error::InvalidArgument(reason) => WireError::InvalidArgument(reason.clone()),
            Error::InvalidKey(key) => WireError::InvalidArgument(key.to_string()),
            Error::Poisoned => WireError::Poisoned,
            Error::StorageFull { .. } => WireError::StorageFull,
            Error::ReadOnly { reason, .. } => WireError::ReadOnly(reason.clone()),
            // The owner closing is not this client's store closing: connect again.
            Error::Closed => WireError::Closed,
            Error::Unavailable(reason) => WireError::Unavailable(reason.clone()),
            Error::InDoubt(reason) => WireError::InDoubt(reason.clone()),
            Error::Corrupted(reason) => WireError::Corrupted(reason.clone()),
            Error::Internal(reason) => WireError::Internal(reason.clone()),
            other => WireError::Storage(other.to_string()),
        }
    }

    /// The error for a caller in the client process, whose store is at `path`.
    pub(crate) fn into_error(self, path: &std::path::Path) -> Error {
        match self {
            WireError::LeaseLost => Error::LeaseLost,
            WireError::CapacityExceeded(limit) => Error::CapacityExceeded { limit },
            WireError::CostTooLarge { cost, limit } => Error::CostTooLarge { cost, limit },
            WireError::InvalidArgument(reason) => Error::InvalidArgument(reason),
            WireError::Poisoned => Error::Poisoned,
            WireError::StorageFull => Error::StorageFull {
                path: path.to_path_buf(),
            },
            WireError::ReadOnly(reason) => Error::ReadOnly {
                path: path.to_path_buf(),
                reason,
            },
            WireError::Closed => {
                Error::Unavailable("the store's owner is closing; nothing was changed".into())
            }
            WireError::Unavailable(reason) => Error::Unavailable(reason),
            WireError::InDoubt(reason) => Error::InDoubt(reason),
            WireError::Corrupted(reason) => Error::Corrupted(reason),
            WireError::Internal(reason) => Error::Internal(reason),
            WireError::Storage(reason) => Error::storage(OwnerError(reason)),
        }
    }
}

/// A storage error on the store's owner, as its message said it.
#[derive(Debug)]
struct OwnerError(String);

impl std::fmt::Display for OwnerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "on the store's owner: {}", self.0)
    }
}

impl std::error::Error for OwnerError {}

/// [`Stats`] as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireStats {
    pub counts: [u64; 8],
    pub last_compaction: Option<(u64, u64, u64, std::time::Duration, std::time::SystemTime)>,
    /// 0 writing, 1 full, 2 read-only, 3 write failed.
    pub degraded: u8,
}

impl WireStats {
    pub(crate) fn of(stats: &Stats) -> Self {
        WireStats {
            counts: [
                stats.running,
                stats.completed,
                stats.failed,
                stats.rate_states,
                stats.file_bytes,
                stats.commits,
                stats.writes,
                stats.rate_counters_in_memory,
            ],
            last_compaction: stats.last_compaction.map(|report| {
                (
                    report.removed_records,
                    report.removed_rate_states,
                    report.batches,
                    report.elapsed,
                    report.finished_at,
                )
            }),
            degraded: match stats.degraded {
                None => 0,
                Some(DegradedCause::StorageFull) => 1,
                Some(DegradedCause::ReadOnly) => 2,
                Some(_) => 3,
            },
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let [
            running,
            completed,
            failed,
            rate_states,
            file_bytes,
            commits,
            writes,
            rate_counters_in_memory,
        ] = self.counts;
        Stats {
            running,
            completed,
            failed,
            rate_states,
            file_bytes,
            last_compaction: self.last_compaction.map(
                |(removed_records, removed_rate_states, batches, elapsed, finished_at)| {
                    CompactionReport {
                        removed_records,
                        removed_rate_states,
                        batches,
                        elapsed,
                        finished_at,
                    }
                },
            ),
            // Only PostgreSQL commits in one round trip; a shared store's owner is embedded.
            one_round_trip_commits: 0,
            commits,
            writes,
            rate_counters_in_memory,
            degraded: match self.degraded {
                0 => None,
                1 => Some(DegradedCause::StorageFull),
                2 => Some(DegradedCause::ReadOnly),
                _ => Some(DegradedCause::WriteFailed),
            },
        }
    }
}

/// [`Health`] as it crosses the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireHealth {
    Ready,
    Degraded(String),
    Failed(String),
    Unreachable(String),
    Closed,
}

impl WireHealth {
    pub(crate) fn of(health: &Health) -> Self {
        match health {
            Health::Ready => WireHealth::Ready,
            Health::Degraded { reason } => WireHealth::Degraded(reason.clone()),
            Health::Failed { reason } => WireHealth::Failed(reason.clone()),
            Health::Unreachable { reason } => WireHealth::Unreachable(reason.clone()),
            Health::Closed => WireHealth::Closed,
        }
    }

    pub(crate) fn health(self) -> Health {
        match self {
            WireHealth::Ready => Health::Ready,
            WireHealth::Degraded(reason) => Health::Degraded { reason },
            WireHealth::Failed(reason) => Health::Failed { reason },
            WireHealth::Unreachable(reason) => Health::Unreachable { reason },
            WireHealth::Closed => Health::Unreachable {
                reason: "the store's owner closed".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_owner_error_reaches_the_client_as_the_same_variant_without_the_owners_path() {
        let full = Error::StorageFull {
            path: "/owner/secret/path".into(),
        };
        let error = WireError::of(&full).into_error(Path::new("/client/path"));
        assert!(matches!(&error, Error::StorageFull { path } if path == Path::new("/client/path")));
        assert!(matches!(
            WireError::of(&Error::LeaseLost).into_error(Path::new("x")),
            Error::LeaseLost
        ));
        // The owner closing is not the client's store closing: nothing happened, retry.
        assert!(matches!(
            WireError::of(&Error::Closed).into_error(Path::new("x")),
            Error::Unavailable(_)
        ));
    }
}
