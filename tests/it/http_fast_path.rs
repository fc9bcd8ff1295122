//! The tower layers answer from memory on the async worker when they can: with the runtime's one
//! blocking thread held (and a probe queued behind it, which shows that the pool is stalled), a
//! replay and a mismatch from the replay cache and Batched rate checks of a counter in memory
//! (allowed, then denied with 429) are still answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tollgate::Store;
use tollgate::ratelimit::{CrashPolicy, Limit, Quota, RateDurability};
use tollgate::tower::{IdempotencyLayer, RateLimitLayer};

use crate::web::{Server, client, post_json, send, within};

async fn charge(State(calls): State<Arc<AtomicU32>>, body: String) -> (StatusCode, String) {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge {n}: {body}"))
}

#[test]
fn replays_and_cached_checks_need_no_blocking_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        // Every charge answered from memory (under the default BoundedLoss, those beyond the
        // reservation on disk wait for its write on a blocking thread).
        .crash_policy(CrashPolicy::TrustLastFlush)
        .rate_durability(RateDurability::Batched {
            max_delay: Duration::from_millis(20),
        })
        .open(dir.path().join("fast.redb"))
        .unwrap();
    runtime.block_on(scenario(store.clone()));
    store.close().unwrap();
}

async fn scenario(store: Store) {
    let calls = Arc::new(AtomicU32::new(0));
    let limit = Limit::new("fast", Quota::per_minute(4)).unwrap();
    let app = Router::new()
        .route("/charge", post(charge))
        .with_state(Arc::clone(&calls))
        .layer(IdempotencyLayer::new(store.clone()))
        .layer(RateLimitLayer::new(store.clone(), [limit]));
    let server = Server::start(app).await;
    let client = client();
    let url = server.url("/charge");

    // The blocking way first: the key's lease and completion, and the counter's first load.
    let first = send(&client, post_json(&url, Some("k"), "a")).await;
    assert_eq!(first.status, 201);
    // The first replay reads the record from the file (blocking) and fills the replay cache.
    let replay = send(&client, post_json(&url, Some("k"), "a")).await;
    assert!(replay.replayed());

    // Hold the runtime's only blocking thread.
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel();
    let blocker = tokio::task::spawn_blocking(move || {
        let _ = started.send(());
        let _ = held.recv();
    });
    within("the blocking thread to be held", running)
        .await
        .unwrap();

    // Work queued for the blocking pool now waits: this probe shows that it does.
    let probe = tokio::task::spawn_blocking(|| ());

    // Memory answers a replay, and the rate check before it.
    let replay = send(&client, post_json(&url, Some("k"), "a")).await;
    assert_eq!(replay.status, 201);
    assert!(replay.replayed());
    assert!(replay.header("ratelimit").is_some(), "{:?}", replay.headers);
    let reused = send(&client, post_json(&url, Some("k"), "other body")).await;
    assert_eq!(reused.status, 422, "a mismatch is answered from memory too");
    // The quota (4) is spent: the first request, two replays, the mismatch. The next is denied,
    // from memory.
    let denied = send(&client, post_json(&url, Some("k"), "a")).await;
    assert_eq!(denied.status, 429);
    assert!(denied.header("retry-after").is_some());
    assert!(
        !probe.is_finished(),
        "the blocking thread was held throughout, so none of the answers above used it"
    );

    hold.send(()).unwrap();
    within("the blocking thread", blocker).await.unwrap();
    within("the probe", probe).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the handler ran once for k"
    );
    server.stop().await;
}
