//! The plain reference model of a store: what `docs/DESIGN.md` says each operation does, written
//! without looking at the implementation. A map of keys to records and a map of rate windows to
//! counts; times in whole seconds.
//!
//! Used by the property test `tests/it/state_machine_model.rs` and the `state_machine` fuzz target,
//! through [`Harness`](super::Harness).

use std::collections::HashMap;

use crate::idempotency::Outcome;

/// Lease TTL of the modelled store, in seconds.
pub const LEASE_TTL: u64 = 30;
/// Record TTL of the modelled store, in seconds.
pub const RECORD_TTL: u64 = 100;
/// Keys the operations pick from.
pub const KEYS: u8 = 3;
/// Rate subjects the operations pick from.
pub const SUBJECTS: u8 = 3;
/// Allowances per fixed rate window.
pub const RATE_QUOTA: u32 = 5;
/// The fixed rate window, in seconds.
pub const RATE_WINDOW: u64 = 60;

/// A record's state in the model.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ModelState {
    Running {
        token: u64,
        epoch: u64,
        lease_expires: u64,
        checkpoint: Option<String>,
    },
    Done {
        outcome: Outcome,
        status: u16,
    },
}

/// A record in the model.
#[derive(Debug, Clone)]
pub(super) struct ModelRecord {
    pub fingerprint: u8,
    pub attempts: u32,
    pub created: u64,
    pub expires: u64,
    pub state: ModelState,
}

/// What `begin` must answer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expected {
    Acquired {
        token: u64,
        attempt: u32,
        recovered: bool,
        checkpoint: Option<String>,
        lease_expires: u64,
    },
    Replay {
        outcome: Outcome,
        status: u16,
    },
    InFlight {
        retry_after: u64,
    },
    Mismatch,
}

/// The reference model.
#[derive(Debug, Clone)]
pub(super) struct Model {
    pub records: HashMap<u8, ModelRecord>,
    pub next_token: u64,
    pub epoch: u64,
    /// The latest time the store has used (a clean close persists it).
    pub now: u64,
    /// Allowances charged per (subject, fixed window index).
    pub rate_counts: HashMap<(u8, u64), u32>,
}

impl Model {
    pub fn new() -> Self {
        Self {
            records: HashMap::new(),
            next_token: 1,
            epoch: 0,
            now: 0,
            rate_counts: HashMap::new(),
        }
    }

    pub fn observe(&mut self, clock: u64) -> u64 {
        self.now = self.now.max(clock);
        self.now
    }

    pub fn live(&self, key: u8) -> Option<&ModelRecord> {
        self.records.get(&key).filter(|r| self.now < r.expires)
    }

    pub fn begin(&mut self, key: u8, fingerprint: u8, lease_ttl: u64) -> Expected {
        let now = self.now;
        let previous = match self.live(key) {
            None => None,
            Some(r) if r.fingerprint != fingerprint => return Expected::Mismatch,
            Some(ModelRecord {
                state: ModelState::Done { outcome, status },
                ..
            }) => {
                return Expected::Replay {
                    outcome: *outcome,
                    status: *status,
                };
            }
            Some(r) => match &r.state {
                ModelState::Running {
                    epoch,
                    lease_expires,
                    ..
                } if *epoch == self.epoch && *lease_expires > now => {
                    return Expected::InFlight {
                        retry_after: lease_expires - now,
                    };
                }
                _ => Some(r.clone()),
            },
        };
        let token = self.next_token;
        self.next_token += 1;
        let (attempt, created, checkpoint) = match &previous {
            Some(ModelRecord {
                state: ModelState::Running { checkpoint, .. },
                attempts,
                created,
                ..
            }) => (attempts + 1, *created, checkpoint.clone()),
            _ => (1, now, None),
        };
        let lease_expires = now + lease_ttl;
        self.records.insert(
            key,
            ModelRecord {
                fingerprint,
                attempts: attempt,
                created,
                expires: lease_expires + RECORD_TTL,
                state: ModelState::Running {
                    token,
                    epoch: self.epoch,
                    lease_expires,
                    checkpoint: checkpoint.clone(),
                },
            },
        );
        Expected::Acquired {
            token,
            attempt,
            recovered: previous.is_some(),
            checkpoint,
            lease_expires,
        }
    }

