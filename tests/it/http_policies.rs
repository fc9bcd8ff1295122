//! The layers' policies over real HTTP: limits with subjects of their own (global, per user, per
//! route) charged all or nothing; a request no limit applies to passes; per-request costs (and a
//! cost no limit can ever allow); shadow mode, which decides and reports but never denies, not
//! even when the store fails; request header fields in the fingerprint; and query strings that
//! differ only in parameter order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tollgate::Store;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::tower::{IdempotencyLayer, RateLimitLayer};

use crate::web::{Answer, HttpClient, Server, client, post_json, send};

async fn handler(State(calls): State<Arc<AtomicU32>>) -> (StatusCode, String) {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("call {n}"))
}

fn routes(calls: &Arc<AtomicU32>) -> Router {
    Router::new()
        .route("/a", post(handler))
        .route("/b", post(handler))
        .route("/export", post(handler))
        .route("/search", get(handler).post(handler))
        .with_state(Arc::clone(calls))
}

fn user(request: &http::request::Parts) -> Option<String> {
    request
        .headers
        .get("x-user")?
        .to_str()
        .ok()
        .map(str::to_owned)
}

async fn as_user(client: &HttpClient, url: &str, who: Option<&str>) -> Answer {
    let mut request = Request::post(url);
    if let Some(who) = who {
        request = request.header("x-user", who);
    }
    send(client, request.body(Full::new(Bytes::new())).unwrap()).await
}

