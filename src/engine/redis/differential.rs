//! The Lua script against the pure rules: the same random operation on the same random
//! counters, once through `counters.lua` on a real Redis and once through `charge::apply`, must
//! give the same decision, the same numbers and the same stored state.
//!
//! The states and limits are drawn over the whole range the script accepts (counts up to 2^32,
//! windows up to 2^50 µs, times of this century), so `muldiv`, `divmod` and every sum near the
//! 2^53 edge of exact doubles are exercised, along with time going backwards, unaligned windows
//! (a quota that changed), lost-and-drained buckets, multi-limit charges, and states a
//! microsecond either side of the time of the call. The pure rules are
//! unit-agnostic integers: here they run in microseconds, as the script does.
//!
//! `PROPTEST_CASES` runs more cases (default 1500). Skipped, loudly, without `redis-server`.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

use super::namespace::MicroSpec;
use super::script::{self, Code, Op, Status, Target};
use crate::engine::stored_rate;
use crate::ratelimit::charge::{self, OpKind};
use crate::ratelimit::{CounterKey, RateState, Spec, exact_idle_at, most_restrictive};

/// About 2026-12 in microseconds.
const NOW: u64 = 1_796_000_000_000_000;
const MAX_WINDOW: u64 = 1 << 50;
/// The expiry margin the cases run with: the case's time is not Redis's, so what the script
/// stores must not expire meanwhile.
const EXPIRY_MARGIN_MS: u64 = 60_000;

fn micro_spec() -> impl Strategy<Value = MicroSpec> {
    let small = prop_oneof![1..20u64, 1..1000u64];
    let period = prop_oneof![1..2_000_000u64, 1..MAX_WINDOW];
    let limit = prop_oneof![small.clone(), 1..=u64::from(u32::MAX)];
    prop_oneof![
        (limit.clone(), prop_oneof![1..1_000_000u64, 1..MAX_WINDOW]).prop_map(
            |(burst, interval)| {
                MicroSpec {
                    kind: "g",
                    a: interval.min(MAX_WINDOW / burst).max(1),
                    b: burst,
                }
            }
        ),
        (limit.clone(), period.clone()).prop_map(|(a, b)| MicroSpec { kind: "f", a, b }),
        (limit, period).prop_map(|(a, b)| MicroSpec { kind: "s", a, b }),
    ]
}

/// A state near `NOW` for `spec`: aligned or not, of its kind or of another.
fn state(spec: MicroSpec) -> impl Strategy<Value = Option<RateState>> {
    let limit = spec.a;
    let window = spec.b;
    let time = prop_oneof![
        (0..4 * window.min(1 << 40)).prop_map(|d| NOW - d),
        (0..4 * window.min(1 << 40)).prop_map(|d| NOW + d),
        (0..(1u64 << 50)).prop_map(|d| NOW - d),
        // At the case's most common `now` or a microsecond either side: where a rule's
        // comparison with now (`max(tat, now)`, a window's start) changes its answer.
        (0..=2u64).prop_map(|d| NOW - 1 + d),
    ];
    let count = prop_oneof![0..=limit, 0..=limit.saturating_add(3), Just(limit)];
    let align = proptest::bool::weighted(0.8);
    prop_oneof![
        1 => Just(None),
        6 => (time.clone(), count.clone(), count, align).prop_map(move |(t, x, y, aligned)| {
            let w = if aligned && spec.kind != "g" { t - t % spec.b } else { t };
            Some(match spec.kind {
                "g" => RateState::Gcra { tat: t },
                "f" => RateState::FixedWindow { window: w, count: x },
                _ => RateState::SlidingWindow { window: w, previous: x, current: y },
            })
        }),
        1 => time.prop_map(|t| Some(RateState::Gcra { tat: t })),
    ]
}

/// A counter as the script stores it (`docs/FORMAT.md`): a kind byte, then big-endian doubles.
fn encode(state: RateState) -> Vec<u8> {
    let (kind, numbers) = match state {
        RateState::Gcra { tat } => (b'g', vec![tat]),
        RateState::FixedWindow { window, count } => (b'f', vec![window, count]),
        RateState::SlidingWindow {
            window,
            previous,
            current,
        } => (b's', vec![window, previous, current]),
    };
    let mut bytes = vec![kind];
    for number in numbers {
        // Every number the script stores is an integer below 2^53: exact as a double.
        #[allow(clippy::cast_precision_loss)]
        bytes.extend_from_slice(&(number as f64).to_be_bytes());
    }
    bytes
}

