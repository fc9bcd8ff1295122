//! [`RateLimitLayer`]: one or several limits checked all-or-nothing per request.
//!
//! The subject of a request comes from a key function (the client's address, the authenticated
//! user, an API key); a request without one passes unlimited. Allowed requests reach the inner
//! service and get the `RateLimit` header fields (draft-ietf-httpapi-ratelimit-headers-10, plus the
//! legacy `X-RateLimit-*`) on their response; denied ones get 429 with `Retry-After` and the same
//! fields, and never reach the inner service (put this layer outside [`IdempotencyLayer`] so that a
//! 429 is never stored as a request's outcome).
//!
//! [`IdempotencyLayer`]: super::IdempotencyLayer

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};

use super::problem::{problem, unavailable};
use crate::ratelimit::{Decision, Limit};
use crate::{Error, Store};

type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

#[derive(Clone)]
struct Config {
    store: Store,
    limits: Vec<Limit>,
    key: KeyFn,
}

/// A tower layer that charges every request against one or several limits.
///
/// ```
/// # #[cfg(feature = "tower")] {
/// use tollgate::Store;
/// use tollgate::ratelimit::{Limit, Quota};
/// use tollgate::tower::RateLimitLayer;
///
/// let store = Store::in_memory().unwrap(); // in production: Store::open(path)
/// let burst = Limit::new("burst", Quota::per_second(5)).unwrap();
/// let hourly = Limit::new("hourly", Quota::per_hour(1000)).unwrap();
/// let layer = RateLimitLayer::new(store, [burst, hourly]).key(|request| {
///     request.headers.get("x-api-key")?.to_str().ok().map(str::to_owned)
/// });
/// # let _ = layer; }
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl RateLimitLayer {
    /// Charges every request one unit against each of `limits`, all under one shared subject
    /// until [`RateLimitLayer::key`] says otherwise.
    pub fn new(store: Store, limits: impl IntoIterator<Item = Limit>) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                limits: limits.into_iter().collect(),
                key: Arc::new(|_| Some("all".to_owned())),
            }),
        }
    }

    /// The subject a request is counted under; `None` lets the request through unlimited.
    #[must_use]
    pub fn key(mut self, key: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        Arc::make_mut(&mut self.config).key = Arc::new(key);
        self
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B, R> tower_service::Service<Request<B>> for RateLimit<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: From<Bytes> + Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut inner = super::take_ready(&mut self.inner);
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let subject = (config.key)(&parts).filter(|_| !config.limits.is_empty());
            let Some(subject) = subject else {
                return inner.call(Request::from_parts(parts, body)).await;
            };
            let checked = {
                let config = Arc::clone(&config);
                // Immediate mode waits for an fsync: keep it off the async workers.
                tokio::task::spawn_blocking(move || {
                    let checks: Vec<(&Limit, &str)> = config
                        .limits
                        .iter()
                        .map(|limit| (limit, subject.as_str()))
                        .collect();
                    config.store.check_all(&checks, 1)
                })
                .await
                .unwrap_or(Err(Error::Poisoned))
            };
            let decision = match checked {
                Ok(decision) => decision,
                Err(error) => return Ok(unavailable("Rate limiter unavailable", &error)),
            };
            if !decision.allowed() {
                let mut response = problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests",
                    &format!("the {} limit is exhausted; retry later", decision.policy()),
                );
                add_headers(&mut response, &decision);
                return Ok(response);
            }
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            add_headers(&mut response, &decision);
            Ok(response)
        })
    }
}

fn add_headers<R>(response: &mut Response<R>, decision: &Decision) {
    for (name, value) in decision.headers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
}
