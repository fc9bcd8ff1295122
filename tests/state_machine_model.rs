//! Random sequences of begin / complete / fail / release / extend / checkpoint / clock moves /
//! reopen across a few keys, run against a real store and against a plain in-memory reference
//! model. Every answer (acquired with which token, attempt, recovery flag and checkpoint; replay of
//! which response; in flight for how long; mismatch; lease lost) and every `get` must agree.
//!
//! The model is written from the rules in docs/DESIGN.md, not from the implementation: a map of
//! keys to records, times in whole seconds. Failing seeds are kept in
//! `state_machine_model.proptest-regressions` and replayed first on every run.
//! `PROPTEST_CASES` runs more cases (the default is 64).

mod fixture;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use tollgate::idempotency::{
    Begin, Fingerprint, IdempotencyKey, Lease, Outcome, RecordState, StoredResponse,
};
use tollgate::{BeginOptions, Clock, Error, ManualClock, Store};

const LEASE_TTL: u64 = 30;
const RECORD_TTL: u64 = 100;
const KEYS: u8 = 3;
const START: u64 = 1_800_000_000;

#[derive(Debug, Clone)]
enum Op {
    Begin {
        key: u8,
        fingerprint: u8,
        lease_ttl: Option<u64>,
    },
    Complete {
        lease: usize,
        status: u16,
    },
    Fail {
        lease: usize,
        status: u16,
    },
    Release {
        lease: usize,
    },
    Extend {
        lease: usize,
        by: u64,
    },
    Checkpoint {
        lease: usize,
        name: u8,
    },
    DropLease {
        lease: usize,
    },
    Advance {
        seconds: u64,
    },
    StepBack {
        seconds: u64,
    },
    Reopen,
    /// Drop every handle without `close`. The final commit still runs (drop joins the writer).
    DropAndReopen,
}

fn op() -> impl Strategy<Value = Op> {
    let lease = 0..4usize;
    prop_oneof![
        6 => (0..KEYS, 0..2u8, prop::option::weighted(0.2, 1..60u64))
            .prop_map(|(key, fingerprint, lease_ttl)| Op::Begin { key, fingerprint, lease_ttl }),
        3 => (lease.clone(), 200..204u16).prop_map(|(lease, status)| Op::Complete { lease, status }),
        1 => (lease.clone(), 400..404u16).prop_map(|(lease, status)| Op::Fail { lease, status }),
        1 => lease.clone().prop_map(|lease| Op::Release { lease }),
        1 => (lease.clone(), 0..90u64).prop_map(|(lease, by)| Op::Extend { lease, by }),
        1 => (lease.clone(), 0..3u8).prop_map(|(lease, name)| Op::Checkpoint { lease, name }),
        1 => lease.prop_map(|lease| Op::DropLease { lease }),
        3 => prop_oneof![0..5u64, 25..35u64, 95..140u64].prop_map(|seconds| Op::Advance { seconds }),
        1 => (1..50u64).prop_map(|seconds| Op::StepBack { seconds }),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropAndReopen),
    ]
}

// ---------------------------------------------------------------------------------------------
// The reference model.

#[derive(Debug, Clone, PartialEq)]
enum ModelState {
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

#[derive(Debug, Clone)]
struct ModelRecord {
    fingerprint: u8,
    attempts: u32,
    created: u64,
    expires: u64,
    state: ModelState,
}

#[derive(Debug, PartialEq)]
enum Expected {
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

struct Model {
    records: HashMap<u8, ModelRecord>,
    next_token: u64,
    epoch: u64,
    /// The latest time the store has used (a clean close persists it).
    now: u64,
}

impl Model {
    fn observe(&mut self, clock: u64) -> u64 {
        self.now = self.now.max(clock);
        self.now
    }

    fn live(&self, key: u8) -> Option<&ModelRecord> {
        self.records.get(&key).filter(|r| self.now < r.expires)
    }