#[derive(Debug, Clone)]
struct Case {
    targets: Vec<(MicroSpec, Option<RateState>)>,
    kind: OpKind,
    now: u64,
    /// The bucket's sentinel says "drained from" this time (0: not drained).
    drained_from: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let target = micro_spec().prop_flat_map(|spec| (Just(spec), state(spec)));
    (
        prop::collection::vec(target, 1..4),
        0..4u8,
        prop_oneof![Just(NOW), NOW - 5_000_000..NOW + 5_000_000],
        prop_oneof![3 => Just(0u64), 1 => NOW - 10_000_000..NOW + 1_000_000],
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(mut targets, op, now, drained_from, amount, cost_seed)| {
            let capacity = targets
                .iter()
                .map(|(spec, _)| spec.spec().capacity())
                .min()
                .unwrap_or(1);
            let kind = match op {
                0 => OpKind::Charge {
                    cost: cost_seed % (capacity.min(40) + 1),
                },
                1 => OpKind::Peek,
                2 => OpKind::Refund {
                    amount: u64::from(amount % 50),
                },
                _ => OpKind::Reset,
            };
            if !matches!(kind, OpKind::Charge { .. }) {
                targets.truncate(1);
            }
            Case {
                targets,
                kind,
                now,
                drained_from,
            }
        })
}

/// Runs `case` on keys named after `test` (tests run in parallel on one server).
fn run(
    connection: &mut redis::Connection,
    invoke: &script::Invoke,
    test: &str,
    case: &Case,
) -> Result<(), TestCaseError> {
    let sentinel = format!("{test}:{{{test}:0}}:sentinel");
    let sentinel = sentinel.as_str();
    let keys: Vec<String> = (0..case.targets.len())
        .map(|i| format!("{test}:{{{test}:0}}:counter-{i}"))
        .collect();
    // The counters and the bucket's sentinel, as the case says.
    let mut setup = redis::pipe();
    setup
        .cmd("SET")
        .arg(sentinel)
        .arg(format!("id {}", case.drained_from))
        .ignore();
    for (key, (_, state)) in keys.iter().zip(&case.targets) {
        match state {
            Some(state) => setup.cmd("SET").arg(key).arg(encode(*state)).ignore(),
            None => setup.cmd("DEL").arg(key).ignore(),
        };
    }
    setup.query::<()>(connection).map_err(fail)?;

    let (code, amount) = Code::of(case.kind);
    let op = Op {
        code,
        amount,
        recover: false,
        secret_id: Arc::from("id"),
        targets: keys
            .iter()
            .zip(&case.targets)
            .map(|(key, (spec, _))| Target {
                counter: key.clone(),
                sentinel: Arc::from(sentinel),
                spec: *spec,
            })
            .collect(),
    };
    let value: redis::Value = script::command(
        invoke,
        script::ScriptTime {
            now: Some(case.now),
            // The case's time is not Redis's: keep what it stores from expiring meanwhile.
            expiry_margin_ms: EXPIRY_MARGIN_MS,
        },
        true,
        std::iter::once(&op),
    )
    .query(connection)
    .map_err(fail)?;
    let replies = script::decode(&value, 1).map_err(TestCaseError::fail)?;
    let reply = replies[0];

    check_against_the_rules(connection, case, &keys, reply)
}

