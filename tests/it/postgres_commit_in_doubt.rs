//! A commit whose outcome the client could not learn is reported as `InDoubt`, never as a plain
//! failure (`Unavailable` promises that nothing was changed).
//!
//! The store talks to PostgreSQL through a proxy (`fixture::cut_proxy`) that delivers a
//! transaction's `COMMIT` to the server and then cuts the store off before the answer comes back:
//! the server commits, the store hears nothing. Each operation that writes must answer `InDoubt`,
//! and the database then shows that the change was indeed made, which is why `Unavailable` would
//! have been a lie. A cut before the `COMMIT` (at the writer's `BEGIN`) must answer
//! `Unavailable` with nothing written. The store keeps working afterwards (it reconnects).
//!
//! Guards against: a maintenance write (`bulk_load`, compaction) whose `COMMIT` was lost on its
//! way back reporting `Unavailable` (it did before the tenth session), and a writer batch doing so.

#![cfg(feature = "postgres")]

use crate::fixture;

use std::time::Duration;

use fixture::postgres::unique_schema;
use fixture::{acquired, key, request, response};
use tollgate::idempotency::{Fingerprint, IdempotencyKey, RecordState, StoredResponse};
use tollgate::{BeginOptions, Error, Store, StoreBuilder};

/// A store whose every change takes two round trips (lock, then write and `COMMIT`), the
/// batch path these tests cut; `one_round_trip` for a lone change's own statement.
fn open(conn: &str, schema: &str, node: &str) -> Store {
    open_with(conn, schema, node, false)
}

fn open_with(conn: &str, schema: &str, node: &str, one_round_trip: bool) -> Store {
    StoreBuilder::default()
        .postgres_schema(schema)
        .node_id(node)
        .lease_ttl(Duration::from_secs(30))
        // No sweep of its own may send a COMMIT the proxy would take for the test's.
        .background_compaction(false)
        .postgres_one_round_trip(one_round_trip)
        .open_postgres(conn)
        .expect("open through the proxy")
}

fn state(store: &Store, key: &IdempotencyKey) -> Option<RecordState> {
    store.get(key).expect("get").map(|info| info.state)
}

#[test]
fn a_completion_whose_commit_answer_is_lost_is_in_doubt_and_was_committed() {
    let server = require_postgres!();
    let Some((proxy, conn)) = fixture::cut_proxy::postgres(server, "the commit-in-doubt test")
    else {
        return;
    };
    let schema = unique_schema("commit_in_doubt");
    let store = open(&conn, &schema, "cut");
    let lease = acquired(store.begin(&key("pay-1"), &request("r")).unwrap());

    proxy.cut_after(b"COMMIT\0");
    let outcome = lease.complete(response("charged"));
    assert_eq!(
        proxy.cuts(),
        1,
        "the proxy cut the writer at its COMMIT: {outcome:?}"
    );
    assert!(matches!(outcome, Err(Error::InDoubt(_))), "{outcome:?}");

    // The server did commit it: seen from a store that connects directly (the server may still
    // be finishing the COMMIT the store was cut off from, hence the wait).
    let direct = open(&server.conn, &schema, "direct");
    fixture::wait_for("the cut-off completion to be committed", || {
        state(&direct, &key("pay-1")) == Some(RecordState::Completed)
    });
    direct.close().unwrap();
    // And the cut store reconnects by itself.
    assert_eq!(state(&store, &key("pay-1")), Some(RecordState::Completed));
    store.close().unwrap();
}

/// A completion whose `COMMIT` reached the server and whose answer never comes (the connection
/// stays open, silent) is `InDoubt` once the writer's round-trip deadline passes, never
/// `Unavailable` (which would promise that nothing changed): the server did commit it.
#[test]
fn a_completion_whose_commit_answer_never_comes_is_in_doubt_at_its_deadline() {
    let server = require_postgres!();
    let Some((proxy, conn)) = fixture::cut_proxy::postgres(server, "the silent-commit test") else {
        return;
    };
    let schema = unique_schema("commit_silent");
    let store = open(&conn, &schema, "silenced");
    let lease = acquired(store.begin(&key("pay-1"), &request("r")).unwrap());

    proxy.silence_after(b"COMMIT\0");
    let outcome = lease.complete(response("charged"));
    assert_eq!(
        proxy.cuts(),
        1,
        "the proxy silenced the writer at its COMMIT: {outcome:?}"
    );
    assert!(matches!(outcome, Err(Error::InDoubt(_))), "{outcome:?}");

    let direct = open(&server.conn, &schema, "direct");
    fixture::wait_for("the silenced completion to be committed", || {
        state(&direct, &key("pay-1")) == Some(RecordState::Completed)
    });
    direct.close().unwrap();
    assert_eq!(state(&store, &key("pay-1")), Some(RecordState::Completed));
    store.close().unwrap();
}

