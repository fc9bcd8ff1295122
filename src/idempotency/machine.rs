//! The idempotency state machine, as pure functions.
//!
//! `(record, event, now) -> (new record, outcome)`. No I/O, no clock, no locks: the writer thread
//! reads the record inside its write transaction, calls one of these functions and writes back
//! whatever it returns. That keeps every rule in this one file, property-testable and fuzzable on
//! its own, and independent of the storage engine.
//!
//! ```text
//!                begin (absent / expired)
//!   (none) ───────────────────────────────▶ RUNNING ──complete──▶ COMPLETED ──┐
//!     ▲                                     │  ▲  │                            │ expires_at
//!     │              release               │  │  └────fail──────▶ FAILED ────┤ passes
//!     ├─────────────────────────────────────┘  │                              │
//!     │                                        │ begin after lease expiry     │
//!     │                                        │ or from an older epoch:      │
//!     │                                        │ takeover (token+1, attempt+1)│
//!     └────────────────────────────────────────┴──────────────────────────────┘
//! ```
//!
//! # Invariants enforced here
//! - **Fencing**: every resolution (`complete`, `fail`, `release`, `extend`, `save_checkpoint`)
//!   requires the caller's token to equal the record's current token. A takeover always installs a
//!   new, strictly greater token, so a stale owner can never write after a takeover.
//! - **No early takeover**: a RUNNING record whose lease is live and whose owner runs in the current
//!   epoch is never handed to anyone else.
//! - **Recovery is told**: a takeover sets `recovered` and increments `attempts`, and hands over the
//!   last checkpoint.
//! - **Fingerprints bind keys**: a request whose fingerprint differs from the record's gets
//!   `Mismatch`, never the record's response and never its lease.
//! - **Expired is absent**: a record whose `expires_at` has passed is treated as if it did not exist.
//! - **Leases never shrink**: `extend` takes the later of the current expiry and `now + by`.

use super::record::{Checkpoint, Outcome, Record, RecordBody, StoredResponse};

/// Everything `begin` needs besides the record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BeginParams {
    pub fingerprint: [u8; 32],
    pub now: u64,
    /// The epoch written into a new lease: the current boot epoch of the node taking it.
    pub epoch: u64,
    /// The current epoch of the node that owns the existing RUNNING record, if any (on a
    /// single-node engine, the store's own epoch). A lease from an older epoch of its node is
    /// left over from a run that ended, so it is taken over at once.
    pub owner_epoch: u64,
    pub lease_ttl: u64,
    pub record_ttl: u64,
    /// The token a new lease gets. The caller advances its counter only if the lease is granted.
    pub next_token: u64,
}

/// The lease handed out by a successful `begin`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Grant {
    pub token: u64,
    pub attempt: u32,
    pub recovered: bool,
    pub checkpoint: Option<Checkpoint>,
    pub lease_expires_at: u64,
}

/// What `begin` decided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum BeginDecision {
    /// Write `record`; the caller owns it through `grant`.
    Acquired { record: Record, grant: Grant },
    /// The record is finished: replay it. Nothing to write.
    Replay {
        outcome: Outcome,
        response: StoredResponse,
    },
    /// Someone else holds a live lease; it expires in `retry_after` nanoseconds.
    InFlight { retry_after: u64 },
    /// The key was used for a different request.
    Mismatch,
}

/// Decides a `begin` on `existing` (the record as stored, expired or not).
pub(crate) fn begin(existing: Option<&Record>, params: &BeginParams) -> BeginDecision {
    let now = params.now;
    let Some(record) = existing.filter(|record| !record.is_expired(now)) else {
        return acquire(None, params);
    };
    if record.fingerprint != params.fingerprint {
        return BeginDecision::Mismatch;
    }
    match &record.body {
        RecordBody::Completed(response) => BeginDecision::Replay {
            outcome: Outcome::Completed,
            response: response.clone(),
        },
        RecordBody::Failed(response) => BeginDecision::Replay {
            outcome: Outcome::Failed,
            response: response.clone(),
        },
        RecordBody::Running {
            epoch,
            lease_expires_at,
            ..
        } => {
            if *epoch >= params.owner_epoch && *lease_expires_at > now {
                BeginDecision::InFlight {
                    retry_after: lease_expires_at - now,
                }
            } else {
                acquire(Some(record), params)
            }
        }
    }
}

/// A fresh record (no predecessor) or a takeover of `previous`, a RUNNING record.
fn acquire(previous: Option<&Record>, params: &BeginParams) -> BeginDecision {
    let lease_expires_at = params.now.saturating_add(params.lease_ttl);
    let (created_at, attempt, checkpoint) = match previous {
        Some(record) => {
            let checkpoint = match &record.body {
                RecordBody::Running { checkpoint, .. } => checkpoint.clone(),
                RecordBody::Completed(_) | RecordBody::Failed(_) => None,
            };
            (
                record.created_at,
                record.attempts.saturating_add(1),
                checkpoint,
            )
        }
        None => (params.now, 1, None),
    };
    let record = Record {
        fingerprint: params.fingerprint,
        created_at,
        expires_at: lease_expires_at.saturating_add(params.record_ttl),
        attempts: attempt,
        record_ttl: params.record_ttl,
        body: RecordBody::Running {
            token: params.next_token,
            epoch: params.epoch,
            lease_expires_at,
            checkpoint: checkpoint.clone(),
        },
    };
    let grant = Grant {
        token: params.next_token,
        attempt,
        recovered: previous.is_some(),
        checkpoint,
        lease_expires_at,
    };
    BeginDecision::Acquired { record, grant }
}