    fn begin(&mut self, key: u8, fingerprint: u8, lease_ttl: u64) -> Expected {
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
            Some(r) => match &r.state {
                ModelState::Running { checkpoint, .. } => {
                    (r.attempts + 1, r.created, checkpoint.clone())
                }
                ModelState::Done { .. } => unreachable!("done records replay"),
            },
            None => (1, now, None),
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

    /// Applies a lease owner's change if `token` still owns `key`'s live RUNNING record.
    fn resolve(
        &mut self,
        key: u8,
        token: u64,
        change: impl FnOnce(&mut ModelRecord, u64) -> bool,
    ) -> bool {
        let now = self.now;
        let owned = matches!(
            self.live(key),
            Some(ModelRecord { state: ModelState::Running { token: current, .. }, .. }) if *current == token
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

    fn finish(&mut self, key: u8, token: u64, outcome: Outcome, status: u16) -> bool {
        self.resolve(key, token, |record, now| {
            record.state = ModelState::Done { outcome, status };
            record.expires = now + RECORD_TTL;
            true
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test.

struct Held {
    key: u8,
    token: u64,
    lease: Lease,
}

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    store: Option<Store>,
    held: Vec<Held>,
    model: Model,
}

fn key(k: u8) -> IdempotencyKey {
    IdempotencyKey::new("model", &format!("key-{k}")).unwrap()
}

fn fingerprint(f: u8) -> Fingerprint {
    Fingerprint::of(&[f])
}

fn seconds_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Harness {
    fn new() -> Self {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(START));
        let mut harness = Self {
            dir: tempfile::tempdir().unwrap(),
            clock,
            store: None,
            held: Vec::new(),
            model: Model {
                records: HashMap::new(),
                next_token: 1,
                epoch: 0,
                now: 0,
            },
        };
        harness.open();
        harness
    }

    fn open(&mut self) {
        let store = Store::builder()
            .clock(self.clock.clone())
            .lease_ttl(Duration::from_secs(LEASE_TTL))
            .record_ttl(Duration::from_secs(RECORD_TTL))
            .open(self.dir.path().join("model.redb"))
            .unwrap();
        self.model.epoch += 1;
        assert_eq!(store.epoch(), self.model.epoch);
        self.store = Some(store);
    }

    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn clock_seconds(&self) -> u64 {
        seconds_since_epoch(self.clock.now())
    }

    fn take_lease(&mut self, index: usize) -> Option<Held> {
        if self.held.is_empty() {
            None
        } else {
            let index = index % self.held.len();
            Some(self.held.remove(index))
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Begin {
                key: k,
                fingerprint: f,
                lease_ttl,
            } => {
                let options = BeginOptions {
                    lease_ttl: lease_ttl.map(Duration::from_secs),
                    ..BeginOptions::default()
                };
                let actual = self
                    .store()
                    .begin_with(&key(*k), &fingerprint(*f), &options)
                    .unwrap();
                self.model.observe(self.clock_seconds());
                let expected = self.model.begin(*k, *f, lease_ttl.unwrap_or(LEASE_TTL));
                let actual = match actual {
                    Begin::Acquired(lease) => {
                        let seen = Expected::Acquired {
                            token: lease.token(),
                            attempt: lease.attempt(),
                            recovered: lease.recovered(),
                            checkpoint: lease.checkpoint().map(|c| c.name.clone()),
                            lease_expires: seconds_since_epoch(lease.expires_at()),
                        };
                        self.held.push(Held {
                            key: *k,
                            token: lease.token(),
                            lease,
                        });
                        seen
                    }
                    Begin::Replay(replay) => Expected::Replay {
                        outcome: replay.outcome(),
                        status: replay.response().status,
                    },
                    Begin::InFlight { retry_after } => Expected::InFlight {
                        retry_after: retry_after.as_secs(),
                    },
                    Begin::Mismatch => Expected::Mismatch,
                };
                prop_assert_eq!(actual, expected);
            }
            Op::Complete { lease, status } | Op::Fail { lease, status } => {
                let Some(held) = self.take_lease(*lease) else {
                    return Ok(());
                };
                let response = StoredResponse::new(*status, vec![1; usize::from(*status % 7)]);
                let (result, outcome) = if matches!(op, Op::Complete { .. }) {
                    (held.lease.complete(response), Outcome::Completed)
                } else {
                    (held.lease.fail(response), Outcome::Failed)
                };
                self.model.observe(self.clock_seconds());
                let owned = self.model.finish(held.key, held.token, outcome, *status);
                check_resolution(result, owned)?;
            }
            Op::Release { lease } => {
                let Some(held) = self.take_lease(*lease) else {
                    return Ok(());
                };
                let result = held.lease.release();
                self.model.observe(self.clock_seconds());
                let owned = self.model.resolve(held.key, held.token, |_, _| false);
                check_resolution(result, owned)?;
            }
            Op::Extend { lease, by } => {
                let Some(mut held) = self.take_lease(*lease) else {
                    return Ok(());
                };
                let result = held.lease.extend(Duration::from_secs(*by));
                self.model.observe(self.clock_seconds());
                let mut new_expiry = None;
                let owned = self.model.resolve(held.key, held.token, |record, now| {
                    if let ModelState::Running { lease_expires, .. } = &mut record.state {
                        *lease_expires = (*lease_expires).max(now + by);
                        record.expires = *lease_expires + RECORD_TTL;
                        new_expiry = Some(*lease_expires);
                    }
                    true
                });
                check_resolution(result, owned)?;
                if let Some(expiry) = new_expiry {
                    prop_assert_eq!(seconds_since_epoch(held.lease.expires_at()), expiry);
                }
                self.held.push(held);
            }
            Op::Checkpoint { lease, name } => {
                let Some(mut held) = self.take_lease(*lease) else {
                    return Ok(());
                };
                let name = format!("step-{name}");
                let result = held.lease.save_checkpoint(&name, name.as_bytes());
                self.model.observe(self.clock_seconds());
                let owned = self.model.resolve(held.key, held.token, |record, _| {
                    if let ModelState::Running { checkpoint, .. } = &mut record.state {
                        *checkpoint = Some(name.clone());
                    }
                    true
                });
                check_resolution(result, owned)?;
                self.held.push(held);
            }
            Op::DropLease { lease } => drop(self.take_lease(*lease)),
            Op::Advance { seconds } => self.clock.advance(Duration::from_secs(*seconds)),
            Op::StepBack { seconds } => {
                self.clock
                    .set(self.clock.now() - Duration::from_secs(*seconds));
            }
            Op::DropAndReopen => {
                self.held.clear();
                drop(self.store.take());
                self.open();
            }
            Op::Reopen => {
                // Leases of the closed store are dead: their records are taken over at reopen.
                self.held.clear();
                // A clean close persists the clock's high-water mark, reads included: time goes on.
                self.store.take().unwrap().close().unwrap();
                self.open();
            }
        }
        self.compare_records()
    }

    fn compare_records(&mut self) -> Result<(), TestCaseError> {
        for k in 0..KEYS {
            let actual = self.store().get(&key(k)).unwrap();
            self.model.observe(self.clock_seconds());
            let expected = self.model.live(k).map(|r| {
                let state = match r.state {
                    ModelState::Running { .. } => RecordState::Running,
                    ModelState::Done {
                        outcome: Outcome::Completed,
                        ..
                    } => RecordState::Completed,
                    ModelState::Done {
                        outcome: Outcome::Failed,
                        ..
                    } => RecordState::Failed,
                };
                (state, r.attempts, r.created, r.expires)
            });
            let actual = actual.map(|info| {
                (
                    info.state,
                    info.attempts,
                    seconds_since_epoch(info.created_at),
                    seconds_since_epoch(info.expires_at),
                )
            });
            prop_assert_eq!(actual, expected, "record of key {}", k);
        }
        Ok(())
    }
}

fn check_resolution(result: Result<(), Error>, owned: bool) -> Result<(), TestCaseError> {
    match result {
        Ok(()) => prop_assert!(owned, "store accepted a resolution the model fences"),
        Err(Error::LeaseLost) => {
            prop_assert!(!owned, "store fenced a resolution the model accepts")
        }
        Err(other) => prop_assert!(false, "unexpected error {other}"),
    }
    Ok(())
}

#[test]
fn store_agrees_with_the_reference_model() {
    let config = fixture::proptest_config(file!(), 64);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op)?;
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
