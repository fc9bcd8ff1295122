//! Two stores on one PostgreSQL schema are two nodes of one service: a request begun on one is
//! replayed by the other, one live lease per key across both, tokens increase across both, and a
//! node's restart frees exactly its own leases.

#![cfg(feature = "postgres")]

use crate::fixture;

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

/// Four nodes, eight threads each, hammer one subject under two limits at once (in both
/// orders): exactly the quota passes across the fleet, `check_all` charges both limits or
/// neither, and concurrent multi-limit checks never deadlock (every call returns).
#[test]
fn the_quota_holds_exactly_across_nodes_and_check_all_is_all_or_nothing() {
    use std::sync::{Arc, Barrier};
    use tollgate::ratelimit::{Limit, Quota};

    let server = require_postgres!();
    let schema = unique_schema("fleet_quota");
    let nodes: Vec<Store> = (0..4)
        .map(|i| node(&server.conn, &schema, &format!("n{i}")))
        .collect();
    // Windows far longer than the test: nothing refills while it runs.
    let tight = Limit::new(
        "tight",
        Quota::fixed_window(50, Duration::from_secs(86_400)),
    )
    .unwrap();
    let loose = Limit::new(
        "loose",
        Quota::fixed_window(80, Duration::from_secs(86_400)),
    )
    .unwrap();
    let barrier = Arc::new(Barrier::new(32));
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let store = nodes[t % 4].clone();
            let (tight, loose, barrier) = (tight.clone(), loose.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut allowed = 0;
                for i in 0..20 {
                    // Half the threads list the limits in the other order.
                    let checks = if (t + i) % 2 == 0 {
                        [(&tight, "one-subject"), (&loose, "one-subject")]
                    } else {
                        [(&loose, "one-subject"), (&tight, "one-subject")]
                    };
                    if store.check_all(&checks, 1).unwrap().allowed() {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let allowed: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // 640 attempts: the tight limit lets exactly 50 through, and the loose one was charged for
    // exactly those (a denial by the tight one charged nothing).
    assert_eq!(allowed, 50);
    assert_eq!(nodes[1].peek(&tight, "one-subject").unwrap().remaining(), 0);
    assert_eq!(
        nodes[2].peek(&loose, "one-subject").unwrap().remaining(),
        30
    );
    for node in nodes {
        node.close().unwrap();
    }
}

/// Many nodes begin the same key at once, both when it is new and when its lease has expired:
/// exactly one gets the lease each time, and a takeover's token is above every earlier one.
#[test]
fn one_live_lease_per_key_across_nodes() {
    use std::sync::{Arc, Barrier};

    let server = require_postgres!();
    let schema = unique_schema("one_lease");
    let nodes: Vec<Store> = (0..4)
        .map(|i| node(&server.conn, &schema, &format!("n{i}")))
        .collect();
    let race = |name: &'static str| -> Vec<tollgate::idempotency::Lease> {
        let barrier = Arc::new(Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let (store, barrier) = (nodes[t % 4].clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    match store.begin(&key(name), &request("r")).unwrap() {
                        Begin::Acquired(lease) => Some(lease),
                        Begin::InFlight { .. } => None,
                        other => panic!("unexpected {other:?}"),
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect()
    };
    let first = race("contended");
    assert_eq!(first.len(), 1, "a new key");
    let first_token = first[0].token();
    drop(first);
    // The lease expires (on the schema's clock, for every node); then they race again.
    nodes[0]
        .advance_database_clock_for_tests(Duration::from_secs(31))
        .unwrap();
    let second = race("contended");
    assert_eq!(second.len(), 1, "an expired lease");
    assert!(second[0].recovered());
    assert!(second[0].token() > first_token);
    for lease in second {
        lease.complete(response("once")).unwrap();
    }
    for node in nodes {
        node.close().unwrap();
    }
}

/// The same race inside one node's batches, when the expired lease's owner has a higher epoch
/// than the node taking it over (it restarted more often): the batch that takes the lease over
/// must decide the next begins of the key on the new lease, owned by this node at its epoch, not
/// by the old owner's epoch (which would make the new lease look left over from an earlier run
/// and hand it out again). Exactly one begin acquires.
#[test]
fn one_live_lease_per_key_inside_a_batch_when_the_old_owner_has_a_higher_epoch() {
    use std::sync::{Arc, Barrier};

    let server = require_postgres!();
    let schema = unique_schema("one_lease_in_a_batch");
    for _ in 0..3 {
        node(&server.conn, &schema, "restarted").close().unwrap();
    }
    let old_owner = node(&server.conn, &schema, "restarted");
    let taker = node(&server.conn, &schema, "taker");
    assert!(
        old_owner.epoch() > taker.epoch(),
        "the old owner's epoch is the higher"
    );
    // Ten keys, so that some race lands two begins of its key in one batch whatever the timing.
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    for name in &keys {
        drop(acquired(
            old_owner.begin(&key(name), &request("r")).unwrap(),
        ));
    }
    taker
        .advance_database_clock_for_tests(Duration::from_secs(31))
        .unwrap();
    for name in &keys {
        let barrier = Arc::new(Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (store, barrier, name) = (taker.clone(), Arc::clone(&barrier), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match store.begin(&key(&name), &request("r")).unwrap() {
                        Begin::Acquired(lease) => Some(lease),
                        Begin::InFlight { .. } => None,
                        other => panic!("unexpected {other:?}"),
                    }
                })
            })
            .collect();
        let leases: Vec<_> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(leases.len(), 1, "one lease for {name}");
        for lease in leases {
            lease.complete(response("once")).unwrap();
        }
        replay(taker.begin(&key(name), &request("r")).unwrap());
    }
    old_owner.close().unwrap();
    taker.close().unwrap();
}

/// A store whose node lock was lost (its connection was cut) while another store opened the
/// same node id stops taking leases as that node: its next change is refused as superseded,
/// instead of writing leases the other's epoch has already made stale.
#[test]
fn a_store_whose_node_id_was_opened_again_is_superseded() {
    let server = require_postgres!();
    let schema = unique_schema("superseded");
    let conn = format!("{} application_name=superseded-node", server.conn);
    let first = node(&conn, &schema, "dup");
    acquired(first.begin(&key("before"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    // Cut every connection of the first store, its node lock's included.
    let mut admin = postgres::Client::connect(&server.conn, postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'superseded-node'",
            &[],
        )
        .unwrap();
    let second = node(&server.conn, &schema, "dup");
    assert_eq!(second.epoch(), 2);
    // The first store's writer reconnects and finds its epoch gone.
    let refused = (0..3)
        .map(|_| first.begin(&key("after"), &request("r")))
        .find(|outcome| !matches!(outcome, Err(Error::Unavailable(_))))
        .expect("an answer after reconnecting");
    assert!(matches!(refused, Err(Error::Superseded)), "{refused:?}");
    acquired(second.begin(&key("after"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    first.close().unwrap();
    second.close().unwrap();
}

/// Opening and closing a PostgreSQL store from async code (a server's `main`) is safe: every
/// use of the synchronous client happens on tollgate's own threads.
#[test]
fn a_store_opens_and_closes_on_an_async_runtime_thread() {
    let server = require_postgres!();
    let schema = unique_schema("async_open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = node(&server.conn, &schema, "async");
        let worker = store.clone();
        tokio::task::spawn_blocking(move || {
            acquired(worker.begin(&key("k"), &request("r")).unwrap())
                .complete(response("ok"))
                .unwrap();
        })
        .await
        .unwrap();
        store.close().unwrap();
    });
}

/// A caller on one node waiting for a key in flight on another (`BeginOptions::wait`) gets the
/// replay once the other node completes it, not an `InFlight` after its wait. (Whether it woke by
/// its poll or found the completion on its next look, this test cannot tell: the look may wait on
/// the completing transaction's row lock. It checks the outcome.)
#[test]
fn a_waiter_on_one_node_sees_a_completion_on_another() {
    let server = require_postgres!();
    let schema = unique_schema("wait_across");
    let a = node(&server.conn, &schema, "a");
    let b = node(&server.conn, &schema, "b");
    let lease = acquired(a.begin(&key("k"), &request("r")).unwrap());
    let (in_flight, seen) = std::sync::mpsc::channel();
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || {
            // Seen in flight first, so that the wait below starts before the completion (or
            // moments after it, which only makes the test easier, never wrong).
            assert!(matches!(
                b.begin(&key("k"), &request("r")).unwrap(),
                Begin::InFlight { .. }
            ));
            in_flight.send(()).unwrap();
            let options = tollgate::BeginOptions {
                wait: Some(Duration::from_secs(25)),
                ..tollgate::BeginOptions::default()
            };
            b.begin_with(&key("k"), &request("r"), &options).unwrap()
        })
    };
    seen.recv().unwrap();
    lease.complete(response("done on a")).unwrap();
    match waiter.join().unwrap() {
        Begin::Replay(replay) => assert_eq!(replay.response().body, b"done on a"),
        other => panic!("the waiter got {other:?}, not the replay"),
    }
    a.close().unwrap();
    b.close().unwrap();
}

/// Stores without a node id leave no rows of their own in `counts` when they close (they fold
/// them into a shared one), so restarts do not grow the table, and the counts stay exact.
#[test]
fn nodes_without_an_id_fold_their_counts_when_they_close() {
    let server = require_postgres!();
    let schema = unique_schema("fold_counts");
    for round in 0..3 {
        let store = StoreBuilder::default()
            .postgres_schema(&schema)
            .open_postgres(&server.conn)
            .unwrap();
        acquired(
            store
                .begin(&key(&format!("k{round}")), &request("r"))
                .unwrap(),
        )
        .complete(response("ok"))
        .unwrap();
        store.close().unwrap();
    }
    let mut admin = postgres::Client::connect(&server.conn, postgres::NoTls).unwrap();
    let slots: Vec<String> = admin
        .query(&format!("SELECT slot FROM \"{schema}\".counts"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(slots, ["retired"], "{slots:?}");
    let store = node(&server.conn, &schema, "reader");
    assert_eq!(store.stats().unwrap().completed, 3);
    store.close().unwrap();
}

/// A store whose node lock's connection was cut (a server restart, an operator's
/// `pg_terminate_backend`) takes the lock again by itself, so a second store with its id is
/// still refused.
#[test]
fn a_store_takes_its_node_lock_again_after_its_connection_is_cut() {
    let server = require_postgres!();
    let schema = unique_schema("lock_retaken");
    let conn = format!("{} application_name=lock-keeper", server.conn);
    let first = node(&conn, &schema, "keeper");
    let mut admin = postgres::Client::connect(&server.conn, postgres::NoTls).unwrap();
    // The backends holding the node's advisory lock.
    let holders = |admin: &mut postgres::Client| -> Vec<i32> {
        admin
            .query(
                "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'advisory' AND l.granted \
                 AND a.application_name = 'lock-keeper'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let before = holders(&mut admin);
    assert_eq!(before.len(), 1);
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'lock-keeper'",
            &[],
        )
        .unwrap();
    // Taken again by a new connection: a terminated backend may still show its lock for a moment
    // before it exits, so the holder must be another backend than the one terminated.
    fixture::wait_for("the node lock to be taken again", || {
        let now = holders(&mut admin);
        now.len() == 1 && now != before
    });
    let second = StoreBuilder::default()
        .postgres_schema(&schema)
        .node_id("keeper")
        .open_postgres(&server.conn);
    assert!(matches!(second, Err(Error::AlreadyOpen)), "{second:?}");
    // The first store still works (its writer reconnects) and keeps its epoch.
    assert_eq!(first.epoch(), 1);
    let answer = (0..3)
        .map(|_| first.begin(&key("k"), &request("r")))
        .find(|outcome| !matches!(outcome, Err(Error::Unavailable(_))))
        .unwrap();
    acquired(answer.unwrap()).complete(response("ok")).unwrap();
    first.close().unwrap();
}
