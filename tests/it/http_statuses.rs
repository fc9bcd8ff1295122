//! Every answer of the tower layers, over real HTTP on loopback: 201, replay with
//! `Idempotent-Replayed`, 422 for a reused key, 400 for a missing or malformed key, 413 for a large
//! body, 409 with `Retry-After` while in flight, 5xx (a 503 and the handler's own 500) and handler
//! panics released (the retry runs again), and 429 with `Retry-After` and RateLimit fields from the rate limiter, which runs first.

use crate::web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tollgate::Store;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::tower::{IdempotencyLayer, RateLimitLayer};
use web::{Server, client, post_json, send};

#[derive(Clone, Default)]
struct Calls {
    charge: Arc<AtomicU32>,
    flaky: Arc<AtomicU32>,
    panicky: Arc<AtomicU32>,
    started: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

async fn charge(State(calls): State<Calls>, body: String) -> (StatusCode, String) {
    let n = calls.charge.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge {n}: {body}"))
}

async fn flaky(State(calls): State<Calls>) -> (StatusCode, String) {
    match calls.flaky.fetch_add(1, Ordering::SeqCst) {
        0 => (StatusCode::SERVICE_UNAVAILABLE, "try again".into()),
        // The handler's own 500 (not a panic): an error of this execution, not its outcome.
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "broke".into()),
        n => (StatusCode::CREATED, format!("flaky {n}")),
    }
}

async fn panicky(State(calls): State<Calls>) -> (StatusCode, String) {
    if calls.panicky.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("handler bug");
    }
    (StatusCode::CREATED, "recovered".into())
}

async fn slow(State(calls): State<Calls>) -> (StatusCode, String) {
    calls.started.notify_one();
    calls.release.notified().await;
    (StatusCode::CREATED, "slow done".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_of_the_layers_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("http.redb")).unwrap();
    let calls = Calls::default();
    let limit = Limit::new("tests", Quota::per_minute(16)).unwrap();
    let app = Router::new()
        .route("/charge", post(charge))
        .route("/flaky", post(flaky))
        .route("/panicky", post(panicky))
        .route("/slow", post(slow))
        .with_state(calls.clone())
        .layer(IdempotencyLayer::new(store.clone()).max_body_bytes(64))
        .layer(RateLimitLayer::new(store.clone(), [limit]));
    let server = Server::start(app).await;
    let client = client();
    let url = |path| server.url(path);

    // Created, then replayed with the marker, executed once.
    let first = send(
        &client,
        post_json(&url("/charge"), Some("\"k1\""), "{\"a\":1}"),
    )
    .await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (201, "charge 1: {\"a\":1}")
    );
    assert!(!first.replayed());
    assert!(
        first.header("ratelimit").is_some(),
        "RateLimit fields on every response"
    );
    let again = send(&client, post_json(&url("/charge"), Some("k1"), "{\"a\":1}")).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (201, first.body.as_str())
    );
    assert!(again.replayed());
    // The handler's own fields are stored and replayed (the connection's are not).
    assert_eq!(
        again.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(again.header("content-type"), first.header("content-type"));
    assert_eq!(calls.charge.load(Ordering::SeqCst), 1);

    // The same key for a different request.
    let reused = send(&client, post_json(&url("/charge"), Some("k1"), "{\"a\":2}")).await;
    assert_eq!(reused.status, 422);
    assert_eq!(
        reused.header("content-type"),
        Some("application/problem+json")
    );

    // Missing and malformed keys, and a body over the limit: refused before any state.
    assert_eq!(
        send(&client, post_json(&url("/charge"), None, "{}"))
            .await
            .status,
        400
    );
    let malformed = send(&client, post_json(&url("/charge"), Some("\"open"), "{}")).await;
    assert_eq!(malformed.status, 400);
    assert!(malformed.body.contains("malformed"), "{}", malformed.body);
    let large = send(
        &client,
        post_json(&url("/charge"), Some("k2"), &"x".repeat(65)),
    )
    .await;
    assert_eq!(large.status, 413);
    assert_eq!(calls.charge.load(Ordering::SeqCst), 1);

    // 5xx is released: the retry runs again and is stored.
    let failed = send(&client, post_json(&url("/flaky"), Some("k3"), "{}")).await;
    assert_eq!(failed.status, 503);
    let broke = send(&client, post_json(&url("/flaky"), Some("k3"), "{}")).await;
    assert_eq!((broke.status, broke.body.as_str()), (500, "broke"));
    assert!(!broke.replayed(), "the 500 ran the handler again");
    let retried = send(&client, post_json(&url("/flaky"), Some("k3"), "{}")).await;
    assert_eq!((retried.status, retried.body.as_str()), (201, "flaky 2"));
    assert!(
        send(&client, post_json(&url("/flaky"), Some("k3"), "{}"))
            .await
            .replayed()
    );

    // A panicking handler: 500, released; the retry runs.
    let panicked = send(&client, post_json(&url("/panicky"), Some("k4"), "{}")).await;
    assert_eq!(panicked.status, 500);
    let recovered = send(&client, post_json(&url("/panicky"), Some("k4"), "{}")).await;
    assert_eq!(
        (recovered.status, recovered.body.as_str()),
        (201, "recovered")
    );

    // In flight: 409 with Retry-After while the first is running (its handler has started).
    let running = tokio::spawn({
        let (client, url) = (client.clone(), url("/slow"));
        async move { send(&client, post_json(&url, Some("k5"), "{}")).await }
    });
    web::within("the slow handler to start", calls.started.notified()).await;
    let conflict = send(&client, post_json(&url("/slow"), Some("k5"), "{}")).await;
    assert_eq!(conflict.status, 409);
    assert!(conflict.header("retry-after").is_some());
    calls.release.notify_one();
    assert_eq!(running.await.unwrap().status, 201);

    // Rate limited: 429 with Retry-After, and never stored (the key is still free afterwards).
    let mut limited = None;
    for i in 0..40 {
        let answer = send(
            &client,
            post_json(&url("/charge"), Some(&format!("r{i}")), "{}"),
        )
        .await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the limit runs out");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));

    server.stop().await;
    store.close().unwrap();
}