/// A batch whose connection is cut while its rows are locked (before anything of it can commit)
/// starts over once on a new connection: cut once, it commits; cut again there, it is
/// `Unavailable` and wrote nothing. (A lone change in one round trip is the next test's.)
#[test]
fn a_batch_cut_before_its_commit_starts_over_once_and_else_is_unavailable() {
    let server = require_postgres!();
    let Some((proxy, conn)) = fixture::cut_proxy::postgres(server, "the commit-in-doubt test")
    else {
        return;
    };
    let schema = unique_schema("cut_before_commit");
    let store = open(&conn, &schema, "cut");

    // The writer's batch opens with `BEGIN; SELECT set_config(…` sent with its lock statement:
    // cut there, the server sees an open transaction end with its connection.
    let lease = acquired(store.begin(&key("pay-2"), &request("r")).unwrap());
    proxy.cut_after(b"BEGIN; SELECT set_config");
    let outcome = lease.complete(response("charged"));
    assert_eq!(
        proxy.cuts(),
        1,
        "the proxy cut the writer at its BEGIN: {outcome:?}"
    );
    assert!(
        outcome.is_ok(),
        "a batch cut before its commit starts over: {outcome:?}"
    );
    assert_eq!(state(&store, &key("pay-2")), Some(RecordState::Completed));

    // Cut at every BEGIN: the one new connection is cut too, and the caller is told.
    let lease = acquired(store.begin(&key("pay-3"), &request("r")).unwrap());
    proxy.cut_every_after(b"BEGIN; SELECT set_config");
    let outcome = lease.complete(response("charged"));
    proxy.disarm();
    assert_eq!(
        proxy.cuts(),
        3,
        "one cut, then the first and its one retry: {outcome:?}"
    );
    assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
    assert_eq!(state(&store, &key("pay-3")), Some(RecordState::Running));
    store.close().unwrap();
}

/// A lone completion goes in one round trip: one statement that is its own transaction. Cut
/// once the statement has reached the server, it is in doubt, never `Unavailable`: the server
/// runs it and commits, as the database then shows. The store reconnects by itself.
#[test]
fn a_lone_change_whose_answer_is_lost_is_in_doubt_and_was_committed() {
    let server = require_postgres!();
    let Some((proxy, conn)) = fixture::cut_proxy::postgres(server, "the commit-in-doubt test")
    else {
        return;
    };
    let schema = unique_schema("lone_cut");
    let store = open_with(&conn, &schema, "cut", true);
    acquired(store.begin(&key("warm-up"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    let lease = acquired(store.begin(&key("pay-4"), &request("r")).unwrap());
    let before = store.stats().unwrap().one_round_trip_commits;
    // The statement carries the response's body in the record it writes.
    proxy.cut_after(b"charged-lone");
    let outcome = lease.complete(response("charged-lone"));
    assert_eq!(proxy.cuts(), 1, "the proxy cut the writer: {outcome:?}");
    assert!(matches!(outcome, Err(Error::InDoubt(_))), "{outcome:?}");
    assert_eq!(
        store.stats().unwrap().one_round_trip_commits,
        before,
        "an answer in doubt is counted as no commit"
    );
    let direct = open(&server.conn, &schema, "direct");
    fixture::wait_for("the cut-off lone completion to be committed", || {
        state(&direct, &key("pay-4")) == Some(RecordState::Completed)
    });
    direct.close().unwrap();
    assert_eq!(state(&store, &key("pay-4")), Some(RecordState::Completed));
    store.close().unwrap();
}

#[test]
fn a_bulk_load_whose_commit_answer_is_lost_is_in_doubt_and_was_committed() {
    let server = require_postgres!();
    let Some((proxy, conn)) = fixture::cut_proxy::postgres(server, "the commit-in-doubt test")
    else {
        return;
    };
    let schema = unique_schema("bulk_in_doubt");
    let store = open(&conn, &schema, "cut");

    proxy.cut_after(b"COMMIT\0");
    let loaded = store.bulk_load(100, Duration::from_secs(3600), |i| {
        (
            IdempotencyKey::new("bulk", &format!("key-{i}")).expect("a valid key"),
            Fingerprint::of(b"request"),
            StoredResponse::new(200, b"ok".to_vec()),
        )
    });
    assert_eq!(
        proxy.cuts(),
        1,
        "the proxy cut the bulk load at its COMMIT: {loaded:?}"
    );
    assert!(matches!(loaded, Err(Error::InDoubt(_))), "{loaded:?}");

    let all = |store: &Store| {
        (0..100).all(|i| {
            let key = IdempotencyKey::new("bulk", &format!("key-{i}")).expect("a valid key");
            state(store, &key) == Some(RecordState::Completed)
        })
    };
    fixture::wait_for("every record of the cut-off load to be committed", || {
        all(&store)
    });
    store.close().unwrap();
}

#[test]
fn a_compaction_whose_commit_answer_is_lost_is_in_doubt_and_was_committed() {
    let server = require_postgres!();
    let Some((proxy, conn)) = fixture::cut_proxy::postgres(server, "the commit-in-doubt test")
    else {
        return;
    };
    let schema = unique_schema("compact_in_doubt");
    let store = open(&conn, &schema, "cut");
    let short = BeginOptions {
        record_ttl: Some(Duration::from_secs(1)),
        lease_ttl: None,
        wait: None,
    };
    for name in ["old-1", "old-2"] {
        let lease = acquired(store.begin_with(&key(name), &request("r"), &short).unwrap());
        lease.complete(response("done")).unwrap();
    }
    store
        .advance_database_clock_for_tests(Duration::from_secs(2))
        .unwrap();

    proxy.cut_after(b"COMMIT\0");
    let swept = store.compact_now();
    assert_eq!(
        proxy.cuts(),
        1,
        "the proxy cut the sweep at its COMMIT: {swept:?}"
    );
    assert!(matches!(swept, Err(Error::InDoubt(_))), "{swept:?}");
    fixture::wait_for("the cut-off sweep to be committed", || {
        state(&store, &key("old-1")).is_none() && state(&store, &key("old-2")).is_none()
    });
    store.close().unwrap();
}