/// A lease owner's request to change its record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Resolution {
    Complete(StoredResponse),
    Fail(StoredResponse),
    Release,
    /// Extend the lease to expire no earlier than `now + by` nanoseconds.
    Extend(u64),
    SaveCheckpoint(Checkpoint),
}

/// What to do with the record after a successful resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    Put(Record),
    Delete,
}

/// The caller's token is not the record's current one (or the record is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fenced;

/// Applies `resolution` by the owner of `token` to `existing` at `now`.
///
/// A late resolution of a lease that expired but was not taken over still succeeds: the token is
/// still the current one, so nobody else can have executed the request.
pub(crate) fn resolve(
    existing: Option<&Record>,
    token: u64,
    resolution: Resolution,
    now: u64,
) -> Result<Effect, Fenced> {
    let record = existing
        .filter(|record| !record.is_expired(now))
        .ok_or(Fenced)?;
    let RecordBody::Running {
        token: current,
        epoch,
        lease_expires_at,
        checkpoint,
    } = &record.body
    else {
        return Err(Fenced);
    };
    if *current != token {
        return Err(Fenced);
    }
    let finished = |body| Record {
        expires_at: now.saturating_add(record.record_ttl),
        body,
        ..record.clone()
    };
    let running = |lease_expires_at: u64, checkpoint: Option<Checkpoint>| Record {
        expires_at: lease_expires_at.saturating_add(record.record_ttl),
        body: RecordBody::Running {
            token,
            epoch: *epoch,
            lease_expires_at,
            checkpoint,
        },
        ..record.clone()
    };
    Ok(match resolution {
        Resolution::Complete(response) => Effect::Put(finished(RecordBody::Completed(response))),
        Resolution::Fail(response) => Effect::Put(finished(RecordBody::Failed(response))),
        Resolution::Release => Effect::Delete,
        Resolution::Extend(by) => {
            let extended = (*lease_expires_at).max(now.saturating_add(by));
            Effect::Put(running(extended, checkpoint.clone()))
        }
        Resolution::SaveCheckpoint(new) => Effect::Put(running(*lease_expires_at, Some(new))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const FP: [u8; 32] = [7; 32];

    fn params(now: u64, token: u64) -> BeginParams {
        BeginParams {
            fingerprint: FP,
            now,
            epoch: 1,
            owner_epoch: 1,
            lease_ttl: 30 * SECOND,
            record_ttl: 100 * SECOND,
            next_token: token,
        }
    }

    fn acquired(decision: BeginDecision) -> (Record, Grant) {
        match decision {
            BeginDecision::Acquired { record, grant } => (record, grant),
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    fn put(effect: Result<Effect, Fenced>) -> Record {
        match effect {
            Ok(Effect::Put(record)) => record,
            other => panic!("expected Put, got {other:?}"),
        }
    }

    fn response() -> StoredResponse {
        StoredResponse::new(201, b"ok".to_vec())
    }

    #[test]
    fn begin_on_absent_creates_running_with_a_fresh_lease() {
        let (record, grant) = acquired(begin(None, &params(10 * SECOND, 5)));
        assert_eq!(grant.token, 5);
        assert_eq!(grant.attempt, 1);
        assert!(!grant.recovered);
        assert_eq!(grant.lease_expires_at, 40 * SECOND);
        assert_eq!(record.expires_at, 140 * SECOND);
        assert_eq!(record.created_at, 10 * SECOND);
    }

    #[test]
    fn begin_on_live_lease_with_same_fingerprint_is_in_flight() {
        let (record, _) = acquired(begin(None, &params(0, 1)));
        let decision = begin(Some(&record), &params(10 * SECOND, 2));
        assert_eq!(
            decision,
            BeginDecision::InFlight {
                retry_after: 20 * SECOND
            }
        );
    }

    #[test]
    fn begin_with_other_fingerprint_is_mismatch_in_every_state() {
        let (running, _) = acquired(begin(None, &params(0, 1)));
        let mut other = params(SECOND, 2);
        other.fingerprint = [9; 32];
        assert_eq!(begin(Some(&running), &other), BeginDecision::Mismatch);
        let done = put(resolve(
            Some(&running),
            1,
            Resolution::Complete(response()),
            SECOND,
        ));
        assert_eq!(begin(Some(&done), &other), BeginDecision::Mismatch);
        // Even an expired lease is not taken over by a different request.
        other.now = 31 * SECOND;
        assert_eq!(begin(Some(&running), &other), BeginDecision::Mismatch);
    }

    #[test]
    fn takeover_after_lease_expiry_increments_token_and_attempt_and_hands_checkpoint() {
        let (record, _) = acquired(begin(None, &params(0, 1)));
        let checkpoint = Checkpoint {
            name: "charged".into(),
            data: b"ch_1".to_vec(),
        };
        let record = put(resolve(
            Some(&record),
            1,
            Resolution::SaveCheckpoint(checkpoint.clone()),
            SECOND,
        ));
        let (taken, grant) = acquired(begin(Some(&record), &params(30 * SECOND, 2)));
        assert_eq!(grant.token, 2);
        assert_eq!(grant.attempt, 2);
        assert!(grant.recovered);
        assert_eq!(grant.checkpoint, Some(checkpoint));
        assert_eq!(taken.created_at, 0);
        // The old owner is fenced.
        assert_eq!(
            resolve(
                Some(&taken),
                1,
                Resolution::Complete(response()),
                31 * SECOND
            ),
            Err(Fenced)
        );
        assert!(resolve(Some(&taken), 2, Resolution::Release, 31 * SECOND).is_ok());
    }

    #[test]
    fn epoch_takeover_does_not_wait_for_lease_expiry() {
        let (record, _) = acquired(begin(None, &params(0, 1)));
        let mut next_boot = params(SECOND, 2);
        next_boot.epoch = 2;
        next_boot.owner_epoch = 2;
        let (_, grant) = acquired(begin(Some(&record), &next_boot));
        assert!(grant.recovered);
        assert_eq!(grant.attempt, 2);
    }

    #[test]
    fn a_live_lease_of_a_node_still_in_its_epoch_waits_whatever_the_takers_epoch() {
        // Another node, in its 7th run, meets a lease of a node still in its 1st.
        let (record, _) = acquired(begin(None, &params(0, 1)));
        let mut other_node = params(SECOND, 2);
        other_node.epoch = 7;
        assert_eq!(
            begin(Some(&record), &other_node),
            BeginDecision::InFlight {
                retry_after: 29 * SECOND
            }
        );
        // Once the owner's node restarted, anyone takes it over at once.
        other_node.owner_epoch = 2;
        assert!(acquired(begin(Some(&record), &other_node)).1.recovered);
    }

    #[test]
    fn finished_records_replay_until_they_expire() {
        let (record, _) = acquired(begin(None, &params(0, 1)));
        let failed = put(resolve(Some(&record), 1, Resolution::Fail(response()), 0));
        assert_eq!(failed.expires_at, 100 * SECOND);
        assert_eq!(
            begin(Some(&failed), &params(99 * SECOND, 2)),
            BeginDecision::Replay {
                outcome: Outcome::Failed,
                response: response()
            }
        );
        let (_, grant) = acquired(begin(Some(&failed), &params(100 * SECOND, 2)));
        assert!(!grant.recovered);
        assert_eq!(grant.attempt, 1);
    }

    #[test]
    fn late_completion_of_an_expired_lease_not_taken_over_succeeds() {
        let (record, _) = acquired(begin(None, &params(0, 1)));
        let done = put(resolve(
            Some(&record),
            1,
            Resolution::Complete(response()),
            50 * SECOND,
        ));
        assert!(matches!(done.body, RecordBody::Completed(_)));
        assert_eq!(done.expires_at, 150 * SECOND);
    }

    #[test]
    fn resolutions_of_finished_or_absent_records_are_fenced() {
        let (record, _) = acquired(begin(None, &params(0, 1)));
        let done = put(resolve(
            Some(&record),
            1,
            Resolution::Complete(response()),
            0,
        ));
        assert_eq!(resolve(Some(&done), 1, Resolution::Release, 0), Err(Fenced));
        assert_eq!(resolve(None, 1, Resolution::Release, 0), Err(Fenced));
        // A RUNNING record past its retention behaves as absent.
        assert_eq!(
            resolve(Some(&record), 1, Resolution::Release, 130 * SECOND),
            Err(Fenced)
        );
    }

    #[test]
    fn release_deletes_and_extend_never_shortens() {
        let (record, _) = acquired(begin(None, &params(0, 1)));
        assert_eq!(
            resolve(Some(&record), 1, Resolution::Release, 0),
            Ok(Effect::Delete)
        );
        let longer = put(resolve(
            Some(&record),
            1,
            Resolution::Extend(60 * SECOND),
            10 * SECOND,
        ));
        assert!(matches!(
            longer.body,
            RecordBody::Running {
                lease_expires_at,
                ..
            } if lease_expires_at == 70 * SECOND
        ));
        assert_eq!(longer.expires_at, 170 * SECOND);
        let not_shorter = put(resolve(
            Some(&longer),
            1,
            Resolution::Extend(SECOND),
            10 * SECOND,
        ));
        assert_eq!(not_shorter, longer);
    }

    #[test]
    fn times_saturate_instead_of_overflowing() {
        let mut far = params(u64::MAX - 1, 1);
        far.lease_ttl = u64::MAX;
        far.record_ttl = u64::MAX;
        let (record, grant) = acquired(begin(None, &far));
        assert_eq!(grant.lease_expires_at, u64::MAX);
        assert_eq!(record.expires_at, u64::MAX);
    }
}
