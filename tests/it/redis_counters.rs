//! Rate counters on Redis, as a fleet uses them: two stores (two nodes) on one namespace count
//! the same counters, stores on different namespaces never do, every key a store writes starts
//! with its namespace and names no subject, and what the store cannot accept is a typed error at
//! open. (Every rate operation's results, on every engine: `rate_model`, `rate_operations`,
//! `rate_check_all`, `rate_concurrency`.)

use crate::fixture;

use std::time::Duration;

use fixture::redis::{node, unique_namespace};
use tollgate::ratelimit::{Limit, Quota, RateDurability};
use tollgate::{Error, Store};

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn two_nodes_on_one_namespace_share_every_counter_and_namespaces_are_apart() {
    let server = require_redis!();
    let namespace = unique_namespace("two_nodes");
    let (a, b) = (node(&server.url, &namespace), node(&server.url, &namespace));
    let other = node(&server.url, &unique_namespace("other"));
    let limit = Limit::new("orders", Quota::new(10, DAY)).unwrap();
    assert_eq!(a.check_n(&limit, "user:42", 4).unwrap().remaining(), 6);
    assert_eq!(b.check_n(&limit, "user:42", 5).unwrap().remaining(), 1);
    assert!(!a.check_n(&limit, "user:42", 2).unwrap().allowed());
    assert_eq!(b.peek(&limit, "user:42").unwrap().remaining(), 1);
    // Another namespace has a counter of its own.
    assert_eq!(other.peek(&limit, "user:42").unwrap().remaining(), 10);
    // A refund on one node is seen by the other.
    a.refund(&limit, "user:42", 3).unwrap();
    assert_eq!(b.peek(&limit, "user:42").unwrap().remaining(), 4);
    b.reset(&limit, "user:42").unwrap();
    assert_eq!(a.peek(&limit, "user:42").unwrap().remaining(), 10);
    // A node that opens later shares the secret, so the same counter.
    a.check_n(&limit, "user:7", 9).unwrap();
    let c = node(&server.url, &namespace);
    assert_eq!(c.peek(&limit, "user:7").unwrap().remaining(), 1);
    for store in [a, b, c, other] {
        store.close().unwrap();
    }
}

#[test]
fn every_key_starts_with_the_namespace_and_names_no_subject() {
    let server = require_redis!();
    let namespace = unique_namespace("keys");
    let store = node(&server.url, &namespace);
    let limit = Limit::new("login", Quota::per_minute(5)).unwrap();
    let subjects = ["alice@example.com", "203.0.113.9", "{tenant-9}:bob"];
    for subject in subjects {
        assert!(store.check(&limit, subject).unwrap().allowed());
    }
    let keys = server.keys(&namespace).unwrap();
    // The secret, the sentinel of the one bucket of a standalone server, the three counters.
    assert_eq!(keys.len(), 1 + 1 + 3, "{} keys", keys.len());
    let mut connection = server.connection().unwrap();
    for key in &keys {
        let value: Vec<u8> = redis::cmd("GET").arg(key).query(&mut connection).unwrap();
        for subject in subjects.iter().chain(&["alice", "bob", "tenant-9"]) {
            assert!(!key.contains(subject), "{key} names {subject}");
            assert!(
                !value
                    .windows(subject.len())
                    .any(|window| window == subject.as_bytes()),
                "{key} holds {subject}"
            );
        }
    }
    // Nothing of this store outside its namespace.
    let everything: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
    assert!(
        everything
            .iter()
            .filter(|key| key.contains(&namespace))
            .all(|key| key.starts_with(&format!("{namespace}:")))
    );
    store.close().unwrap();
}

#[test]
fn what_redis_counters_cannot_take_is_refused_at_open() {
    let server = require_redis!();
    let batched = Store::builder()
        .rate_counters_redis(&server.url)
        .rate_durability(RateDurability::default())
        .open_in_memory();
    assert!(
        matches!(batched, Err(Error::InvalidArgument(_))),
        "{batched:?}"
    );
    for namespace in ["", "has{brace}", "with space"] {
        let opened = Store::builder()
            .rate_counters_redis(&server.url)
            .redis_namespace(namespace)
            .open_in_memory();
        assert!(
            matches!(opened, Err(Error::InvalidArgument(_))),
            "{namespace:?}"
        );
    }
    let url = Store::builder()
        .rate_counters_redis("http://not-redis")
        .open_in_memory();
    assert!(matches!(url, Err(Error::InvalidArgument(_))), "{url:?}");
    // Nothing listens on this port: the open fails within the timeout, as Unavailable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Store::builder()
        .rate_counters_redis(&format!("redis://127.0.0.1:{port}"))
        .redis_timeout(Duration::from_millis(100))
        .open_in_memory();
    assert!(matches!(down, Err(Error::Unavailable(_))), "{down:?}");
    // A window the script cannot hold exactly is refused when checked.
    let store = node(&server.url, &unique_namespace("huge"));
    let huge = Limit::new("huge", Quota::fixed_window(1, DAY * 365 * 40)).unwrap();
    assert!(matches!(
        store.check(&huge, "s"),
        Err(Error::InvalidArgument(_))
    ));
    store.close().unwrap();
}

/// Concurrent checks from one store share pipelines: far fewer round trips than checks.
#[test]
fn concurrent_checks_share_round_trips() {
    let server = require_redis!();
    let store = node(&server.url, &unique_namespace("pipelined"));
    let limit = Limit::new("api", Quota::per_second(1_000_000)).unwrap();
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let (store, limit) = (store.clone(), limit.clone());
            std::thread::spawn(move || {
                for i in 0..50 {
                    assert!(
                        store
                            .check(&limit, &format!("client-{t}-{i}"))
                            .unwrap()
                            .allowed()
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let (calls, pipelines) = store.redis_calls_for_tests().unwrap();
    assert!(
        pipelines < 32 * 50,
        "{pipelines} pipelines ({calls} script calls) for 1600 checks"
    );
    store.close().unwrap();
}
