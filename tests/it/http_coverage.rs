//! Which requests `IdempotencyLayer` makes idempotent, and under which key space: a request whose
//! method is not covered runs every time even with a key; a covered request without a key runs
//! every time when keys are made optional (`key_required(false)`; the default refuses it); a
//! scope, whether a function gives it as a `String` or a fixed `&'static str`, is a key space of
//! its own, so the same key under two scopes is two requests; and a body up to the default limit
//! (1 MiB) is read and fingerprinted, a larger one refused.

use crate::web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::any;
use bytes::Bytes;
use http_body_util::Full;
use tollgate::Store;
use tollgate::idempotency::IdempotencyKey;
use tollgate::tower::{DEFAULT_MAX_BODY_BYTES, IdempotencyLayer};
use web::{Server, client, post_json, send};

async fn order(State(made): State<Arc<AtomicU32>>) -> (StatusCode, String) {
    let n = made.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("order {n}"))
}

fn get_with_key(url: &str, key: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncovered_methods_and_keyless_requests_run_each_time_and_scopes_are_key_spaces() {
    let store = Store::in_memory().unwrap();
    let made = Arc::new(AtomicU32::new(0));
    let routes = |path: &str| {
        Router::new()
            .route(path, any(order))
            .with_state(Arc::clone(&made))
    };
    let optional = IdempotencyLayer::new(store.clone()).key_required(false);
    // Scopes as `String`s (one per tenant path) and as fixed `&'static str`s (one per layer).
    let tenants = optional.clone().scope(|parts| {
        let tenant = parts.uri.path().split('/').nth(1).unwrap_or_default();
        format!("tenant-{tenant}")
    });
    let app = Router::new()
        .merge(routes("/a/orders").layer(tenants.clone()))
        .merge(routes("/b/orders").layer(tenants))
        .merge(routes("/x/orders").layer(optional.clone().scope(|_| "fixed-x")))
        .merge(routes("/y/orders").layer(optional.scope(|_| "fixed-y")));
    let server = Server::start(app).await;
    let client = client();

    // GET is not among the covered methods (POST, PUT, PATCH, DELETE by default): a key on it
    // changes nothing, the handler runs each time.
    let first = send(&client, get_with_key(&server.url("/a/orders"), "k-get")).await;
    let second = send(&client, get_with_key(&server.url("/a/orders"), "k-get")).await;
    assert_eq!(
        (first.body.as_str(), second.body.as_str()),
        ("order 1", "order 2")
    );
    assert!(!second.replayed());

    // A covered request without a key, keys optional: it runs each time.
    for expected in ["order 3", "order 4"] {
        let answer = send(&client, post_json(&server.url("/a/orders"), None, "{}")).await;
        assert_eq!((answer.status, answer.body.as_str()), (201, expected));
    }

    // One key under two scopes of each kind: two requests, each replayed within its own scope.
    let mut n = 4;
    for (one, other, scopes) in [
        ("/a/orders", "/b/orders", ["tenant-a", "tenant-b"]),
        ("/x/orders", "/y/orders", ["fixed-x", "fixed-y"]),
    ] {
        let a = send(&client, post_json(&server.url(one), Some("k"), "{}")).await;
        let b = send(&client, post_json(&server.url(other), Some("k"), "{}")).await;
        assert_eq!(
            (a.body.clone(), b.body.clone()),
            (format!("order {}", n + 1), format!("order {}", n + 2))
        );
        assert!(!b.replayed(), "{other}'s request replayed {one}'s");
        let again = send(&client, post_json(&server.url(one), Some("k"), "{}")).await;
        assert!(again.replayed() && again.body == a.body, "{}", again.body);
        n += 2;
        // The records are under the scopes' own names.
        for scope in scopes {
            let key = IdempotencyKey::new(scope, "k").unwrap();
            assert!(
                store.get(&key).unwrap().is_some(),
                "no record under {scope}"
            );
        }
    }
    assert_eq!(made.load(Ordering::SeqCst), 8);

    // The default body limit: a 64 KiB body is read and fingerprinted; one byte over 1 MiB is 413.
    assert_eq!(DEFAULT_MAX_BODY_BYTES, 1 << 20);
    let large = "x".repeat(64 << 10);
    let taken = send(
        &client,
        post_json(&server.url("/x/orders"), Some("big"), &large),
    )
    .await;
    assert_eq!((taken.status, taken.body.as_str()), (201, "order 9"));
    let other = "y".repeat(64 << 10);
    let mismatch = send(
        &client,
        post_json(&server.url("/x/orders"), Some("big"), &other),
    )
    .await;
    assert_eq!(mismatch.status, 422, "the whole body is fingerprinted");
    let over = "z".repeat((1 << 20) + 1);
    let refused = send(
        &client,
        post_json(&server.url("/x/orders"), Some("over"), &over),
    )
    .await;
    assert_eq!(refused.status, 413);
    assert_eq!(made.load(Ordering::SeqCst), 9);
    server.stop().await;
    store.close().unwrap();
}
