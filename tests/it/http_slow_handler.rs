//! A handler slower than its lease, over real HTTP. The `IdempotencyLayer` keeps the lease alive
//! while the handler runs: with `lease_ttl` 2 s, a 6 s handler and the same key retried every
//! 250 ms, the handler runs once and every answer is either the 409 (with a poll hint of at most
//! a second, not the lease's remaining time) or the one stored response. A handler whose lease is
//! taken over anyway (the process stalled past it: here, the store's clock jumps) learns it from
//! its context, and its response is not stored; the checkpoint it saved reaches the new owner.

use crate::web;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::post;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, RecordState, StoredResponse};
use tollgate::tower::IdempotencyContext;
use tollgate::tower::IdempotencyLayer;
use tollgate::{ManualClock, Store};
use web::{Server, client, post_json, send};

#[derive(Clone, Default)]
struct Orders {
    made: Arc<AtomicU32>,
}

async fn slow_order(State(orders): State<Orders>) -> (StatusCode, String) {
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = orders.made.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("order {n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_slower_than_its_lease_runs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .lease_ttl(Duration::from_secs(2))
        .open(dir.path().join("slow.redb"))
        .unwrap();
    let orders = Orders::default();
    let app = Router::new()
        .route("/orders", post(slow_order))
        .with_state(orders.clone())
        .layer(IdempotencyLayer::new(store.clone()));
    let server = Server::start(app).await;
    let (client, url) = (client(), server.url("/orders"));

    // The first request runs the handler; retries follow it every 250 ms.
    let first = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { send(&client, post_json(&url, Some("\"o-1\""), "{}")).await })
    };
    let started = Instant::now();
    let mut conflicts = 0;
    let mut replays = Vec::new();
    while replays.len() < 3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let answer = send(&client, post_json(&url, Some("\"o-1\""), "{}")).await;
        match answer.status {
            409 => {
                conflicts += 1;
                let hint: u64 = answer.header("retry-after").unwrap().parse().unwrap();
                assert!(hint <= 1, "a 409's Retry-After is a poll hint: {hint} s");
            }
            201 if answer.replayed() => replays.push(answer.body),
            other => panic!("a retry was answered {other}: {}", answer.body),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no replay 20 s after a 6 s handler started"
        );
    }
    let first = web::within("the first answer", first).await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (201, "order 1"));
    assert_eq!(
        orders.made.load(Ordering::SeqCst),
        1,
        "the handler ran twice"
    );
    // Retries during the 6 s were refused (the lease lapsed three times over and was never
    // taken), and every replay is the first client's response.
    assert!(
        conflicts >= 16,
        "only {conflicts} retries saw the request in flight"
    );
    assert!(replays.iter().all(|body| body == "order 1"), "{replays:?}");
    server.stop().await;
    store.close().unwrap();
}

/// Two signals between the handler and the test.
#[derive(Clone, Default)]
struct Signals {
    checkpointed: Arc<tokio::sync::Notify>,
    took_over: Arc<tokio::sync::Notify>,
}

/// A handler that saves a checkpoint, then has its lease taken over (the test moves the store's
/// clock past the lease and begins the key itself), then answers.
async fn overtaken_order(
    State(signals): State<Signals>,
    Extension(context): Extension<IdempotencyContext>,
) -> (StatusCode, String) {
    assert!(!context.recovered && context.attempt == 1);
    assert!(!context.lease_lost(), "a lease just taken is not lost");
    context.save_checkpoint("charged", b"ch_9").await.unwrap();
    signals.checkpointed.notify_one();
    signals.took_over.notified().await;
    // The layer's next extension finds the lease lost, within a third of the lease (real time).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !context.lease_lost() {
        assert!(Instant::now() < deadline, "the lost lease was not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        context.save_checkpoint("late", b"").await,
        Err(tollgate::Error::LeaseLost)
    ));
    (StatusCode::CREATED, "stale order".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_whose_lease_was_taken_over_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let store = Store::builder()
        .clock(clock.clone())
        .lease_ttl(Duration::from_secs(2))
        .open(dir.path().join("overtaken.redb"))
        .unwrap();
    let signals = Signals::default();
    let app = Router::new()
        .route("/orders", post(overtaken_order))
        .with_state(signals.clone())
        .layer(IdempotencyLayer::new(store.clone()));
    let server = Server::start(app).await;
    let (client, url) = (client(), server.url("/orders"));
    let first = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { send(&client, post_json(&url, Some("\"o-2\""), "{}")).await })
    };

    // Once the handler saved its checkpoint, move the clock past its lease (again, should the
    // keeper extend it in between) and take the key over, named as the layer's default scope and
    // fingerprint name it.
    web::within("the checkpoint", signals.checkpointed.notified()).await;
    let key = IdempotencyKey::new("default", "o-2").unwrap();
    let request = Fingerprint::request()
        .method("POST")
        .path("/orders")
        .body(b"{}")
        .finish();
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease = loop {
        let (store, key, request) = (store.clone(), key.clone(), request);
        match tokio::task::spawn_blocking(move || store.begin(&key, &request))
            .await
            .unwrap()
            .unwrap()
        {
            Begin::Acquired(lease) => break lease,
            Begin::InFlight { .. } => {
                assert!(
                    Instant::now() < deadline,
                    "the lease could not be taken over"
                );
                clock.advance(Duration::from_secs(60));
            }
            other => panic!("the takeover's begin answered {other:?}"),
        }
    };
    assert!(lease.recovered());
    assert_eq!(lease.checkpoint().unwrap().name, "charged");
    assert_eq!(lease.checkpoint().unwrap().data, b"ch_9");
    signals.took_over.notify_one();

    // The stale handler's client gets its answer, but it is not the key's outcome.
    let first = web::within("the stale answer", first).await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (201, "stale order"));
    let info = store.get(&key).unwrap().unwrap();
    assert_eq!(
        info.state,
        RecordState::Running,
        "the stale response was stored"
    );
    tokio::task::spawn_blocking(move || {
        lease.complete(StoredResponse::new(201, b"recovered order".to_vec()))
    })
    .await
    .unwrap()
    .unwrap();
    let replay = send(&client, post_json(&url, Some("\"o-2\""), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, "recovered order");
    server.stop().await;
    store.close().unwrap();
}
