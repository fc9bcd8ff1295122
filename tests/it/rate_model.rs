//! Every rate algorithm, through the real store in both durability modes, against a plain reference
//! model: random quotas, costs, peeks, refunds, resets, clock steps forwards and backwards, and
//! reopens. Every decision's allowed / remaining / retry_after / reset_after must agree exactly.
//!
//! The references are written differently from the implementation on purpose:
//! - GCRA is modelled as a token bucket holding nanoseconds of credit (capacity burst·T), refilled
//!   by elapsed time; the implementation stores a theoretical arrival time instead.
//! - Windows are modelled as a map from window index to count; the sliding window's retry time is
//!   found by binary search over time, not by formula.
//! - Time going backwards is "no time passed": the model clamps to the latest time it has seen.
//!
//! `PROPTEST_CASES` runs more cases (default 48).
//!
//! `on_postgres` runs the same cases against a store on PostgreSQL (feature `postgres`;
//! `Immediate` only, the one mode there), each on a fresh schema, with the schema's clock stopped
//! at the model's time before every step, so that decisions agree to the nanosecond there too.

use crate::fixture;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use tollgate::ratelimit::{Decision, Limit, Quota, RateDurability};
use tollgate::{Clock, ManualClock, Store};

const START: u64 = 1_800_000_000_000_000_000;
const SUBJECTS: usize = 2;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Gcra { n: u32, period_ms: u64, burst: u32 },
    Fixed { n: u32, period_ms: u64 },
    Sliding { n: u32, period_ms: u64 },
}

impl Kind {
    fn quota(self) -> Quota {
        match self {
            Kind::Gcra {
                n,
                period_ms,
                burst,
            } => Quota::new(n, Duration::from_millis(period_ms)).with_burst(burst),
            Kind::Fixed { n, period_ms } => {
                Quota::fixed_window(n, Duration::from_millis(period_ms))
            }
            Kind::Sliding { n, period_ms } => {
                Quota::sliding_window(n, Duration::from_millis(period_ms))
            }
        }
    }

