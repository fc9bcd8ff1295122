//! 50 concurrent requests with one key, over real HTTP: exactly one payment is made. With waiting
//! configured every request gets that payment's response (49 of them replayed); without it, the
//! losers get 409 or a replay.

mod web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tollgate::Store;
use tollgate::tower::IdempotencyLayer;
use web::{Server, client, post_json, send};

async fn pay(State(payments): State<Arc<AtomicU32>>) -> (StatusCode, String) {
    // Long enough for the duplicates to arrive while this one runs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = payments.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("payment {n}"))
}

async fn fifty_duplicates(
    layer: IdempotencyLayer,
    payments: Arc<AtomicU32>,
) -> Vec<(u16, bool, String)> {
    let app = Router::new()
        .route("/pay", post(pay))
        .with_state(payments)
        .layer(layer);
    let server = Server::start(app).await;
    let client = client();
    let url = server.url("/pay");
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let answer = send(
                    &client,
                    post_json(&url, Some("\"same-key\""), "{\"amount\":1}"),
                )
                .await;
                (answer.status, answer.replayed(), answer.body)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    server.stop().await;
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_duplicates_make_exactly_one_payment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("dupes.redb")).unwrap();

    let payments = Arc::new(AtomicU32::new(0));
    let layer = IdempotencyLayer::new(store.clone()).wait_for_in_flight(Duration::from_secs(10));
    let answers = fifty_duplicates(layer, Arc::clone(&payments)).await;
    assert_eq!(payments.load(Ordering::SeqCst), 1);
    assert!(
        answers
            .iter()
            .all(|(status, _, body)| *status == 201 && body == "payment 1")
    );
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );

    // Without waiting: still one payment; the others are told 409 or get the replay.
    let payments = Arc::new(AtomicU32::new(0));
    let store_b = Store::open(dir.path().join("dupes-409.redb")).unwrap();
    let answers = fifty_duplicates(
        IdempotencyLayer::new(store_b.clone()),
        Arc::clone(&payments),
    )
    .await;
    assert_eq!(payments.load(Ordering::SeqCst), 1);
    assert_eq!(
        answers.iter().filter(|(s, r, _)| *s == 201 && !r).count(),
        1
    );
    // Losers see the conflict or, once the winner finished, its replayed response.
    for (status, _, body) in &answers {
        assert!(
            *status == 409 || (*status == 201 && body == "payment 1"),
            "{status} {body}"
        );
    }
    assert!(answers.iter().any(|(status, _, _)| *status == 409));

    store.close().unwrap();
    store_b.close().unwrap();
}
