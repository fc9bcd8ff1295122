//! Counters on a real Redis Cluster of three masters (started by the tests): the store finds
//! every master from one address, spreads subjects over all of them, charges a multi-limit
//! check of one hash tag all or nothing in one slot, refuses one across slots with a clear
//! error (never CROSSSLOT from Redis), and two nodes hammering one subject get exactly its
//! quota. Losing one master's keys drains exactly the buckets that master held. A slot moved to
//! another master while a store runs is followed (`MOVED`), on the same counter.

use crate::fixture;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use fixture::redis::{node, unique_namespace};
use tollgate::Error;
use tollgate::ratelimit::{Limit, Quota};

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn subjects_spread_over_every_master_and_multi_limit_checks_share_a_slot() {
    let cluster = require_redis_cluster!();
    let namespace = unique_namespace("cluster");
    let store = node(&cluster.url, &namespace);
    let limit = Limit::new("api", Quota::new(10, DAY)).unwrap();
    for i in 0..60 {
        assert!(store.check(&limit, &format!("user:{i}")).unwrap().allowed());
    }
    // Every master holds some sentinels and some counters.
    for master in &cluster.nodes {
        let keys = master.keys(&namespace).unwrap();
        assert!(
            keys.iter().any(|k| k.ends_with(":sentinel"))
                && keys.iter().any(|k| !k.ends_with(":sentinel")),
            "master {} holds {} keys",
            master.port,
            keys.len()
        );
    }
    // Limits of one hash tag are charged all or nothing.
    let per_user = Limit::new("user", Quota::new(5, DAY)).unwrap();
    let uploads = Limit::new("uploads", Quota::new(2, DAY)).unwrap();
    let checks = [(&per_user, "{user:7}"), (&uploads, "{user:7}:uploads")];
    assert!(store.check_all(&checks, 1).unwrap().allowed());
    assert!(store.check_all(&checks, 1).unwrap().allowed());
    let denied = store.check_all(&checks, 1).unwrap();
    assert_eq!((denied.allowed(), denied.policy()), (false, "uploads"));
    assert_eq!(store.peek(&per_user, "{user:7}").unwrap().remaining(), 3);
    // Subjects of different slots: a clear error, and nothing charged.
    let across = store.check_all(&[(&per_user, "user:8"), (&uploads, "user:9")], 1);
    let Err(Error::InvalidArgument(why)) = &across else {
        panic!("{across:?}")
    };
    assert!(why.contains("hash tag"), "{why}");
    assert_eq!(store.peek(&per_user, "user:8").unwrap().remaining(), 5);
    store.close().unwrap();
}

#[test]
fn two_nodes_hammering_one_subject_get_exactly_its_quota() {
    let cluster = require_redis_cluster!();
    let namespace = unique_namespace("cluster_hammer");
    let nodes = [
        node(&cluster.url, &namespace),
        node(&cluster.url, &namespace),
    ];
    let limit = Arc::new(Limit::new("hammer", Quota::new(100, DAY)).unwrap());
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let store = nodes[t % 2].clone();
            let (limit, barrier) = (Arc::clone(&limit), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                (0..20)
                    .filter(|_| store.check(&limit, "one-subject").unwrap().allowed())
                    .count()
            })
        })
        .collect();
    let allowed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(allowed, 100);
    for store in nodes {
        store.close().unwrap();
    }
}