fn remaining(answer: &Answer) -> Option<u32> {
    answer.header("x-ratelimit-remaining")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_with_their_own_subjects_are_charged_all_or_nothing() {
    let store = Store::in_memory().unwrap();
    let global = Limit::new("global", Quota::per_minute(10)).unwrap();
    let per_user = Limit::new("per-user", Quota::per_minute(2)).unwrap();
    let per_route = Limit::new("per-route", Quota::per_minute(4)).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let app = routes(&calls).layer(
        RateLimitLayer::new(store.clone(), [])
            .global_limit(global.clone())
            .limit_by(per_user.clone(), user)
            .limit_by(per_route.clone(), |request| {
                Some(request.uri.path().to_owned())
            }),
    );
    let server = Server::start(app).await;
    let client = client();
    let (a, b) = (server.url("/a"), server.url("/b"));

    assert_eq!(as_user(&client, &a, Some("alice")).await.status, 201);
    assert_eq!(as_user(&client, &b, Some("alice")).await.status, 201);
    // Alice's own limit (2) is spent; the refusal charges neither the global nor /a's counter.
    let denied = as_user(&client, &a, Some("alice")).await;
    assert_eq!(denied.status, 429);
    assert!(denied.body.contains("per-user"), "{}", denied.body);
    assert_eq!(store.peek(&global, "all").unwrap().remaining(), 8);
    assert_eq!(store.peek(&per_route, "/a").unwrap().remaining(), 3);
    // Bob is counted apart; a request without a user is limited by the others only.
    assert_eq!(as_user(&client, &a, Some("bob")).await.status, 201);
    assert_eq!(as_user(&client, &a, None).await.status, 201);
    assert_eq!(as_user(&client, &a, None).await.status, 201);
    // /a's counter (4) is now spent: the route limit denies anyone there, and /b still works.
    let route_denied = as_user(&client, &a, Some("carol")).await;
    assert_eq!(route_denied.status, 429);
    assert!(
        route_denied.body.contains("per-route"),
        "{}",
        route_denied.body
    );
    assert_eq!(as_user(&client, &b, Some("carol")).await.status, 201);
    assert_eq!(store.peek(&per_user, "carol").unwrap().remaining(), 1);
    assert_eq!(store.peek(&global, "all").unwrap().remaining(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_limit_applies_to_passes_unlimited() {
    let store = Store::in_memory().unwrap();
    let per_user = Limit::new("per-user", Quota::per_minute(1)).unwrap();
    let keyed = Limit::new("keyed", Quota::per_minute(1)).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let app = routes(&calls).layer(
        RateLimitLayer::new(store.clone(), [keyed])
            .key(user)
            .limit_by(per_user, user),
    );
    let server = Server::start(app).await;
    let client = client();
    for _ in 0..3 {
        let anonymous = as_user(&client, &server.url("/a"), None).await;
        assert_eq!(anonymous.status, 201);
        assert!(anonymous.header("ratelimit").is_none());
    }
    assert_eq!(
        as_user(&client, &server.url("/a"), Some("u")).await.status,
        201
    );
    assert_eq!(
        as_user(&client, &server.url("/a"), Some("u")).await.status,
        429
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_charged_its_cost() {
    let store = Store::in_memory().unwrap();
    let limit = Limit::new("units", Quota::per_minute(10)).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let app = routes(&calls).layer(RateLimitLayer::new(store.clone(), [limit.clone()]).cost(
        |request| match request.uri.path() {
            "/export" => 4,
            "/b" => 11,
            _ => 1,
        },
    ));
    let server = Server::start(app).await;
    let client = client();
    let export = as_user(&client, &server.url("/export"), None).await;
    assert_eq!(export.status, 201);
    assert_eq!(remaining(&export), Some(6));
    assert_eq!(
        remaining(&as_user(&client, &server.url("/a"), None).await),
        Some(5)
    );
    assert_eq!(
        as_user(&client, &server.url("/export"), None).await.status,
        201
    );
    // 1 left: an export (4) is denied and charges nothing; a plain request still fits.
    let denied = as_user(&client, &server.url("/export"), None).await;
    assert_eq!(denied.status, 429);
    assert!(denied.header("retry-after").is_some());
    assert_eq!(store.peek(&limit, "all").unwrap().remaining(), 1);
    // A cost over the burst can never be allowed: 429, with no Retry-After to wait for.
    let never = as_user(&client, &server.url("/b"), None).await;
    assert_eq!(never.status, 429);
    assert!(never.header("retry-after").is_none());
    assert!(never.body.contains("costs 11"), "{}", never.body);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_decides_and_reports_but_never_denies() {
    let store = Store::in_memory().unwrap();
    let limit = Limit::new("trial", Quota::per_minute(2)).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let shadow = routes(&calls).layer(
        RateLimitLayer::new(store.clone(), [limit.clone()])
            .key(user)
            .shadow(true),
    );
    let server = Server::start(shadow).await;
    let client = client();
    let url = server.url("/a");
    for expected in [1, 0, 0, 0] {
        let answer = as_user(&client, &url, Some("u")).await;
        assert_eq!(answer.status, 201, "shadow mode never denies");
        assert_eq!(remaining(&answer), Some(expected));
        assert!(answer.header("retry-after").is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // The counter moved exactly as enforcement would have moved it.
    assert!(!store.peek(&limit, "u").unwrap().allowed());

    // A limiter that fails (closed: 500 when enforced), shadow mode lets the request through.
    let enforcing = routes(&calls).layer(RateLimitLayer::new(store.clone(), [limit]).key(user));
    let enforcing = Server::start(enforcing).await;
    store.clone().close().unwrap();
    assert_eq!(as_user(&client, &url, Some("v")).await.status, 201);
    assert_eq!(
        as_user(&client, &enforcing.url("/a"), Some("v"))
            .await
            .status,
        500
    );
    server.stop().await;
    enforcing.stop().await;
}

fn post_with(url: &str, key: &str, version: Option<&str>) -> Request<Full<Bytes>> {
    let mut request = post_json(url, Some(key), "{}");
    if let Some(version) = version {
        request
            .headers_mut()
            .insert("x-api-version", version.parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_header_fields_are_part_of_the_fingerprint() {
    let store = Store::in_memory().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let app = routes(&calls)
        .layer(IdempotencyLayer::new(store.clone()).fingerprint_headers(["X-Api-Version"]));
    let server = Server::start(app).await;
    let client = client();
    let url = server.url("/a");
    assert_eq!(
        send(&client, post_with(&url, "k", Some("1"))).await.status,
        201
    );
    let retry = send(&client, post_with(&url, "k", Some("1"))).await;
    assert!(retry.replayed());
    // Another version, or none, is another request under the same key.
    assert_eq!(
        send(&client, post_with(&url, "k", Some("2"))).await.status,
        422
    );
    assert_eq!(send(&client, post_with(&url, "k", None)).await.status, 422);

    // Without the setting, the header is not part of the request's identity.
    let plain = routes(&calls).layer(IdempotencyLayer::new(store.clone()));
    let plain = Server::start(plain).await;
    let url = plain.url("/a");
    assert_eq!(
        send(&client, post_with(&url, "p", Some("1"))).await.status,
        201
    );
    assert!(
        send(&client, post_with(&url, "p", Some("2")))
            .await
            .replayed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    server.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameter_order_can_be_ignored() {
    let store = Store::in_memory().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let ignoring =
        routes(&calls).layer(IdempotencyLayer::new(store.clone()).ignore_query_order(true));
    let ignoring = Server::start(ignoring).await;
    let client = client();
    let first = send(
        &client,
        post_json(&ignoring.url("/search?a=1&b=2"), Some("q"), "{}"),
    )
    .await;
    assert_eq!(first.status, 201);
    let reordered = send(
        &client,
        post_json(&ignoring.url("/search?b=2&a=1"), Some("q"), "{}"),
    )
    .await;
    assert!(reordered.replayed(), "status {}", reordered.status);
    assert_eq!(reordered.body, first.body);
    // Other values, another path, or a parameter more: another request.
    for other in [
        "/search?a=1&b=3",
        "/search?a=1",
        "/search?a=1&b=2&c=3",
        "/a?a=1&b=2",
    ] {
        let answer = send(&client, post_json(&ignoring.url(other), Some("q"), "{}")).await;
        assert_eq!(answer.status, 422, "{other}");
    }

    // By default the query string is compared as sent.
    let exact = routes(&calls).layer(IdempotencyLayer::new(store.clone()));
    let exact = Server::start(exact).await;
    assert_eq!(
        send(
            &client,
            post_json(&exact.url("/search?a=1&b=2"), Some("e"), "{}")
        )
        .await
        .status,
        201
    );
    assert_eq!(
        send(
            &client,
            post_json(&exact.url("/search?b=2&a=1"), Some("e"), "{}")
        )
        .await
        .status,
        422
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    ignoring.stop().await;
    exact.stop().await;
}
