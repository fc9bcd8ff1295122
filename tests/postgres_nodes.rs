//! Two stores on one PostgreSQL schema are two nodes of one service: a request begun on one is
//! replayed by the other, one live lease per key across both, tokens increase across both, and a
//! node's restart frees exactly its own leases.

#![cfg(feature = "postgres")]

mod fixture;

use std::time::Duration;

use fixture::postgres::unique_schema;
use fixture::{acquired, key, replay, request, response};
use tollgate::idempotency::Begin;
use tollgate::{Error, Store, StoreBuilder};

fn node(conn: &str, schema: &str, id: &str) -> Store {
    StoreBuilder::default()
        .postgres_schema(schema)
        .node_id(id)
        .lease_ttl(Duration::from_secs(30))
        .open_postgres(conn)
        .expect("open a node")
}

#[test]
fn a_request_begun_on_one_node_is_replayed_by_the_other() {
    let server = require_postgres!();
    let schema = unique_schema("replayed_by_the_other");
    let a = node(&server.conn, &schema, "a");
    let b = node(&server.conn, &schema, "b");
    let lease = acquired(a.begin(&key("pay-1"), &request("r")).unwrap());
    assert!(matches!(
        b.begin(&key("pay-1"), &request("r")).unwrap(),
        Begin::InFlight { .. }
    ));
    lease.complete(response("charged")).unwrap();
    assert_eq!(
        replay(b.begin(&key("pay-1"), &request("r")).unwrap())
            .response()
            .body,
        b"charged"
    );
    assert!(matches!(
        b.begin(&key("pay-1"), &request("other")).unwrap(),
        Begin::Mismatch
    ));
    a.close().unwrap();
    b.close().unwrap();
}

#[test]
fn a_second_live_store_with_the_same_node_id_is_refused() {
    let server = require_postgres!();
    let schema = unique_schema("same_node_id");
    let first = node(&server.conn, &schema, "web-1");
    let second = StoreBuilder::default()
        .postgres_schema(&schema)
        .node_id("web-1")
        .open_postgres(&server.conn);
    assert!(matches!(second, Err(Error::AlreadyOpen)), "{second:?}");
    first.close().unwrap();
    node(&server.conn, &schema, "web-1").close().unwrap();
}

#[test]
fn a_restarted_node_frees_its_own_leases_at_once_and_no_one_elses() {
    let server = require_postgres!();
    let schema = unique_schema("restart_frees_own");
    let a = node(&server.conn, &schema, "a");
    let b = node(&server.conn, &schema, "b");
    let a_lease = acquired(a.begin(&key("held-by-a"), &request("r")).unwrap());
    let b_lease = acquired(b.begin(&key("held-by-b"), &request("r")).unwrap());
    let (a_token, b_token) = (a_lease.token(), b_lease.token());
    drop(a_lease);
    a.close().unwrap();
    let a = node(&server.conn, &schema, "a");
    assert_eq!(a.epoch(), 2);
    // A's old lease is taken over at once, by either node; B's is still live.
    match b.begin(&key("held-by-a"), &request("r")).unwrap() {
        Begin::Acquired(lease) => {
            assert!(lease.recovered());
            assert!(lease.token() > a_token.max(b_token));
        }
        other => panic!("expected a takeover, got {other:?}"),
    }
    assert!(matches!(
        a.begin(&key("held-by-b"), &request("r")).unwrap(),
        Begin::InFlight { .. }
    ));
    b_lease.complete(response("ok")).unwrap();
    a.close().unwrap();
    b.close().unwrap();
}
