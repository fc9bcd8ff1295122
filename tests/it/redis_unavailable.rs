//! A dead or stalled Redis does not stall the service: a check fails with a typed, retryable
//! error after the store's Redis timeout (never a silent allow), the circuit breaker then
//! refuses at once without touching the network, `health` says so, and once the server is back
//! a probe closes the breaker and checks are decided by Redis again.

use crate::fixture;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use fixture::redis::unique_namespace;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::testing::redis::Server;
use tollgate::{Error, Health, Store};

/// `check` on another thread; panics if it has not answered in 30 s (a hang, not a timing).
fn check_answers(store: &Store, limit: &Limit) -> tollgate::Result<tollgate::ratelimit::Decision> {
    let (sender, receiver) = mpsc::channel();
    let (store, limit) = (store.clone(), limit.clone());
    std::thread::spawn(move || {
        let _ = sender.send(store.check(&limit, "user:42"));
    });
    receiver
        .recv_timeout(Duration::from_secs(30))
        .expect("a check against a stalled Redis must answer")
}

#[test]
fn a_stalled_server_gets_typed_errors_then_a_fast_refusal_then_service_again() {
    let _shared = require_redis!();
    let server = Server::spawn(&[]).unwrap();
    let store = Store::builder()
        .rate_counters_redis(&server.url)
        .redis_namespace(&unique_namespace("stalled"))
        .redis_timeout(Duration::from_millis(200))
        .open_in_memory()
        .unwrap();
    let limit = Limit::new("api", Quota::per_second(100)).unwrap();
    assert!(store.check(&limit, "user:42").unwrap().allowed());
    assert!(store.health().is_ready());

    server.pause(); // connections stay open; nothing answers
    let stalled = check_answers(&store, &limit);
    assert!(
        matches!(stalled, Err(Error::InDoubt(_) | Error::Unavailable(_))),
        "{stalled:?}"
    );
    // The breaker is open: refused without a round trip, and health reports it.
    let refused = check_answers(&store, &limit);
    let Err(Error::Unavailable(why)) = &refused else {
        panic!("{refused:?}")
    };
    assert!(why.contains("circuit open"), "{why}");
    assert!(
        matches!(store.health(), Health::Unreachable { .. }),
        "{:?}",
        store.health()
    );
    assert!(matches!(
        store.peek(&limit, "user:42"),
        Err(Error::Unavailable(_))
    ));

    server.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.health().is_ready() {
        assert!(Instant::now() < deadline, "the breaker never closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.check(&limit, "user:42").unwrap().allowed());
    store.close().unwrap();
}

#[test]
fn a_server_that_is_gone_is_unavailable_not_allowed() {
    let _shared = require_redis!();
    let mut server = Server::spawn(&[]).unwrap();
    let store = Store::builder()
        .rate_counters_redis(&server.url)
        .redis_namespace(&unique_namespace("gone"))
        .redis_timeout(Duration::from_millis(200))
        .open_in_memory()
        .unwrap();
    let limit = Limit::new("api", Quota::per_second(100)).unwrap();
    assert!(store.check(&limit, "user:42").unwrap().allowed());
    server.kill();
    for _ in 0..5 {
        let outcome = check_answers(&store, &limit);
        assert!(
            matches!(outcome, Err(Error::InDoubt(_) | Error::Unavailable(_))),
            "{outcome:?}"
        );
    }
    store.close().unwrap();
}