/// The script's `reply` and what it stored under `keys` against the pure rules on `case`.
fn check_against_the_rules(
    connection: &mut redis::Connection,
    case: &Case,
    keys: &[String],
    reply: script::Reply,
) -> Result<(), TestCaseError> {
    // The pure rules, on the same states (drained as a lost bucket's are).
    let targets: Vec<charge::Target> = case
        .targets
        .iter()
        .enumerate()
        .map(|(i, (spec, _))| charge::Target {
            key: CounterKey([u8::try_from(i).unwrap_or(0); 16]),
            spec: spec.spec(),
        })
        .collect();
    let mut states: Vec<Option<RateState>> = case
        .targets
        .iter()
        .map(|(spec, state)| {
            let spec: Spec = spec.spec();
            if case.drained_from > 0 {
                Some(most_restrictive(
                    &spec,
                    *state,
                    spec.drained(case.drained_from),
                    case.now,
                ))
            } else {
                *state
            }
        })
        .collect();
    let (outcome, changed) = charge::apply(case.kind, &targets, &mut states, case.now);
    prop_assert_eq!(reply.status, Status::Done);
    prop_assert_eq!(reply.allowed, outcome.allowed, "allowed");
    prop_assert_eq!(reply.deciding, outcome.deciding, "deciding");
    prop_assert_eq!(reply.remaining, outcome.evaluation.remaining, "remaining");
    prop_assert_eq!(
        reply.reset_after,
        outcome.evaluation.reset_after,
        "reset_after"
    );
    prop_assert_eq!(
        reply.retry_after,
        outcome.evaluation.retry_after,
        "retry_after"
    );

    // What is stored: the new state (none when idle) if anything changed, else what was there.
    for ((key, (spec, before)), after) in keys.iter().zip(&case.targets).zip(&states) {
        let stored: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(connection).map_err(fail)?;
        let expected = if changed {
            stored_rate(&spec.spec(), *after, case.now).map(|rate| encode(rate.state))
        } else {
            before.map(encode)
        };
        prop_assert_eq!(&stored, &expected, "the stored state of {}", key);
        if let (true, Some(_), Some(state)) = (changed, &stored, after) {
            // A counter expires exactly when the pure rules say it turns idle (rounded up to a
            // millisecond, at least one), plus the margin: never earlier (a spent subject would
            // get a fresh counter), and not later than that. PTTL counts down from the SET, a
            // moment ago: a second of slack.
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query(connection)
                .map_err(fail)?;
            let idle_in = exact_idle_at(&spec.spec(), *state).saturating_sub(case.now);
            let expected =
                i64::try_from(idle_in.div_ceil(1000).max(1) + EXPIRY_MARGIN_MS).unwrap_or(i64::MAX);
            prop_assert!(
                ttl <= expected && ttl > expected.saturating_sub(1000),
                "{} expires in {} ms; the rules say {} ms",
                key,
                ttl,
                expected
            );
        }
    }
    Ok(())
}

/// Loads both forms of the script: each case runs through each.
fn load_script(connection: &mut redis::Connection) -> [script::Invoke; 2] {
    let function = script::load(connection).unwrap();
    let info: String = redis::cmd("INFO").arg("server").query(connection).unwrap();
    let major = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .and_then(|version| version.split('.').next()?.parse::<u32>().ok())
        .unwrap_or(0);
    if major >= 7 {
        assert!(
            matches!(function, script::Invoke::Function(_)),
            "Redis {major} takes the function library: {function:?}"
        );
    }
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(&*script::SCRIPT)
        .query(connection)
        .unwrap();
    [function, script::Invoke::Script(sha)]
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(fail)`
fn fail(error: redis::RedisError) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

#[test]
fn the_script_decides_as_the_pure_rules_do() {
    let Some(server) = crate::testing::redis::server() else {
        return;
    };
    let mut connection = server.connection().unwrap();
    let forms = load_script(&mut connection);
    let connection = std::cell::RefCell::new(connection);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let config = Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&case(), |case| {
        for form in &forms {
            run(&mut connection.borrow_mut(), form, "differential", &case)?;
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// The exact-arithmetic helpers at the edge of doubles: a sliding window whose count times its
/// period is far past 2^53 still decides exactly (a float product would be off by thousands).
#[test]
fn a_sliding_window_past_two_to_the_53_decides_exactly() {
    let Some(server) = crate::testing::redis::server() else {
        return;
    };
    let mut connection = server.connection().unwrap();
    let forms = load_script(&mut connection);
    let spec = MicroSpec {
        kind: "s",
        a: u64::from(u32::MAX),
        b: (1 << 50) - 3,
    };
    let start = NOW - NOW % spec.b;
    let state = RateState::SlidingWindow {
        window: start,
        previous: u64::from(u32::MAX) - 7,
        current: 5,
    };
    for elapsed in [1, 12_345, spec.b / 3, spec.b - 1] {
        let case = Case {
            targets: vec![(spec, Some(state))],
            kind: OpKind::Charge { cost: 3 },
            now: start + elapsed,
            drained_from: 0,
        };
        for form in &forms {
            run(&mut connection, form, "edge", &case).unwrap();
        }
    }
}
