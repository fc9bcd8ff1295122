//! After PostgreSQL restarts, `/health` and the first write agree: once `Store::health` says
//! ready again, the next writes succeed. Before, the probe's pooled connection was back while each
//! writer's connection was still the one the restart had cut, so the first write of each writer
//! failed with `Unavailable` (503) although the probe said ready. A writer now meets a cut
//! connection when it locks a batch's rows, before anything of the batch can commit, and starts
//! the batch over on a new connection.
//!
//! It runs in a process of its own (`fixture::isolated`), with a server of its own to restart.

#![cfg(feature = "postgres")]

use crate::fixture;

use std::time::{Duration, Instant};

use fixture::postgres::unique_schema;
use fixture::{acquired, key, request, response};
use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Health, StoreBuilder};

#[test]
fn once_health_says_ready_after_a_restart_the_first_writes_succeed() {
    if fixture::isolated(
        module_path!(),
        "once_health_says_ready_after_a_restart_the_first_writes_succeed",
    ) {
        return;
    }
    let server = require_postgres!();
    if !server.is_throwaway() {
        tollgate::testing::say_skipped(
            "the PostgreSQL restart test",
            "TOLLGATE_TEST_POSTGRES is not a server this test may restart",
        );
        assert!(
            std::env::var("TOLLGATE_REQUIRE_POSTGRES").is_err(),
            "TOLLGATE_REQUIRE_POSTGRES=1 needs a throwaway server for the restart test"
        );
        return;
    }
    let store = StoreBuilder::default()
        .postgres_schema(&unique_schema("restart_first_write"))
        .node_id("restart-node")
        .open_postgres(&server.conn)
        .unwrap();
    let limit = Limit::new("restart", Quota::per_hour(1000)).unwrap();
    // Every writer's connection in use before the restart (two callers at once, a few times).
    for round in 0..4 {
        std::thread::scope(|scope| {
            for caller in 0..2 {
                let store = &store;
                scope.spawn(move || {
                    let name = format!("before-{round}-{caller}");
                    acquired(store.begin(&key(&name), &request("r")).unwrap())
                        .complete(response("ok"))
                        .unwrap();
                });
            }
        });
    }
    assert!(store.check(&limit, "s").unwrap().allowed());

    server.crash();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.health() != Health::Ready {
        assert!(
            Instant::now() < deadline,
            "the store never said ready again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ready: the next writes, on whichever writer takes them, succeed.
    for n in 0..4 {
        let name = format!("after-{n}");
        let begun = store.begin(&key(&name), &request("r"));
        let lease = acquired(begun.unwrap_or_else(|error| {
            panic!("write {n} after the restart, with health ready: {error}")
        }));
        lease.complete(response("ok")).unwrap();
        let checked = store.check(&limit, "s");
        assert!(
            checked
                .as_ref()
                .is_ok_and(tollgate::ratelimit::Decision::allowed),
            "check {n} after the restart: {checked:?}"
        );
    }
    store.close().unwrap();
}
