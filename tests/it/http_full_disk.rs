//! On a full disk the tower idempotency layer keeps serving replays and answers requests that
//! need a write with 503 and `Retry-After` (not 500); once space returns they go through again.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use tollgate::testing::SimDisk;
use tollgate::tower::IdempotencyLayer;

use crate::fixture::{self, Fixture};
use crate::web::{Server, client, post_json, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_go_on_and_writes_are_503_while_the_disk_is_full() {
    scenario(false).await;
}

/// The same through the write-ahead log (the default for store files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_go_on_and_writes_are_503_while_the_disk_is_full_with_the_log() {
    scenario(true).await;
}

async fn scenario(log: bool) {
    let fixture = Fixture::new();
    let disk = SimDisk::new();
    let store = fixture
        .builder()
        .background_compaction(false)
        .write_ahead_log(log)
        .open_simulated(&disk)
        .unwrap();
    let app = Router::new()
        .route("/pay", post(|| async { (StatusCode::CREATED, "paid") }))
        .layer(IdempotencyLayer::new(store.clone()));
    let server = Server::start(app).await;
    let client = client();
    let url = server.url("/pay");
    assert_eq!(
        send(&client, post_json(&url, Some("a"), "{}")).await.status,
        201
    );

    // Fill the disk through the store until it refuses writes.
    disk.fill();
    let filler = store.clone();
    tokio::task::spawn_blocking(move || fixture::write_until_degraded(&filler, "filler", 2000))
        .await
        .unwrap();

    let replayed = send(&client, post_json(&url, Some("a"), "{}")).await;
    assert_eq!(replayed.status, 201);
    assert!(replayed.replayed());
    let refused = send(&client, post_json(&url, Some("b"), "{}")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    // The client learns to retry, not the store's path or the operating system's words.
    assert!(refused.body.contains("retry later"), "{}", refused.body);
    for internal in [".redb", "no space", "space left"] {
        assert!(!refused.body.contains(internal), "{}", refused.body);
    }

    disk.unlimit_size();
    fixture.clock.advance(Duration::from_secs(2));
    assert_eq!(
        send(&client, post_json(&url, Some("b"), "{}")).await.status,
        201
    );
    server.stop().await;
    store.close().unwrap();
}
