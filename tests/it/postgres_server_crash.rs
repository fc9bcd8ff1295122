//! PostgreSQL crashes under load (`pg_ctl stop -m immediate`, no shutdown checkpoint) and comes
//! back. While it is down every call answers (no hang, no panic) with a typed retryable error:
//! `Unavailable` (nothing was changed) or `InDoubt` (a commit's outcome is unknown). The store is
//! never poisoned: once the server is back it reconnects by itself (and `Store::health` says
//! `Unreachable` while it is down, ready again after). Nothing acknowledged is lost
//! (`synchronous_commit` on): every completion that returned `Ok` before the crash replays after
//! it, and every allowed rate check stays charged.
//!
//! It runs in a process of its own (`fixture::isolated`), with a server of its own to stop.

#![cfg(feature = "postgres")]

use crate::fixture;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fixture::postgres::unique_schema;
use fixture::{key, request, response, wait_for};
use tollgate::idempotency::Begin;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Error, StoreBuilder};

/// How long any one call may take before the test calls it a hang (far above the store's own
/// bound, `CALL_TIMEOUT`).
const HANG: Duration = Duration::from_secs(60);

#[test]
fn a_server_crash_under_load_loses_nothing_acknowledged_and_the_store_recovers_by_itself() {
    // A process of its own: the crash must not hit the other tests' server: a child process starts a server of its own.
    if fixture::isolated(
        module_path!(),
        "a_server_crash_under_load_loses_nothing_acknowledged_and_the_store_recovers_by_itself",
    ) {
        return;
    }
    let server = require_postgres!();
    if !server.is_throwaway() {
        tollgate::testing::say_skipped(
            "the PostgreSQL crash test",
            "TOLLGATE_TEST_POSTGRES is not a server this test may crash",
        );
        assert!(
            std::env::var("TOLLGATE_REQUIRE_POSTGRES").is_err(),
            "TOLLGATE_REQUIRE_POSTGRES=1 needs a throwaway server for the crash test"
        );
        return;
    }
    let schema = unique_schema("server_crash");
    let store = StoreBuilder::default()
        .postgres_schema(&schema)
        .node_id("crash-node")
        .open_postgres(&server.conn)
        .unwrap();
    // A window that outlasts the test: what was charged stays visible in `remaining`.
    let limit = Limit::new(
        "crash",
        Quota::fixed_window(1_000_000, Duration::from_secs(86_400)),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let allowed = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (store, limit, stop) = (store.clone(), limit.clone(), Arc::clone(&stop));
            let (acknowledged, allowed, errors, slowest) = (
                Arc::clone(&acknowledged),
                Arc::clone(&allowed),
                Arc::clone(&errors),
                Arc::clone(&slowest),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                let timed = |started: Instant| {
                    let took = started.elapsed();
                    let mut slowest = slowest.lock().unwrap();
                    *slowest = (*slowest).max(took);
                };
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let name = format!("w{worker}-{n}");
                    let body = format!("done {name}");
                    let started = Instant::now();
                    match store.begin(&key(&name), &request("r")) {
                        Ok(Begin::Acquired(lease)) => match lease.complete(response(&body)) {
                            Ok(()) => {
                                acknowledged.lock().unwrap().insert(name, body);
                            }
                            Err(error) => errors.lock().unwrap().push(error.to_string()),
                        },
                        Ok(other) => panic!("a fresh key answered {other:?}"),
                        Err(Error::Unavailable(_) | Error::InDoubt(_)) => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(error) => panic!("begin failed with {error:?}"),
                    }
                    timed(started);
                    let started = Instant::now();
                    match store.check(&limit, &format!("w{worker}")) {
                        Ok(decision) => {
                            assert!(decision.allowed());
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::Unavailable(_) | Error::InDoubt(_)) => {}
                        Err(error) => panic!("check failed with {error:?}"),
                    }
                    timed(started);
                }
            })
        })
        .collect();

    wait_for("some completions before the crash", || {
        acknowledged.lock().unwrap().len() >= 50
    });
    server.crash();
    // While the server is down, calls fail with typed errors and return.
    let started = Instant::now();
    let down = store.begin(&key("while-down"), &request("r"));
    assert!(
        matches!(down, Err(Error::Unavailable(_) | Error::InDoubt(_))),
        "{down:?}"
    );
    assert!(
        started.elapsed() < HANG,
        "a call hung while the server was down"
    );
    // A readiness probe says so, with the reason.
    let health = store.health();
    assert!(
        matches!(health, tollgate::Health::Unreachable { .. }),
        "{health:?}"
    );
    let acknowledged_before_restart = acknowledged.lock().unwrap().len();
    server.restart();
    // The store reconnects by itself: the workers complete again, and the probe says ready.
    wait_for("completions after the restart", || {
        acknowledged.lock().unwrap().len() >= acknowledged_before_restart + 50
    });
    wait_for("the health probe to say ready", || {
        store.health().is_ready()
    });
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    assert!(
        *slowest.lock().unwrap() < HANG,
        "some call took {:?}",
        slowest.lock().unwrap()
    );

    // Nothing acknowledged was lost, on this store or a fresh one.
    let acknowledged = acknowledged.lock().unwrap().clone();
    store.close().unwrap();
    let store = StoreBuilder::default()
        .postgres_schema(&schema)
        .node_id("crash-node")
        .open_postgres(&server.conn)
        .unwrap();
    for (name, body) in &acknowledged {
        match store.begin(&key(name), &request("r")).unwrap() {
            Begin::Replay(replay) => assert_eq!(replay.response().body, body.as_bytes()),
            other => panic!("{name} was acknowledged, and now answers {other:?}"),
        }
    }
    // Every allowed check is still charged (in-doubt ones may be charged too: never fewer).
    let spent: u64 = (0..8)
        .map(|worker| {
            let peek = store.peek(&limit, &format!("w{worker}")).unwrap();
            1_000_000 - u64::from(peek.remaining())
        })
        .sum();
    assert!(
        spent >= allowed.load(Ordering::Relaxed),
        "{spent} charged, {} allowed",
        allowed.load(Ordering::Relaxed)
    );
    eprintln!(
        "{} completions acknowledged across the crash; errors seen by resolutions: {:?}",
        acknowledged.len(),
        errors.lock().unwrap().iter().take(3).collect::<Vec<_>>()
    );
    store.close().unwrap();
}
