//! Concurrent histories of idempotency records, checked whole against the sequential rules
//! (`fixture::history`: linearizability, stateright's tester). Four workers begin and complete
//! requests on two keys (sometimes with another request's fingerprint, sometimes holding a lease
//! across a clock step so that its completion comes after a takeover), while a fifth thread steps
//! the clock past every live lease. On every engine: one embedded store, two clients of a shared
//! store (whose owner, a process of its own with no lease, closes in the middle of every history:
//! a client takes the file over, the other reconnects), two PostgreSQL nodes on one schema.
//!
//! The model is `fixture::record_model`: DESIGN's state diagram for one key.

use crate::fixture;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fixture::history::{Dice, Recorder, check, split, stores};
use fixture::record_model::{KeyModel, Op, Ret};
use fixture::{Fixture, LEASE_TTL, request, response};
use tollgate::idempotency::{Begin, Lease};
use tollgate::{Error, Store};

/// Histories per engine.
const HISTORIES: usize = 60;
/// Workers per history, and the steps each takes.
const WORKERS: usize = 4;
const STEPS: usize = 8;
/// Keys per history.
const KEYS: u8 = 2;

fn key_name(history: usize, key: u8) -> String {
    format!("h{history}-k{key}")
}

/// One worker's steps.
fn work(
    store: &Store,
    worker: usize,
    history: usize,
    log: &Recorder<Op, Ret>,
    names: &AtomicUsize,
    progress: &AtomicUsize,
) {
    let by = format!("w{worker}");
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ ((history * 31 + worker) as u64 + 1));
    let mut held: Vec<(u8, usize, Lease)> = Vec::new();
    for _ in 0..STEPS {
        progress.fetch_add(1, Ordering::Relaxed);
        if !held.is_empty() && dice.roll(3) == 0 {
            let (key, lease, handle) = held.remove(dice.roll(held.len() as u64) as usize);
            let body = names.fetch_add(1, Ordering::Relaxed);
            let id = log.invoke(&by, Op::Complete { key, lease, body });
            match handle.complete(response(&body.to_string())) {
                Ok(()) => log.returned(id, Ret::Done),
                Err(Error::LeaseLost) => log.returned(id, Ret::LeaseLost),
                Err(Error::Unavailable(_)) => log.void(id),
                Err(Error::InDoubt(_)) => {}
                Err(e) => panic!("complete: {e}"),
            }
            continue;
        }
        let key = dice.roll(u64::from(KEYS)) as u8;
        let request_n = u8::from(dice.roll(8) == 0);
        let lease = names.fetch_add(1, Ordering::Relaxed);
        let id = log.invoke(
            &by,
            Op::Begin {
                key,
                request: request_n,
                lease,
            },
        );
        let answer = store.begin(
            &fixture::key(&key_name(history, key)),
            &request(&request_n.to_string()),
        );
        match answer {
            Ok(Begin::Acquired(handle)) => {
                log.returned(
                    id,
                    Ret::Acquired {
                        attempt: handle.attempt(),
                        recovered: handle.recovered(),
                    },
                );
                held.push((key, lease, handle));
            }
            Ok(Begin::Replay(replay)) => {
                let body = String::from_utf8_lossy(&replay.response().body)
                    .parse()
                    .expect("a body this test stored");
                log.returned(id, Ret::Replay { body });
            }
            Ok(Begin::InFlight { .. }) => log.returned(id, Ret::InFlight),
            Ok(Begin::Mismatch) => log.returned(id, Ret::Mismatch),
            Err(Error::Unavailable(_)) => log.void(id),
            Err(Error::InDoubt(_)) => {}
            Err(e) => panic!("begin: {e}"),
        }
    }
    // What is still held is left running: its record stays as a crash leaves it.
    drop(held);
}

fn run(first: Fixture) {
    let mut fixture = first;
    let mut stores = stores(&fixture, LEASE_TTL);
    let names = AtomicUsize::new(0);
    let (mut operations, mut parts) = (0, 0);
    let mut seen = Seen::default();
    for history in 0..HISTORIES {
        if fixture.is_shared() && history > 0 {
            // A store of its own per history, whose owner goes in the middle of it.
            for store in stores.drain(..) {
                store.close().expect("close");
            }
            fixture = fixture.fresh("histories_records");
            stores = self::stores(&fixture, LEASE_TTL);
        }
        let log = Recorder::<Op, Ret>::default();
        let progress = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..WORKERS)
                .map(|worker| {
                    let (store, log, names, progress) =
                        (&stores[worker % stores.len()], &log, &names, &progress);
                    scope.spawn(move || work(store, worker, history, log, names, progress))
                })
                .collect();
            // The clock steps at a quarter, half and three quarters of the workers' steps, so
            // that leases held across a step are taken over and completed late.
            let (log, fixture, store, progress) = (&log, &fixture, &stores[0], &progress);
            scope.spawn(move || {
                for eighth in 1..8 {
                    while progress.load(Ordering::Relaxed) < eighth * WORKERS * STEPS / 8 {
                        std::thread::yield_now();
                    }
                    if eighth == 3 {
                        // The shared store's owner (a process holding no lease of the
                        // workers') closes: a client takes the file over, the other
                        // reconnects and claims its leases back, with the workers' calls in
                        // flight; no clock step follows at once, so a lease lost in the change
                        // would be taken over where the model says InFlight.
                        let owner = fixture.shared_owner.lock().unwrap().take();
                        if let Some(owner) = owner {
                            owner.close().expect("the owner closes");
                        }
                    }
                    if eighth % 2 == 0 {
                        let id = log.invoke("clock", Op::Expire);
                        fixture.advance(store, LEASE_TTL + Duration::from_secs(1));
                        log.returned(id, Ret::Done);
                    }
                }
            });
            for worker in workers {
                worker.join().expect("a worker");
            }
        });
        let events = log.finish();
        for event in &events {
            if let fixture::history::Event::Return { ret, .. } = event {
                match ret {
                    Ret::Acquired {
                        recovered: true, ..
                    } => seen.takeovers += 1,
                    Ret::LeaseLost => seen.fenced += 1,
                    Ret::Mismatch => seen.mismatches += 1,
                    Ret::Replay { .. } => seen.replays += 1,
                    Ret::InFlight => seen.in_flight += 1,
                    _ => {}
                }
            }
        }
        let by_key = split(&events, |op| match op {
            Op::Begin { key, .. } | Op::Complete { key, .. } => vec![*key],
            Op::Expire => (0..KEYS).collect(),
        });
        for (key, events) in &by_key {
            match check(&KeyModel::default(), events) {
                Ok(checked) => operations += checked,
                Err(report) => panic!("history {history}, key {key}: {report}"),
            }
            parts += 1;
        }
    }
    println!(
        "{} records: {HISTORIES} histories, {parts} per-key histories, {operations} operations \
         checked linearizable; answers among them: {seen:?}",
        fixture.name()
    );
    // The histories must reach what the check is for.
    assert!(
        seen.takeovers > 0 && seen.fenced > 0 && seen.replays > 0,
        "{seen:?}"
    );
    for store in stores {
        store.close().expect("close");
    }
}

/// How many answers of each interesting kind the histories held.
#[derive(Debug, Default)]
struct Seen {
    takeovers: usize,
    fenced: usize,
    mismatches: usize,
    replays: usize,
    in_flight: usize,
}

on_every_engine! {
    fn linearizable(fixture) {
        run(fixture);
    }
}
