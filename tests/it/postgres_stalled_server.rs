//! A server that is alive but answers nothing (a frozen process, a long pause: connections stay
//! open, bytes go unanswered) costs each call a bounded wait and a typed retryable error, never
//! a hang; once it answers again the store serves by itself.
//!
//! The store talks to PostgreSQL through `fixture::cut_proxy`, stalled and then resumed. The
//! bounds are the writer's round-trip deadline (`statement_timeout` + 2 s) and the callers'
//! `POSTGRES_CALL_TIMEOUT`; the test only requires an answer within a minute (a hang, not a
//! timing).

#![cfg(feature = "postgres")]

use crate::fixture;

use std::sync::mpsc;
use std::time::Duration;

use fixture::postgres::unique_schema;
use fixture::{acquired, key, request, response};
use tollgate::idempotency::Begin;
use tollgate::{Error, Store, StoreBuilder};

/// `call` on another thread; panics if it has not answered within a minute.
fn answers<T: Send + 'static>(
    store: &Store,
    call: impl FnOnce(&Store) -> tollgate::Result<T> + Send + 'static,
) -> mpsc::Receiver<tollgate::Result<T>> {
    let (sender, receiver) = mpsc::channel();
    let store = store.clone();
    std::thread::spawn(move || {
        let _ = sender.send(call(&store));
    });
    receiver
}

fn within_a_minute<T>(
    answer: &mpsc::Receiver<tollgate::Result<T>>,
    what: &str,
) -> tollgate::Result<T> {
    answer
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} against a stalled server must answer"))
}

#[test]
fn a_stalled_server_costs_bounded_typed_errors_and_service_resumes() {
    let server = require_postgres!();
    let Some((proxy, conn)) = fixture::cut_proxy::postgres(server, "the stalled-server test")
    else {
        return;
    };
    let store = StoreBuilder::default()
        .postgres_schema(&unique_schema("stalled"))
        .node_id("stalled")
        .background_compaction(false)
        .open_postgres(&conn)
        .expect("open through the proxy");
    acquired(store.begin(&key("before"), &request("r")).unwrap())
        .complete(response("ok"))
        .unwrap();
    assert!(store.get(&key("before")).unwrap().is_some());

    proxy.stall();
    let begun = answers(&store, |store| store.begin(&key("during"), &request("r")));
    let read = answers(&store, |store| store.get(&key("before")));
    let begun = within_a_minute(&begun, "a begin");
    assert!(
        matches!(begun, Err(Error::Unavailable(_) | Error::InDoubt(_))),
        "{begun:?}"
    );
    let read = within_a_minute(&read, "a read");
    assert!(matches!(read, Err(Error::Unavailable(_))), "{read:?}");

    proxy.resume();
    // The writer reconnects; the reader's connection gets its late answer and serves again.
    let mut lease = None;
    fixture::wait_for("a begin to be served again", || {
        match store.begin(&key("after"), &request("r")) {
            Ok(Begin::Acquired(acquired)) => {
                lease = Some(acquired);
                true
            }
            Ok(other) => panic!("a fresh key: {other:?}"),
            Err(Error::Unavailable(_) | Error::InDoubt(_)) => false,
            Err(other) => panic!("{other:?}"),
        }
    });
    lease
        .expect("acquired above")
        .complete(response("ok"))
        .unwrap();
    fixture::wait_for("reads to be served again", || {
        store.get(&key("after")).is_ok_and(|info| info.is_some())
    });
    store.close().unwrap();
}
