//! When Redis loses the counters under running stores (a flush, a restart without persistence,
//! a failover to an empty replica, keys deleted by hand), the stores notice through the bucket
//! sentinels and apply their crash policy: with the default `DrainOnRecovery` no subject gets
//! more than its quota across the loss; with `TrustLastFlush` the counters start over (the
//! documented cost of that policy, shown here so that the first test is seen to matter).

use crate::fixture;

use std::time::Duration;

use fixture::redis::unique_namespace;
use tollgate::Store;
use tollgate::ratelimit::{CrashPolicy, Limit, Quota};
use tollgate::testing::redis::Server;

const DAY: Duration = Duration::from_secs(86_400);

fn node(url: &str, namespace: &str, policy: CrashPolicy) -> Store {
    fixture::redis::node_with(Store::builder().crash_policy(policy), url, namespace)
}

/// How many of `attempts` checks the stores allow, taking turns.
fn allowed(stores: &[&Store], limit: &Limit, subject: &str, attempts: usize) -> usize {
    (0..attempts)
        .filter(|i| {
            stores[i % stores.len()]
                .check(limit, subject)
                .unwrap()
                .allowed()
        })
        .count()
}

/// Two nodes spend 7 of a subject's 10; every key of the namespace is deleted at once (one
/// atomic command: the secret, the sentinels, the counters); both nodes go on checking.
fn spent_across_a_deletion(policy: CrashPolicy) -> (usize, usize) {
    let server = tollgate::testing::redis::server().expect("checked by the caller");
    let namespace = unique_namespace("deleted");
    let (a, b) = (
        node(&server.url, &namespace, policy),
        node(&server.url, &namespace, policy),
    );
    // A refill of one per 2.4 hours: nothing comes back while the test runs.
    let limit = Limit::new("guesses", Quota::new(10, DAY)).unwrap();
    let before = allowed(&[&a, &b], &limit, "user:42", 7);
    assert!(server.delete(&format!("{namespace}:")).unwrap() > 2);
    let after = allowed(&[&a, &b], &limit, "user:42", 20);
    a.close().unwrap();
    b.close().unwrap();
    (before, after)
}

#[test]
fn deleting_the_namespace_under_running_stores_mints_nothing() {
    let _server = require_redis!();
    let (before, after) = spent_across_a_deletion(CrashPolicy::DrainOnRecovery);
    assert_eq!(before, 7);
    assert_eq!(after, 0, "the loss is treated as a fully spent quota");
}

#[test]
fn trusting_the_last_flush_starts_over_after_a_loss() {
    let _server = require_redis!();
    let (before, after) = spent_across_a_deletion(CrashPolicy::TrustLastFlush);
    assert_eq!((before, after), (7, 10));
}

/// A restart without persistence empties the server (and forgets the script): the store loads
/// the script again, finds the bucket lost, puts its secret back, and drains the bucket.
#[test]
fn a_restart_without_persistence_mints_nothing() {
    let _shared = require_redis!();
    let mut server = Server::spawn(&[]).unwrap();
    let namespace = unique_namespace("restart");
    let store = node(&server.url, &namespace, CrashPolicy::DrainOnRecovery);
    let limit = Limit::new("guesses", Quota::new(10, DAY)).unwrap();
    assert_eq!(allowed(&[&store], &limit, "user:42", 9), 9);
    // Checks from many threads at once, so that every connection of the store is open when the
    // server goes: after the restart, the first call to find it gone must be the only one.
    std::thread::scope(|scope| {
        for thread in 0..16 {
            let (store, limit) = (&store, &limit);
            scope.spawn(move || {
                for _ in 0..20 {
                    store.check(limit, &format!("warm:{thread}")).unwrap();
                }
            });
        }
    });
    server.kill();
    server.start().unwrap();
    assert!(
        server.keys(&namespace).unwrap().is_empty(),
        "the restart kept nothing"
    );
    // The first checks may meet the breaker opened by the lost connection: wait for its probe.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let decision = loop {
        match store.check(&limit, "user:42") {
            Ok(decision) => break decision,
            Err(tollgate::Error::Unavailable(_) | tollgate::Error::InDoubt(_))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(other) => panic!("{other}"),
        }
    };
    assert!(!decision.allowed(), "{decision:?}");
    assert_eq!(allowed(&[&store], &limit, "user:42", 10), 0);
    // The namespace is whole again: its secret and every sentinel.
    assert_eq!(
        server.keys(&format!("{namespace}:secret")).unwrap().len(),
        1
    );
    // A subject in a bucket not touched yet is drained when first met, too.
    assert!(!store.check(&limit, "user:43").unwrap().allowed());
    store.close().unwrap();
}

/// A store that opens after the loss, before any running store noticed, takes the namespace
/// for new and creates a new secret; the running store then finds its buckets under that
/// secret, adopts it, and drains every bucket (the change is proof of a loss), for both.
#[test]
fn a_new_secret_after_a_loss_is_adopted_and_drains_every_bucket() {
    let server = require_redis!();
    let namespace = unique_namespace("new_secret");
    let old = node(&server.url, &namespace, CrashPolicy::DrainOnRecovery);
    let limit = Limit::new("guesses", Quota::new(10, DAY)).unwrap();
    assert_eq!(allowed(&[&old], &limit, "user:42", 6), 6);
    server.delete(&format!("{namespace}:")).unwrap();
    let new = node(&server.url, &namespace, CrashPolicy::DrainOnRecovery);
    // The old node's next check finds a sentinel of another secret: it adopts it and drains.
    assert!(!old.check(&limit, "user:42").unwrap().allowed());
    assert!(!new.check(&limit, "user:42").unwrap().allowed());
    assert!(!new.check(&limit, "user:99").unwrap().allowed());
    old.close().unwrap();
    new.close().unwrap();
}
