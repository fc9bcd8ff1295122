//! Two servers behind a load balancer, one PostgreSQL: a payment made through one server and
//! retried through the other is replayed, not executed again, and the rate limit is the fleet's,
//! not each server's. Over real HTTP on loopback, through the tower layers.

#![cfg(all(feature = "tower", feature = "postgres"))]

use crate::fixture;
use crate::web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::tower::{IdempotencyLayer, RateLimitLayer};
use tollgate::{Store, StoreBuilder};
use web::{Server, client, post_json, send};

async fn create(State(calls): State<Arc<AtomicU32>>) -> (StatusCode, String) {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("{{\"id\":\"pay_{n}\"}}"))
}

fn app(store: &Store, calls: Arc<AtomicU32>) -> Router {
    let fleet = Limit::new("fleet", Quota::fixed_window(3, Duration::from_secs(86_400))).unwrap();
    Router::new()
        .route("/payments", post(create))
        .with_state(calls)
        .layer(IdempotencyLayer::new(store.clone()))
        .layer(RateLimitLayer::new(store.clone(), [fleet]).key(|_| Some("everyone".into())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_the_other_server_is_replayed_and_the_limit_is_shared() {
    let server = require_postgres!();
    let schema = fixture::postgres::unique_schema("http_two_nodes");
    let open = |id: &str| {
        StoreBuilder::default()
            .postgres_schema(&schema)
            .node_id(id)
            .open_postgres(&server.conn)
            .unwrap()
    };
    let (store_a, store_b) = (open("web-a"), open("web-b"));
    // One ledger of executions for the whole fleet.
    let calls = Arc::new(AtomicU32::new(0));
    let a = Server::start(app(&store_a, Arc::clone(&calls))).await;
    let b = Server::start(app(&store_b, Arc::clone(&calls))).await;
    let client = client();

    let created = send(
        &client,
        post_json(&a.url("/payments"), Some("order-9"), "{\"amount\":5}"),
    )
    .await;
    assert_eq!(
        (created.status, created.body.as_str()),
        (201, "{\"id\":\"pay_1\"}")
    );
    let retried = send(
        &client,
        post_json(&b.url("/payments"), Some("order-9"), "{\"amount\":5}"),
    )
    .await;
    assert_eq!(
        (retried.status, retried.body.as_str()),
        (201, created.body.as_str())
    );
    assert!(retried.replayed());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "executed once across the fleet"
    );

    // Two requests spent the fleet's quota of 3 on two servers: one more passes, on either.
    let third = send(
        &client,
        post_json(&b.url("/payments"), Some("order-10"), "{\"amount\":6}"),
    )
    .await;
    assert_eq!(third.status, 201);
    let fourth = send(
        &client,
        post_json(&a.url("/payments"), Some("order-11"), "{\"amount\":7}"),
    )
    .await;
    assert_eq!(fourth.status, 429);
    a.stop().await;
    b.stop().await;
    store_a.close().unwrap();
    store_b.close().unwrap();
}
