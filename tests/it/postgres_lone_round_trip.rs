//! A lone caller's change on PostgreSQL goes in one round trip (`batch/lone.rs`): decided on the
//! row as its node last saw it, written only if the row is still exactly that. These scenarios
//! make the node's view stale between its changes, through another node or a second open of its
//! id, and check that the answer is the one two round trips give: a completion after a takeover
//! is `LeaseLost`, a check after another node spent the quota is denied, a superseded node is
//! refused. Each first shows that the path is taken (`Stats::one_round_trip_commits`), so that
//! the stale case is not passing only because the path was skipped.

#![cfg(feature = "postgres")]

use crate::fixture;

use std::time::Duration;

use fixture::postgres::unique_schema;
use fixture::{acquired, key, request, response};
use tollgate::idempotency::Begin;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Error, Store, StoreBuilder};

fn node(conn: &str, schema: &str, id: &str, lease_ttl: Duration) -> Store {
    StoreBuilder::default()
        .postgres_schema(schema)
        .node_id(id)
        .lease_ttl(lease_ttl)
        .background_compaction(false)
        .open_postgres(conn)
        .expect("open a node")
}

fn lone_commits(store: &Store) -> u64 {
    store.stats().expect("stats").one_round_trip_commits
}

#[test]
fn a_completion_after_another_node_took_the_lease_over_is_lease_lost() {
    let server = require_postgres!();
    let schema = unique_schema("lone_takeover");
    let a = node(&server.conn, &schema, "a", Duration::from_secs(1));
    let b = node(&server.conn, &schema, "b", Duration::from_secs(1));

    // The path is taken: a cycle whose completion A's hint (its own lease) allows.
    acquired(a.begin(&key("warm-up"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    let before = lone_commits(&a);
    acquired(a.begin(&key("warm-up-2"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    assert_eq!(
        lone_commits(&a) - before,
        2,
        "a lone begin and completion each took one round trip"
    );

    // A holds a lease; it expires; B takes it over. A's view of the row is now stale.
    let stale = acquired(a.begin(&key("pay-1"), &request("r")).unwrap());
    a.advance_database_clock_for_tests(Duration::from_secs(2))
        .unwrap();
    let taker = match b.begin(&key("pay-1"), &request("r")).unwrap() {
        Begin::Acquired(lease) => lease,
        other => panic!("B takes the expired lease over: {other:?}"),
    };
    assert!(taker.recovered());

    let late = stale.complete(response("from A"));
    assert!(matches!(late, Err(Error::LeaseLost)), "{late:?}");
    taker.complete(response("from B")).unwrap();
    for store in [&a, &b] {
        match store.begin(&key("pay-1"), &request("r")).unwrap() {
            Begin::Replay(replay) => assert_eq!(replay.response().body, b"from B"),
            other => panic!("the taker's completion stands: {other:?}"),
        }
    }
    a.close().unwrap();
    b.close().unwrap();
}

#[test]
fn a_check_after_another_node_spent_the_quota_is_denied() {
    let server = require_postgres!();
    let schema = unique_schema("lone_counter");
    let a = node(&server.conn, &schema, "a", Duration::from_secs(30));
    let b = node(&server.conn, &schema, "b", Duration::from_secs(30));
    let limit = Limit::new("lone", Quota::per_hour(5)).unwrap();

    let before = lone_commits(&a);
    for _ in 0..3 {
        assert!(a.check(&limit, "subject").unwrap().allowed());
    }
    assert!(
        lone_commits(&a) - before >= 2,
        "checks of a counter A wrote last take one round trip"
    );
    // B spends the rest; A's view of the counter (3 spent) is stale.
    for _ in 0..2 {
        assert!(b.check(&limit, "subject").unwrap().allowed());
    }
    let allowed = (0..4)
        .filter(|_| a.check(&limit, "subject").unwrap().allowed())
        .count()
        + (0..2)
            .filter(|_| b.check(&limit, "subject").unwrap().allowed())
            .count();
    assert_eq!(allowed, 0, "the quota of 5 was spent by 3 + 2 checks");
    a.close().unwrap();
    b.close().unwrap();
}

/// A store whose node id was opened again (its connections cut meanwhile) completes a lease it
/// holds: refused as superseded, as two round trips refuse it, although its view of the record
/// (its own lease) is still exact.
#[test]
fn a_superseded_node_cannot_complete_its_lease_in_one_round_trip() {
    let server = require_postgres!();
    let schema = unique_schema("lone_superseded");
    let conn = format!("{} application_name=lone-superseded", server.conn);
    let first = node(&conn, &schema, "dup", Duration::from_secs(30));
    acquired(first.begin(&key("warm-up"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    let before = lone_commits(&first);
    let lease = acquired(first.begin(&key("pay-1"), &request("r")).unwrap());
    assert_eq!(
        lone_commits(&first) - before,
        1,
        "the begin took one round trip"
    );

    let mut admin = postgres::Client::connect(&server.conn, postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'lone-superseded'",
            &[],
        )
        .unwrap();
    let second = node(&server.conn, &schema, "dup", Duration::from_secs(30));
    let refused = lease.complete(response("late"));
    assert!(
        matches!(refused, Err(Error::Superseded | Error::InDoubt(_))),
        "{refused:?}"
    );
    // Nothing of it was written, whatever the first store was told.
    let info = second.get(&key("pay-1")).unwrap().expect("the record");
    assert_eq!(info.state, tollgate::idempotency::RecordState::Running);
    first.close().unwrap();
    second.close().unwrap();
}
