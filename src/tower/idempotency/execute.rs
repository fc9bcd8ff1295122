//! Running the inner service under a lease: the handler as its own task (a client that
//! disconnects cancels neither a side effect half-way nor the storing of its response), the lease
//! kept alive while it runs, and its outcome recorded (stored, or the key released); the stored
//! response turned back into a replay.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use super::context::{IdempotencyContext, LeaseSlot, keep_alive, keep_alive_period};
use super::{BoxError, Config, IDEMPOTENT_REPLAYED, blocking};
use crate::Error;
use crate::idempotency::{Lease, StoredResponse};
use crate::tower::problem::{problem, unavailable};

/// `Retry-After` of a 409 for a duplicate in flight: a poll hint, in seconds.
pub(super) const IN_FLIGHT_RETRY_AFTER: &str = "1";

/// Runs the inner service under `lease`, kept alive while it runs, and records (or releases) its
/// outcome.
pub(super) async fn execute<S, B, R>(
    config: Arc<Config>,
    mut inner: S,
    mut parts: Parts,
    body: Bytes,
    lease: Lease,
) -> Result<Response<R>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    R: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    let ttl = config.store.lease_ttl();
    let context = IdempotencyContext {
        recovered: lease.recovered(),
        attempt: lease.attempt(),
        token: lease.token(),
        checkpoint: lease.checkpoint().cloned(),
        lease: LeaseSlot::new(lease),
    };
    let slot = context.lease.clone();
    parts.extensions.insert(context);
    let request = Request::from_parts(parts, B::from(body));
    // The lease is extended while the handler runs and its body is read, and no longer: a
    // process that dies takes this task with it, and the lease lapses on time.
    let keeper = tokio::spawn(keep_alive(slot.clone(), keep_alive_period(ttl), ttl));
    let keeper = AbortOnDrop(keeper);
    // The handler runs as its own task: a panic is reported here instead of unwinding through
    // the server.
    let outcome = tokio::spawn(async move { inner.call(request).await }).await;
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            release(slot).await;
            return Err(error);
        }
        Err(_) => {
            release(slot).await;
            return Ok(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Handler failed",
                "the request failed before producing a response; it may be retried",
            ));
        }
    };
    let (parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        // The side effect ran but its answer is lost: leave the key RUNNING, so that a retry
        // after the lease expires is told it is a recovery.
        drop(keeper);
        return Ok(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Response failed",
            "the response body could not be read",
        ));
    };
    drop(keeper);
    let body = collected.to_bytes();
    if (config.store_status)(parts.status) {
        let stored = to_stored(&parts, &body);
        let recorded = blocking(move || {
            // Waits for an extension in progress; the keeper is stopped, so none starts.
            let Some(lease) = slot.take().filter(|_| !slot.is_lost()) else {
                return Err(Error::LeaseLost);
            };
            match lease.complete(stored) {
                Err(Error::ResponseTooLarge {
                    lease: Some(lease), ..
                }) => lease.release(),
                Err(Error::LeaseLost) => {
                    crate::observe::lease_lost_in_handler(&slot.inner.digest);
                    Err(Error::LeaseLost)
                }
                other => other,
            }
        })
        .await;
        if let Err(error) = recorded {
            if !matches!(error, Error::LeaseLost) {
                crate::observe::response_not_recorded(&error);
            }
        }
    } else {
        release(slot).await;
    }
    Ok(Response::from_parts(parts, R::from(body)))
}

/// Aborts a task when dropped: the lease keeper stops however `execute` ends.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Response header fields that describe one connection, not the response: never stored with a
/// response (lowercase). Public for adapters outside tower (tollgate's Python middlewares), so
/// that every adapter stores the same fields.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

pub(super) fn to_stored(parts: &http::response::Parts, body: &Bytes) -> StoredResponse {
    let mut stored = StoredResponse::new(parts.status.as_u16(), body.to_vec());
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            stored = stored.with_header(name.as_str(), value.as_bytes().to_vec());
        }
    }
    stored
}

/// A stored response, replayed.
pub(super) fn replayed<R: From<Bytes>>(stored: StoredResponse) -> Response<R> {
    let mut response = Response::new(R::from(Bytes::from(stored.body)));
    *response.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    insert_header(&mut response, IDEMPOTENT_REPLAYED, "true");
    response
}

pub(super) fn insert_header<R>(response: &mut Response<R>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}

pub(super) fn store_error<R: From<Bytes>>(error: &Error) -> Response<R> {
    match error {
        Error::CapacityExceeded { .. } => {
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Idempotency store full",
                "no room for another idempotency record; retry later",
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            response
        }
        Error::InvalidKey(reason) => problem(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key is malformed",
            &reason.to_string(),
        ),
        other => unavailable("Idempotency store unavailable", other),
    }
}

/// Gives the key back (the handler failed, or its response is not to be stored).
async fn release(slot: LeaseSlot) {
    // A failed release leaves the key RUNNING until its lease expires; nothing better to do.
    let _ = blocking(move || match slot.take() {
        Some(lease) if !slot.is_lost() => lease.release(),
        _ => Ok(()),
    })
    .await;
}
