//! Scopes and subjects fail closed. A scope function that finds no identity refuses the request
//! (401, or the configured status) before any state, instead of putting every such caller (and
//! every header that is not UTF-8) into one shared key space; a required subject of a rate limit
//! refuses the same way, where an optional one lets the request pass that limit.

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

async fn order(State(made): State<Arc<AtomicU32>>) -> (StatusCode, String) {
    let n = made.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("order {n}"))
}

fn user(request: &http::request::Parts) -> Option<String> {
    request
        .headers
        .get("x-user")?
        .to_str()
        .ok()
        .map(str::to_owned)
}

fn as_user(
    url: &str,
    user: Option<&[u8]>,
    key: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut request = post_json(url, Some(key), "{}");
    if let Some(user) = user {
        request
            .headers_mut()
            .insert("x-user", http::HeaderValue::from_bytes(user).unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_identity_is_refused_before_any_state() {
    let store = Store::in_memory().unwrap();
    let made = Arc::new(AtomicU32::new(0));
    let per_user = Limit::new("per-user", Quota::per_minute(100)).unwrap();
    let app = Router::new()
        .route("/orders", post(order))
        .with_state(Arc::clone(&made))
        .layer(IdempotencyLayer::new(store.clone()).scope(user))
        .layer(RateLimitLayer::new(store.clone(), []).limit_by_required(per_user, user));
    let server = Server::start(app).await;
    let (client, url) = (client(), server.url("/orders"));

    // Two callers without a user, and one whose header is not UTF-8, with one key and one body:
    // each is refused; none runs the handler, none is charged or recorded.
    for caller in [None, None, Some(&b"\xff\xfe"[..])] {
        let answer = send(&client, as_user(&url, caller, "\"k-1\"")).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert!(answer.body.contains("not identified"), "{}", answer.body);
    }
    assert_eq!(made.load(Ordering::SeqCst), 0);
    let key = tollgate::idempotency::IdempotencyKey::new("", "k-1").unwrap();
    assert!(
        store.get(&key).unwrap().is_none(),
        "an empty scope was recorded"
    );

    // Identified callers each get their own execution of the same key.
    let alice = send(&client, as_user(&url, Some(b"alice"), "\"k-1\"")).await;
    let bob = send(&client, as_user(&url, Some(b"bob"), "\"k-1\"")).await;
    assert_eq!((alice.status, alice.body.as_str()), (201, "order 1"));
    assert_eq!((bob.status, bob.body.as_str()), (201, "order 2"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_status_is_configurable_and_optional_subjects_still_pass() {
    let store = Store::in_memory().unwrap();
    let made = Arc::new(AtomicU32::new(0));
    let per_user = Limit::new("per-user", Quota::per_minute(100)).unwrap();
    let app = Router::new()
        .route("/orders", post(order))
        .with_state(Arc::clone(&made))
        .layer(
            IdempotencyLayer::new(store.clone())
                .scope(user)
                .unidentified(StatusCode::FORBIDDEN),
        )
        // An optional subject: a request without a user is not limited by it.
        .layer(RateLimitLayer::new(store.clone(), []).limit_by(per_user, user));
    let server = Server::start(app).await;
    let (client, url) = (client(), server.url("/orders"));
    let answer = send(&client, as_user(&url, None, "\"k-2\"")).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.header("ratelimit").is_none());
    assert_eq!(made.load(Ordering::SeqCst), 0);
    server.stop().await;

    // The rate layer alone, with its key required: refused with the status it was given.
    let app = Router::new()
        .route("/orders", post(order))
        .with_state(Arc::clone(&made))
        .layer(
            RateLimitLayer::new(
                store.clone(),
                [Limit::new("per-key", Quota::per_minute(100)).unwrap()],
            )
            .key(user)
            .key_required(true)
            .unidentified(StatusCode::PROXY_AUTHENTICATION_REQUIRED),
        );
    let server = Server::start(app).await;
    let url = server.url("/orders");
    assert_eq!(
        send(&client, as_user(&url, None, "\"k-3\"")).await.status,
        407
    );
    let allowed = send(&client, as_user(&url, Some(b"carol"), "\"k-3\"")).await;
    assert_eq!(allowed.status, 201);
    assert_eq!(allowed.header("x-ratelimit-remaining"), Some("99"));
    assert_eq!(made.load(Ordering::SeqCst), 1);
    server.stop().await;
}