    /// Applies a lease owner's change if `token` still owns `key`'s live RUNNING record; `change`
    /// returns false to delete the record.
    pub fn resolve(
        &mut self,
        key: u8,
        token: u64,
        change: impl FnOnce(&mut ModelRecord, u64) -> bool,
    ) -> bool {
        let now = self.now;
        let owned = matches!(
            self.live(key),
            Some(ModelRecord { state: ModelState::Running { token: current, .. }, .. })
                if *current == token
        );
        if !owned {
            return false;
        }
        let keep = self
            .records
            .get_mut(&key)
            .is_none_or(|record| change(record, now));
        if !keep {
            self.records.remove(&key);
        }
        true
    }

    pub fn finish(&mut self, key: u8, token: u64, outcome: Outcome, status: u16) -> bool {
        self.resolve(key, token, |record, now| {
            record.state = ModelState::Done { outcome, status };
            record.expires = now + RECORD_TTL;
            true
        })
    }

    pub fn extend(&mut self, key: u8, token: u64, by: u64) -> (bool, Option<u64>) {
        let mut new_expiry = None;
        let owned = self.resolve(key, token, |record, now| {
            if let ModelState::Running { lease_expires, .. } = &mut record.state {
                *lease_expires = (*lease_expires).max(now + by);
                record.expires = *lease_expires + RECORD_TTL;
                new_expiry = Some(*lease_expires);
            }
            true
        });
        (owned, new_expiry)
    }

    pub fn checkpoint(&mut self, key: u8, token: u64, name: &str) -> bool {
        self.resolve(key, token, |record, _| {
            if let ModelState::Running { checkpoint, .. } = &mut record.state {
                *checkpoint = Some(name.to_owned());
            }
            true
        })
    }

    /// A fixed-window check of `cost`: (allowed, remaining).
    pub fn rate(&mut self, subject: u8, cost: u32) -> (bool, u32) {
        let window = self.now / RATE_WINDOW;
        let count = self.rate_counts.entry((subject, window)).or_default();
        let allowed = *count + cost <= RATE_QUOTA;
        if allowed {
            *count += cost;
        }
        (allowed, RATE_QUOTA - *count)
    }

    /// Allowances left for `subject` in the current window.
    pub fn rate_remaining(&self, subject: u8) -> u32 {
        let window = self.now / RATE_WINDOW;
        RATE_QUOTA
            - self
                .rate_counts
                .get(&(subject, window))
                .copied()
                .unwrap_or(0)
    }

    /// Records still on disk after a sweep at the model's time, by state: running, completed,
    /// failed. A sweep removes a record once the clock reaches its index time: its expiry rounded
    /// up to a thirty-second of the record TTL, plus its creation time modulo that granule
    /// (DESIGN, "Compaction"). Until then an expired record still counts, though it reads as
    /// absent. With `exact` (PostgreSQL, whose index holds the exact expiry), a sweep removes
    /// every expired record.
    pub fn counts(&self, exact: bool) -> [u64; 3] {
        // In eighths of a second, so that the granule (100 s / 32 = 3.125 s) is a whole number.
        const GRANULE: u64 = RECORD_TTL * 8 / 32;
        let swept = |record: &ModelRecord| {
            if exact {
                return record.expires <= self.now;
            }
            let index =
                (record.expires * 8).div_ceil(GRANULE) * GRANULE + (record.created * 8) % GRANULE;
            index <= self.now * 8
        };
        let mut counts = [0; 3];
        for key in 0..KEYS {
            if let Some(record) = self.records.get(&key).filter(|r| !swept(r)) {
                let slot = match record.state {
                    ModelState::Running { .. } => 0,
                    ModelState::Done {
                        outcome: Outcome::Completed,
                        ..
                    } => 1,
                    ModelState::Done {
                        outcome: Outcome::Failed,
                        ..
                    } => 2,
                };
                counts[slot] += 1;
            }
        }
        counts
    }
}
