//! A format-1 schema made before `clock.stopped_at` existed (an addition within format 1) opens:
//! the open adds the column and the new `now_ns()`, work goes on, and the completed record made
//! before is still replayed.

#![cfg(feature = "postgres")]

use crate::fixture;

use fixture::postgres::unique_schema;
use fixture::{acquired, key, replay, request, response};
use tollgate::StoreBuilder;

#[test]
fn a_schema_without_the_clock_stop_gains_it_at_open() {
    let server = require_postgres!();
    let schema = unique_schema("clock_stop_addition");
    let open = || {
        StoreBuilder::default()
            .postgres_schema(&schema)
            .node_id("web-1")
            .open_postgres(&server.conn)
            .expect("open")
    };
    let store = open();
    acquired(store.begin(&key("before"), &request("r")).unwrap())
        .complete(response("made before"))
        .unwrap();
    store.close().unwrap();

    // Back to the schema as the builds before the addition made it.
    let mut admin = postgres::Client::connect(&server.conn, postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!(
            "ALTER TABLE {schema}.clock DROP COLUMN stopped_at;
             CREATE OR REPLACE FUNCTION {schema}.now_ns() RETURNS bigint LANGUAGE sql VOLATILE AS $$
                 SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000
                     + (SELECT offset_ns FROM {schema}.clock)
             $$;"
        ))
        .expect("drop the addition");

    let store = open();
    let column = admin
        .query(
            "SELECT 1 FROM information_schema.columns \
              WHERE table_schema = $1 AND table_name = 'clock' AND column_name = 'stopped_at'",
            &[&schema],
        )
        .expect("look for the column");
    assert_eq!(column.len(), 1, "the open added clock.stopped_at again");
    assert_eq!(
        replay(store.begin(&key("before"), &request("r")).unwrap())
            .response()
            .body,
        b"made before"
    );
    acquired(store.begin(&key("after"), &request("r")).unwrap())
        .complete(response("made after"))
        .unwrap();
    store.close().unwrap();
}
