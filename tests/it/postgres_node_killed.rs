//! A node process is SIGKILLed in the middle of a request (holding a lease). What it had
//! acknowledged replays from any node; its lease stays live for the other nodes until it expires
//! (a dead process and a slow one look the same from outside); and when the node restarts under
//! its id, its new epoch frees that lease at once. The killed process's connection dies with it,
//! so its node lock is released and the restart is not refused.
//!
//! The child is this test binary, re-run in child mode.

#![cfg(feature = "postgres")]

use crate::fixture;

use std::process::{Command, Stdio};
use std::time::Duration;

use fixture::postgres::unique_schema;
use fixture::{acquired, key, replay, request, response, wait_for_line};
use tollgate::idempotency::Begin;
use tollgate::{Store, StoreBuilder};

const CHILD_ENV: &str = "TOLLGATE_PG_KILLED_CHILD";
const TEST_NAME: &str = "a_killed_node_keeps_what_it_acknowledged_and_its_restart_frees_its_lease";

fn node(conn: &str, schema: &str, id: &str) -> Store {
    StoreBuilder::default()
        .postgres_schema(schema)
        .node_id(id)
        .lease_ttl(Duration::from_secs(300))
        .open_postgres(conn)
        .expect("open a node")
}

/// The child: completes one request, begins another, says so, and waits to be killed.
fn child(conn: &str, schema: &str) {
    fixture::exit_with_parent();
    let store = node(conn, schema, "victim");
    acquired(store.begin(&key("done"), &request("r")).unwrap())
        .complete(response("acknowledged"))
        .unwrap();
    let lease = acquired(store.begin(&key("held"), &request("r")).unwrap());
    println!("holding {}", lease.token());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_killed_node_keeps_what_it_acknowledged_and_its_restart_frees_its_lease() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (conn, schema) = spec.split_once('|').expect("conn|schema");
        child(conn, schema);
        return;
    }
    let server = require_postgres!();
    let schema = unique_schema("node_killed");
    let mut victim = Command::new(std::env::current_exe().unwrap())
        .args([
            fixture::test_path(module_path!(), TEST_NAME).as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{schema}", server.conn))
        .env("TOLLGATE_TEST_POSTGRES", &server.conn)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut victim, "holding");
    victim.kill().unwrap();
    victim.wait().unwrap();

    let other = node(&server.conn, &schema, "survivor");
    assert_eq!(
        replay(other.begin(&key("done"), &request("r")).unwrap())
            .response()
            .body,
        b"acknowledged"
    );
    // The killed node's lease is still live for everyone else.
    assert!(matches!(
        other.begin(&key("held"), &request("r")).unwrap(),
        Begin::InFlight { .. }
    ));
    // Its restart (the kill released its lock) starts a new epoch: the lease is free at once.
    let restarted = node(&server.conn, &schema, "victim");
    assert_eq!(restarted.epoch(), 2);
    let lease = acquired(other.begin(&key("held"), &request("r")).unwrap());
    assert!(lease.recovered());
    assert_eq!(lease.attempt(), 2);
    lease.complete(response("recovered")).unwrap();
    assert_eq!(
        replay(restarted.begin(&key("held"), &request("r")).unwrap())
            .response()
            .body,
        b"recovered"
    );
    restarted.close().unwrap();
    other.close().unwrap();
}
