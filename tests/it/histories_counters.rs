//! Concurrent histories of rate checks, checked whole against the sequential rules
//! (`fixture::history`: linearizability, stateright's tester). Three workers charge one or both
//! of two limits (on subjects they share) with costs 1 and 2 until the quotas are spent, on every
//! counter engine: one embedded store (Batched, its default), two clients of a shared store, two
//! PostgreSQL nodes, and two stores with their counters on Redis.
//!
//! With all or nothing planted away (a denied pair charging the counter that had room), every
//! engine goes red within its 30 histories.
//!
//! The model, without the implementation: each (limit, subject) counter has its quota (GCRA with
//! the quota as its burst, an hour's period: nothing refills within a test); a check is allowed
//! if and only if the cost fits every counter it names, and then charges all of them; a denied
//! check charges none (all or nothing).

use crate::fixture;

use std::collections::BTreeMap;

use fixture::Fixture;
use fixture::history::{self, Dice, Recorder, check};
use stateright::semantics::SequentialSpec;
#[cfg(feature = "redis")]
use tollgate::Clock;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Error, Store};

const HISTORIES: usize = 30;
const WORKERS: usize = 3;
const STEPS: usize = 6;
/// The two limits' quotas.
const QUOTAS: [u32; 2] = [4, 6];

/// A check of `cost` on the counters `(limit, subject)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    counters: Vec<(usize, u8)>,
    cost: u32,
}

/// What a check answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Ret {
    Allowed,
    Denied,
}

/// Every counter's spent units.
#[derive(Debug, Clone, Default)]
pub struct CountersModel {
    spent: BTreeMap<(usize, u8), u32>,
}

impl SequentialSpec for CountersModel {
    type Op = Op;
    type Ret = Ret;

    fn invoke(&mut self, op: &Op) -> Ret {
        let fits = op.counters.iter().all(|counter| {
            self.spent.get(counter).copied().unwrap_or(0) + op.cost <= QUOTAS[counter.0]
        });
        if !fits {
            return Ret::Denied;
        }
        for counter in &op.counters {
            *self.spent.entry(*counter).or_default() += op.cost;
        }
        Ret::Allowed
    }
}

fn stores(fixture: &Fixture) -> Vec<Store> {
    #[cfg(feature = "redis")]
    if let Some((url, namespace)) = &fixture.redis {
        return (0..2)
            .map(|_| {
                let store = fixture
                    .builder()
                    .rate_counters_redis(url)
                    .redis_namespace(namespace)
                    .open_in_memory()
                    .expect("open a store with counters on Redis");
                store
                    .set_database_clock_for_tests(fixture.clock.now())
                    .expect("the Redis test clock");
                store
            })
            .collect();
    }
    history::stores(fixture, fixture::LEASE_TTL)
}

fn work(
    store: &Store,
    limits: &[Limit; 2],
    worker: usize,
    history: usize,
    log: &Recorder<Op, Ret>,
) {
    let by = format!("w{worker}");
    let mut dice = Dice(0x2545_F491_4F6C_DD1D ^ ((history * 17 + worker) as u64 + 1));
    for _ in 0..STEPS {
        // Each counter alone, and both together: a denied pair that charged the counter with
        // room left would show in that counter's own later checks.
        let counters: Vec<(usize, u8)> = match dice.roll(3) {
            0 => vec![(0, 0)],
            1 => vec![(1, 1)],
            _ => vec![(0, 0), (1, 1)],
        };
        let cost = 1 + dice.roll(2) as u32;
        let subjects: Vec<String> = counters
            .iter()
            .map(|(_, subject)| format!("h{history}-s{subject}"))
            .collect();
        let checks: Vec<(&Limit, &str)> = counters
            .iter()
            .zip(&subjects)
            .map(|((limit, _), subject)| (&limits[*limit], subject.as_str()))
            .collect();
        let id = log.invoke(&by, Op { counters, cost });
        match store.check_all(&checks, cost) {
            Ok(decision) if decision.allowed() => log.returned(id, Ret::Allowed),
            Ok(_) => log.returned(id, Ret::Denied),
            Err(Error::Unavailable(_)) => log.void(id),
            Err(Error::InDoubt(_)) => {}
            Err(e) => panic!("check_all: {e}"),
        }
    }
}

fn run(fixture: Fixture) {
    let stores = stores(&fixture);
    let limits = [
        Limit::new("first", Quota::per_hour(QUOTAS[0])).unwrap(),
        Limit::new("second", Quota::per_hour(QUOTAS[1])).unwrap(),
    ];
    let (mut operations, mut denied) = (0, 0);
    for history in 0..HISTORIES {
        let log = Recorder::<Op, Ret>::default();
        std::thread::scope(|scope| {
            for worker in 0..WORKERS {
                let (store, limits, log) = (&stores[worker % stores.len()], &limits, &log);
                scope.spawn(move || work(store, limits, worker, history, log));
            }
        });
        let events = log.finish();
        denied += events
            .iter()
            .filter(|event| {
                matches!(
                    event,
                    fixture::history::Event::Return {
                        ret: Ret::Denied,
                        ..
                    }
                )
            })
            .count();
        match check(&CountersModel::default(), &events) {
            Ok(checked) => operations += checked,
            Err(report) => panic!("history {history}: {report}"),
        }
    }
    let engine = fixture.name();
    println!(
        "{engine} counters: {HISTORIES} histories, {operations} checks checked linearizable \
         ({denied} denied)"
    );
    assert!(denied > 0, "the histories must spend their quotas");
    for store in stores {
        store.close().expect("close");
    }
}

on_every_counter_engine! {
    fn linearizable(fixture) {
        run(fixture);
    }
}
