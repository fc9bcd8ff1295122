//! A response stored before a server restart is replayed after it: the store file is the memory,
//! not the process.

use crate::web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tollgate::Store;
use tollgate::tower::IdempotencyLayer;
use web::{Server, client, post_json, send};

async fn create(State(calls): State<Arc<AtomicU32>>) -> (StatusCode, String) {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("{{\"id\":\"pay_{n}\"}}"))
}

fn app(store: &Store, calls: Arc<AtomicU32>) -> Router {
    Router::new()
        .route("/payments", post(create))
        .with_state(calls)
        .layer(IdempotencyLayer::new(store.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_survives_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.redb");
    let calls = Arc::new(AtomicU32::new(0));
    let client = client();

    let store = Store::open(&path).unwrap();
    let server = Server::start(app(&store, Arc::clone(&calls))).await;
    let created = send(
        &client,
        post_json(&server.url("/payments"), Some("order-7"), "{\"amount\":5}"),
    )
    .await;
    assert_eq!(
        (created.status, created.body.as_str()),
        (201, "{\"id\":\"pay_1\"}")
    );
    server.stop().await;
    store.close().unwrap();

    let store = Store::open(&path).unwrap();
    let server = Server::start(app(&store, Arc::clone(&calls))).await;
    let retried = send(
        &client,
        post_json(&server.url("/payments"), Some("order-7"), "{\"amount\":5}"),
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
        "executed once across the restart"
    );
    server.stop().await;
    store.close().unwrap();
}
