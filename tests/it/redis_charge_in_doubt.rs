//! A charge whose answer never came back is `InDoubt`, never `Unavailable` (which promises that
//! nothing was charged) and never an allow; a read (`peek`) cut off the same way is
//! `Unavailable`.
//!
//! The store talks to Redis through a proxy (`fixture::cut_proxy`) that delivers the next call
//! naming the store's namespace and then cuts the store off before the reply: Redis runs the
//! script and charges the counter, the store hears nothing. The charge must answer `InDoubt`,
//! and a later `peek` (once the store has reconnected) shows that it was indeed charged.

#![cfg(feature = "redis")]

use crate::fixture;

use std::time::Duration;

use fixture::cut_proxy::CutProxy;
use fixture::redis::unique_namespace;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::testing::redis::Server;
use tollgate::{Error, Store};

/// A store whose counters are on `server`, through `proxy`, in `namespace`.
fn through(proxy: &CutProxy, namespace: &str) -> Store {
    Store::builder()
        .rate_counters_redis(&format!("redis://127.0.0.1:{}", proxy.port()))
        .redis_namespace(namespace)
        .redis_timeout(Duration::from_millis(500))
        .open_in_memory()
        .expect("open through the proxy")
}

/// Waits until the store reaches Redis again (its breaker may be open for a moment after the
/// cut) and `peek` finds `expected` remaining; Redis may also still be running the call the store
/// was cut off from.
fn wait_for_remaining(store: &Store, limit: &Limit, subject: &str, expected: u32) {
    fixture::wait_for(&format!("a peek to find {expected} remaining"), || {
        store
            .peek(limit, subject)
            .is_ok_and(|decision| decision.remaining() == expected)
    });
}

#[test]
fn a_charge_whose_reply_is_lost_is_in_doubt_and_was_charged() {
    let _shared = require_redis!();
    let server = Server::spawn(&[]).unwrap();
    let proxy = CutProxy::start(([127, 0, 0, 1], server.port).into());
    let namespace = unique_namespace("charge_in_doubt");
    let store = through(&proxy, &namespace);
    let limit = Limit::new("api", Quota::per_hour(5)).unwrap();
    assert_eq!(store.check(&limit, "user:1").unwrap().remaining(), 4);

    // Every call of this store names its namespace in its keys.
    proxy.cut_after(namespace.as_bytes());
    let outcome = store.check(&limit, "user:1");
    assert_eq!(
        proxy.cuts(),
        1,
        "the proxy cut the store at its call: {outcome:?}"
    );
    assert!(matches!(outcome, Err(Error::InDoubt(_))), "{outcome:?}");

    // Redis ran the call: the quota is one lower.
    wait_for_remaining(&store, &limit, "user:1", 3);
    store.close().unwrap();
}

#[test]
fn a_peek_whose_reply_is_lost_is_unavailable_and_charged_nothing() {
    let _shared = require_redis!();
    let server = Server::spawn(&[]).unwrap();
    let proxy = CutProxy::start(([127, 0, 0, 1], server.port).into());
    let namespace = unique_namespace("peek_cut");
    let store = through(&proxy, &namespace);
    let limit = Limit::new("api", Quota::per_hour(5)).unwrap();
    assert_eq!(store.check(&limit, "user:2").unwrap().remaining(), 4);

    proxy.cut_after(namespace.as_bytes());
    let outcome = store.peek(&limit, "user:2");
    assert_eq!(
        proxy.cuts(),
        1,
        "the proxy cut the store at its call: {outcome:?}"
    );
    assert!(matches!(outcome, Err(Error::Unavailable(_))), "{outcome:?}");
    wait_for_remaining(&store, &limit, "user:2", 4);
    store.close().unwrap();
}