#[test]
fn losing_one_masters_keys_drains_the_buckets_it_held() {
    let cluster = require_redis_cluster!();
    let namespace = unique_namespace("cluster_loss");
    let store = node(&cluster.url, &namespace);
    let limit = Limit::new("guesses", Quota::new(10, DAY)).unwrap();
    let subjects: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    for subject in &subjects {
        assert_eq!(store.check_n(&limit, subject, 3).unwrap().remaining(), 7);
    }
    // Which subjects live on the first master, before its keys go.
    let lost_master = &cluster.nodes[0];
    let held = lost_master.keys(&namespace).unwrap();
    let counters = held
        .iter()
        .filter(|k| !k.ends_with(":sentinel") && !k.ends_with(":secret"))
        .count();
    assert!(
        counters > 0 && counters < subjects.len(),
        "{counters} of {}",
        subjects.len()
    );
    lost_master.delete(&format!("{namespace}:")).unwrap();
    let (mut drained, mut kept) = (0, 0);
    for subject in &subjects {
        let decision = store.peek(&limit, subject).unwrap();
        match decision.remaining() {
            0 => drained += 1,
            7 => kept += 1,
            other => panic!("{subject}: {other} left"),
        }
    }
    assert_eq!(
        drained, counters,
        "exactly the subjects of the lost master are drained"
    );
    assert_eq!(kept, subjects.len() - counters);
    store.close().unwrap();
}

/// A slot moved to another master while a store runs (a resharding: `MIGRATING`/`IMPORTING`,
/// the keys migrated, the slot assigned to its new master): the store's next check of a subject
/// in that slot gets `MOVED`, reads the cluster's map again and carries on with the same counter,
/// nothing lost and nothing minted.
#[test]
fn a_resharded_slot_is_followed_and_its_counter_carries_on() {
    let cluster = require_redis_cluster!();
    if cluster.nodes.len() < 2 {
        tollgate::testing::say_skipped(
            "redis_cluster::a_resharded_slot_is_followed_and_its_counter_carries_on",
            "the cluster given by TOLLGATE_TEST_REDIS_CLUSTER names no masters to reshard",
        );
        return;
    }
    let namespace = unique_namespace("cluster_moved");
    let store = node(&cluster.url, &namespace);
    let limit = Limit::new("moved", Quota::new(10, DAY)).unwrap();
    assert_eq!(store.check_n(&limit, "mover", 3).unwrap().remaining(), 7);

    // The one counter of the namespace, and the master holding it.
    let counter_of = |master: &tollgate::testing::redis::Server| -> Vec<String> {
        master
            .keys(&namespace)
            .unwrap()
            .into_iter()
            .filter(|k| !k.ends_with(":sentinel") && !k.ends_with(":secret"))
            .collect()
    };
    let (from, counter) = cluster
        .nodes
        .iter()
        .enumerate()
        .find_map(|(i, master)| counter_of(master).pop().map(|key| (i, key)))
        .expect("the subject's counter is on a master");
    let to = (from + 1) % cluster.nodes.len();
    let (source, target) = (&cluster.nodes[from], &cluster.nodes[to]);
    let mut source_connection = source.connection().unwrap();
    let mut target_connection = target.connection().unwrap();
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&counter)
        .query(&mut source_connection)
        .unwrap();
    let id = |connection: &mut redis::Connection| -> String {
        redis::cmd("CLUSTER").arg("MYID").query(connection).unwrap()
    };
    let (source_id, target_id) = (id(&mut source_connection), id(&mut target_connection));
    let set_slot = |connection: &mut redis::Connection, state: &str, node: &str| {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(node)
            .query(connection)
            .unwrap();
    };
    set_slot(&mut target_connection, "IMPORTING", &source_id);
    set_slot(&mut source_connection, "MIGRATING", &target_id);
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query(&mut source_connection)
            .unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(target.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query(&mut source_connection)
            .unwrap();
    }
    for master in &cluster.nodes {
        set_slot(&mut master.connection().unwrap(), "NODE", &target_id);
    }
    assert!(counter_of(target).contains(&counter), "the counter moved");

    // The store follows the slot to its new master, on the same counter.
    assert_eq!(store.check(&limit, "mover").unwrap().remaining(), 6);
    assert_eq!(store.peek(&limit, "mover").unwrap().remaining(), 6);
    assert!(counter_of(target).contains(&counter));
    store.close().unwrap();
}
