//! 50 concurrent requests with one key, over real HTTP: exactly one payment is made. With waiting
//! configured every request gets that payment's response (49 of them replayed); without it, the
//! 49 duplicates that arrive while the payment runs get 409.

use crate::web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::sync::Notify;
use tollgate::Store;
use tollgate::tower::IdempotencyLayer;
use web::{Answer, Server, client, post_json, send};

#[derive(Clone, Default)]
struct Payments {
    made: Arc<AtomicU32>,
    /// The payment finishes only when this is notified (or after 100 ms if `timed`).
    release: Arc<Notify>,
    timed: bool,
}

async fn pay(State(payments): State<Payments>) -> (StatusCode, String) {
    if payments.timed {
        tokio::time::sleep(Duration::from_millis(100)).await;
    } else {
        payments.release.notified().await;
    }
    let n = payments.made.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("payment {n}"))
}

/// Sends 50 requests with one key at once; `on_answer` sees each answer as it arrives.
async fn fifty_duplicates(
    layer: IdempotencyLayer,
    payments: Payments,
    mut on_answer: impl FnMut(&Answer, usize),
) -> Vec<Answer> {
    let app = Router::new()
        .route("/pay", post(pay))
        .with_state(payments)
        .layer(layer);
    let server = Server::start(app).await;
    let client = client();
    let url = server.url("/pay");
    let (sender, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..50 {
        let (client, url, sender) = (client.clone(), url.clone(), sender.clone());
        tokio::spawn(async move {
            let answer = send(
                &client,
                post_json(&url, Some("\"same-key\""), "{\"amount\":1}"),
            )
            .await;
            let _ = sender.send(answer);
        });
    }
    drop(sender);
    let mut all = Vec::new();
    while let Some(answer) = web::within("the next answer", answers.recv()).await {
        on_answer(&answer, all.len() + 1);
        all.push(answer);
    }
    server.stop().await;
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_duplicates_make_exactly_one_payment() {
    let dir = tempfile::tempdir().unwrap();

    // Waiting: every request gets the one payment.
    let store = Store::open(dir.path().join("dupes.redb")).unwrap();
    let payments = Payments {
        timed: true,
        ..Payments::default()
    };
    let layer = IdempotencyLayer::new(store.clone()).wait_for_in_flight(Duration::from_secs(30));
    let answers = fifty_duplicates(layer, payments.clone(), |_, _| {}).await;
    assert_eq!(payments.made.load(Ordering::SeqCst), 1);
    assert!(
        answers
            .iter()
            .all(|a| a.status == 201 && a.body == "payment 1")
    );
    assert_eq!(answers.iter().filter(|a| !a.replayed()).count(), 1);
    store.close().unwrap();

    // Not waiting: the payment is held until the 49 duplicates have been answered, so each of
    // them must have been told 409.
    let store = Store::open(dir.path().join("dupes-409.redb")).unwrap();
    let payments = Payments::default();
    let release = Arc::clone(&payments.release);
    let answers = fifty_duplicates(
        IdempotencyLayer::new(store.clone()),
        payments.clone(),
        |_, n| {
            if n == 49 {
                release.notify_one();
            }
        },
    )
    .await;
    assert_eq!(payments.made.load(Ordering::SeqCst), 1);
    assert_eq!(answers.iter().filter(|a| a.status == 409).count(), 49);
    let last = answers.last().unwrap();
    assert_eq!((last.status, last.body.as_str()), (201, "payment 1"));
    store.close().unwrap();
}