    fn capacity(self) -> u32 {
        match self {
            Kind::Gcra { burst, .. } => burst,
            Kind::Fixed { n, .. } | Kind::Sliding { n, .. } => n,
        }
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (1..12u32, 1..3000u64, 1..12u32).prop_map(|(n, period_ms, burst)| Kind::Gcra {
            n,
            period_ms,
            burst
        }),
        (1..12u32, 1..3000u64).prop_map(|(n, period_ms)| Kind::Fixed { n, period_ms }),
        (1..12u32, 1..3000u64).prop_map(|(n, period_ms)| Kind::Sliding { n, period_ms }),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Check { subject: usize, cost: u32 },
    Peek { subject: usize },
    Refund { subject: usize, amount: u32 },
    Reset { subject: usize },
    Advance { nanos: u64 },
    StepBack { nanos: u64 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SUBJECTS, 0..14u32).prop_map(|(subject, cost)| Op::Check { subject, cost }),
        2 => (0..SUBJECTS).prop_map(|subject| Op::Peek { subject }),
        1 => (0..SUBJECTS, 0..5u32).prop_map(|(subject, amount)| Op::Refund { subject, amount }),
        1 => (0..SUBJECTS).prop_map(|subject| Op::Reset { subject }),
        4 => prop_oneof![0..1_000_000u64, 1_000_000..3_000_000_000u64].prop_map(|nanos| Op::Advance { nanos }),
        1 => (1..2_000_000_000u64).prop_map(|nanos| Op::StepBack { nanos }),
        1 => Just(Op::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------------
// Reference models.

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Expected {
    allowed: bool,
    remaining: u64,
    reset_after: u64,
    retry_after: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    /// Nanoseconds of credit; `None` = never used (full).
    credit: Option<u128>,
    last: u64,
}

#[derive(Debug, Default, Clone)]
struct Counts(HashMap<u64, u64>);

impl Counts {
    /// The counts of the window before `window` and of `window` itself.
    fn around(&self, window: u64) -> (u64, u64) {
        let count = |w: Option<u64>| w.and_then(|w| self.0.get(&w)).copied().unwrap_or(0);
        (count(window.checked_sub(1)), count(Some(window)))
    }
}

#[derive(Debug, Clone)]
enum Subject {
    Bucket(Bucket),
    Windows(Counts),
}

struct Reference {
    kind: Kind,
    subjects: Vec<Subject>,
}

impl Reference {
    fn new(kind: Kind) -> Self {
        let fresh = match kind {
            Kind::Gcra { .. } => Subject::Bucket(Bucket::default()),
            _ => Subject::Windows(Counts::default()),
        };
        Self {
            kind,
            subjects: vec![fresh; SUBJECTS],
        }
    }

    fn interval(&self) -> u128 {
        match self.kind {
            Kind::Gcra { n, period_ms, .. } => u128::from(period_ms) * 1_000_000 / u128::from(n),
            _ => unreachable!(),
        }
    }

    fn period(&self) -> u64 {
        match self.kind {
            Kind::Gcra { period_ms, .. }
            | Kind::Fixed { period_ms, .. }
            | Kind::Sliding { period_ms, .. } => period_ms * 1_000_000,
        }
    }

    fn reset(&mut self, subject: usize) {
        self.subjects[subject] = Reference::new(self.kind).subjects.swap_remove(0);
    }

    /// Charges `cost` if it fits (0 reports without charging).
    fn check(&mut self, subject: usize, cost: u64, now: u64) -> Expected {
        let kind = self.kind;
        let period = self.period();
        match (&mut self.subjects[subject], kind) {
            (Subject::Bucket(bucket), Kind::Gcra { burst, .. }) => {
                let t = {
                    let Kind::Gcra { n, period_ms, .. } = kind else {
                        unreachable!()
                    };
                    u128::from(period_ms) * 1_000_000 / u128::from(n)
                };
                let capacity = t * u128::from(burst);
                let mut credit = bucket.credit.unwrap_or(capacity);
                if now > bucket.last {
                    credit = (credit + u128::from(now - bucket.last)).min(capacity);
                }
                let need = u128::from(cost) * t;
                let allowed = credit >= need;
                let after = if allowed { credit - need } else { credit };
                if allowed {
                    bucket.credit = Some(after);
                    bucket.last = bucket.last.max(now);
                }
                Expected {
                    allowed,
                    remaining: (after / t) as u64,
                    reset_after: (capacity - after) as u64,
                    retry_after: (!allowed).then(|| (need - credit) as u64),
                }
            }
            (Subject::Windows(counts), Kind::Fixed { n, .. }) => {
                let window = now / period;
                let count = counts.0.get(&window).copied().unwrap_or(0);
                let allowed = count + cost <= u64::from(n);
                let after = if allowed { count + cost } else { count };
                if allowed {
                    counts.0.insert(window, after);
                }
                let until_next = (window + 1) * period - now;
                Expected {
                    allowed,
                    remaining: u64::from(n) - after,
                    reset_after: if after == 0 { 0 } else { until_next },
                    retry_after: (!allowed).then_some(until_next),
                }
            }
            (Subject::Windows(counts), Kind::Sliding { n, .. }) => {
                let fits = |counts: &Counts, at: u64, extra: u64| {
                    let window = at / period;
                    let elapsed = u128::from(at - window * period);
                    let (previous, current) = counts.around(window);
                    let used = u128::from(previous) * (u128::from(period) - elapsed)
                        + u128::from(current + extra) * u128::from(period);
                    (used <= u128::from(n) * u128::from(period), used)
                };
                let (allowed, _) = fits(counts, now, cost);
                let window = now / period;
                if allowed && cost > 0 {
                    *counts.0.entry(window).or_insert(0) += cost;
                }
                let (_, used) = fits(counts, now, 0);
                let remaining = ((u128::from(n) * u128::from(period)).saturating_sub(used)
                    / u128::from(period)) as u64;
                let (previous, current) = counts.around(window);
                let reset_after = if current > 0 {
                    (window + 2) * period - now
                } else if previous > 0 {
                    (window + 1) * period - now
                } else {
                    0
                };
                let retry_after = (!allowed).then(|| {
                    // The first time at which `cost` fits, by binary search (fitting is monotone).
                    let (mut low, mut high) = (now, now + 2 * period);
                    while low < high {
                        let mid = low + (high - low) / 2;
                        if fits(counts, mid, cost).0 {
                            high = mid
                        } else {
                            low = mid + 1
                        }
                    }
                    low - now
                });
                Expected {
                    allowed,
                    remaining,
                    reset_after,
                    retry_after,
                }
            }
            _ => unreachable!(),
        }
    }

    fn peek(&mut self, subject: usize, now: u64) -> Expected {
        let one = self.clone_subject_check(subject, 1, now);
        let zero = self.clone_subject_check(subject, 0, now);
        Expected {
            allowed: one.allowed,
            retry_after: one.retry_after,
            ..zero
        }
    }

    fn clone_subject_check(&mut self, subject: usize, cost: u64, now: u64) -> Expected {
        let saved = self.subjects[subject].clone();
        let expected = self.check(subject, cost, now);
        self.subjects[subject] = saved;
        expected
    }

    fn refund(&mut self, subject: usize, amount: u64, now: u64) -> Expected {
        let period = self.period();
        let kind = self.kind;
        let interval = matches!(kind, Kind::Gcra { .. }).then(|| self.interval());
        match &mut self.subjects[subject] {
            Subject::Bucket(bucket) => {
                let t = interval.unwrap();
                let Kind::Gcra { burst, .. } = kind else {
                    unreachable!()
                };
                let capacity = t * u128::from(burst);
                let mut credit = bucket.credit.unwrap_or(capacity);
                if now > bucket.last {
                    credit = (credit + u128::from(now - bucket.last)).min(capacity);
                }
                bucket.credit = Some((credit + u128::from(amount) * t).min(capacity));
                bucket.last = bucket.last.max(now);
            }
            Subject::Windows(counts) => {
                let window = now / period;
                let current = counts.0.get(&window).copied().unwrap_or(0);
                let from_current = amount.min(current);
                counts.0.insert(window, current - from_current);
                if matches!(kind, Kind::Sliding { .. }) {
                    if let Some(previous) = window.checked_sub(1).and_then(|w| counts.0.get_mut(&w))
                    {
                        *previous = previous.saturating_sub(amount - from_current);
                    }
                }
            }
        }
        self.peek(subject, now)
    }
}

// ---------------------------------------------------------------------------------------------

fn expected_of(decision: &Decision) -> Expected {
    Expected {
        allowed: decision.allowed(),
        remaining: u64::from(decision.remaining()),
        reset_after: decision.reset_after().as_nanos() as u64,
        retry_after: decision.retry_after().map(|d| d.as_nanos() as u64),
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Where a case's store lives.
enum Engine<'a> {
    Embedded,
    /// A schema of the PostgreSQL server at the connection string.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres(&'a str, String),
    /// Records in a file, counters in a namespace of the Redis server at the URL.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis(&'a str, String),
}

fn run_case(
    engine: &Engine<'_>,
    kind: Kind,
    durability: RateDurability,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rates.redb");
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_nanos(START));
    let open = || {
        let builder = Store::builder()
            .clock(clock.clone())
            .rate_durability(durability);
        match engine {
            Engine::Embedded => builder.open(&path).unwrap(),
            #[cfg(feature = "postgres")]
            Engine::Postgres(conn, schema) => builder
                .postgres_schema(schema)
                .node_id("rate-model")
                .open_postgres(conn)
                .unwrap(),
            #[cfg(not(feature = "postgres"))]
            Engine::Postgres(..) => unreachable!("PostgreSQL needs the postgres feature"),
            #[cfg(feature = "redis")]
            Engine::Redis(url, namespace) => builder
                .rate_counters_redis(url)
                .redis_namespace(namespace)
                .open(&path)
                .unwrap(),
            #[cfg(not(feature = "redis"))]
            Engine::Redis(..) => unreachable!("Redis needs the redis feature"),
        }
    };
    // Redis decides in whole microseconds: the model's times are rounded down to one, and a
    // retry time (the first instant a cost fits) up to the next.
    let micros = matches!(engine, Engine::Redis(..));
    let quantized = |expected: Expected| Expected {
        retry_after: expected.retry_after.map(|r| r.div_ceil(1000) * 1000),
        ..expected
    };
    let mut store = open();
    let limit = Limit::new("model", kind.quota()).unwrap();
    let mut reference = Reference::new(kind);
    let mut seen = 0u64; // the latest time the store has observed
    let subject = |s: usize| format!("subject-{s}");

    for op in ops {
        let now = seen.max(nanos(clock.now()));
        let now = if micros { now / 1000 * 1000 } else { now };
        // On PostgreSQL the schema's clock decides: it stands at the model's time for this step.
        // (The embedded store reads the ManualClock; the call does nothing there.)
        store
            .set_database_clock_for_tests(SystemTime::UNIX_EPOCH + Duration::from_nanos(now))
            .unwrap();
        match op {
            Op::Check { subject: s, cost } => {
                if *cost > kind.capacity() {
                    let refused = matches!(
                        store.check_n(&limit, &subject(*s), *cost),
                        Err(tollgate::Error::CostTooLarge { .. })
                    );
                    prop_assert!(refused, "a cost over capacity must be refused");
                    continue;
                }
                let decision = store.check_n(&limit, &subject(*s), *cost).unwrap();
                seen = now;
                let expected = if *cost == 0 {
                    reference.peek(*s, now)
                } else {
                    reference.check(*s, u64::from(*cost), now)
                };
                let expected = if *cost == 0 {
                    Expected {
                        allowed: true,
                        retry_after: None,
                        ..expected
                    }
                } else {
                    expected
                };
                prop_assert_eq!(
                    expected_of(&decision),
                    if micros {
                        quantized(expected)
                    } else {
                        expected
                    },
                    "check {:?} at +{}ns",
                    op,
                    now - START
                );
                prop_assert_eq!(decision.limit(), kind.capacity());
            }
            Op::Peek { subject: s } => {
                let decision = store.peek(&limit, &subject(*s)).unwrap();
                seen = now;
                let expected = reference.peek(*s, now);
                prop_assert_eq!(
                    expected_of(&decision),
                    if micros {
                        quantized(expected)
                    } else {
                        expected
                    },
                    "peek at +{}ns",
                    now - START
                );
            }
            Op::Refund { subject: s, amount } => {
                let decision = store.refund(&limit, &subject(*s), *amount).unwrap();
                seen = now;
                let expected = reference.refund(*s, u64::from(*amount), now);
                prop_assert_eq!(
                    expected_of(&decision),
                    if micros {
                        quantized(expected)
                    } else {
                        expected
                    }
                );
            }
            Op::Reset { subject: s } => {
                store.reset(&limit, &subject(*s)).unwrap();
                seen = now;
                reference.reset(*s);
            }
            Op::Advance { nanos } => clock.advance(Duration::from_nanos(*nanos)),
            Op::StepBack { nanos } => clock.set(clock.now() - Duration::from_nanos(*nanos)),
            Op::Reopen => {
                store.close().unwrap();
                store = open();
            }
        }
    }
    Ok(())
}

#[test]
fn rate_algorithms_agree_with_reference_models_in_both_modes() {
    let config = fixture::proptest_config(file!(), 64);
    let durability = prop_oneof![
        Just(RateDurability::Immediate),
        Just(RateDurability::Batched {
            max_delay: Duration::from_millis(2)
        }),
    ];
    let strategy = (kind(), durability, prop::collection::vec(op(), 1..60));
    let result = TestRunner::new(config).run(&strategy, |(kind, durability, ops)| {
        run_case(&Engine::Embedded, kind, durability, &ops)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// The same cases on PostgreSQL, whose counters are always `Immediate`.
#[cfg(feature = "postgres")]
#[test]
fn on_postgres() {
    let server = require_postgres!();
    let config = fixture::proptest_config(file!(), 32);
    let strategy = (kind(), prop::collection::vec(op(), 1..60));
    let result = TestRunner::new(config).run(&strategy, |(kind, ops)| {
        let engine = Engine::Postgres(&server.conn, fixture::postgres::unique_schema("rate_model"));
        run_case(&engine, kind, RateDurability::Immediate, &ops)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// The same cases with the counters on Redis (feature `redis`), each in a namespace of its own,
/// with the scripts' clock set to the model's time before every step. Redis decides in whole
/// microseconds: the quotas drawn here have emission intervals of whole microseconds (counts
/// that divide 1000), and the model runs at the microsecond its times round down to.
#[cfg(feature = "redis")]
#[test]
fn on_redis() {
    let server = require_redis!();
    let config = fixture::proptest_config(file!(), 48);
    let count = prop::sample::select(vec![1u32, 2, 4, 5, 8, 10]);
    let kind = prop_oneof![
        (count.clone(), 1..3000u64, 1..12u32).prop_map(|(n, period_ms, burst)| Kind::Gcra {
            n,
            period_ms,
            burst
        }),
        (count.clone(), 1..3000u64).prop_map(|(n, period_ms)| Kind::Fixed { n, period_ms }),
        (count, 1..3000u64).prop_map(|(n, period_ms)| Kind::Sliding { n, period_ms }),
    ];
    let strategy = (kind, prop::collection::vec(op(), 1..60));
    let result = TestRunner::new(config).run(&strategy, |(kind, ops)| {
        let engine = Engine::Redis(&server.url, fixture::redis::unique_namespace("rate_model"));
        run_case(&engine, kind, RateDurability::Immediate, &ops)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
