//! A handler whose response body fails half-way: the side effect ran but its answer is lost, so
//! the client gets a 500 and the key stays RUNNING with nothing stored; the layer stops keeping
//! the lease alive at once, so the lease lapses on time and a retry after it is a recovery (the
//! handler is told, and may read its checkpoint), never a 409 forever.

use crate::web;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body::Frame;
use tollgate::Store;
use tollgate::idempotency::{IdempotencyKey, RecordState};
use tollgate::tower::{IdempotencyContext, IdempotencyLayer};
use web::{Server, client, post_json, send};

/// A body that sends one chunk, then fails.
struct Failing(bool);

impl http_body::Body for Failing {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0 {
            return Poll::Ready(Some(Err(std::io::Error::other("the source went away"))));
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"half")))))
    }
}

async fn order(
    State(runs): State<Arc<AtomicU32>>,
    Extension(context): Extension<IdempotencyContext>,
) -> Response {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    if run == 1 {
        return (StatusCode::CREATED, Body::new(Failing(false))).into_response();
    }
    let answer = format!("run {run}, recovered {}", context.recovered);
    (StatusCode::CREATED, answer).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_response_leaves_the_key_running_and_its_lease_lapses_on_time() {
    // A short lease, on the real clock: the layer's keeper runs on real time (every third of the
    // lease), so this test waits in real time too.
    let lease = Duration::from_millis(600);
    let store = Store::builder().lease_ttl(lease).open_in_memory().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/orders", post(order))
        .with_state(Arc::clone(&runs))
        .layer(IdempotencyLayer::new(store.clone()));
    let server = Server::start(app).await;
    let (client, url) = (client(), server.url("/orders"));

    let broken = send(&client, post_json(&url, Some("k"), "{}")).await;
    assert_eq!(broken.status, 500, "{}", broken.body);
    assert!(broken.body.contains("Response failed"), "{}", broken.body);
    let key = IdempotencyKey::new("default", "k").unwrap();
    let record = store.get(&key).unwrap().expect("the record stays");
    assert_eq!(record.state, RecordState::Running);

    // Long enough for the lease to lapse (600 ms after its last extension) and, had the keeper
    // gone on, for it to have extended the lease several times (every 200 ms).
    tokio::time::sleep(lease * 5 / 2).await;
    let retry = send(&client, post_json(&url, Some("k"), "{}")).await;
    assert_eq!(
        (retry.status, retry.body.as_str()),
        (201, "run 2, recovered true"),
        "the retry after the lease lapsed is a recovery"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    server.stop().await;
    store.close().unwrap();
}
