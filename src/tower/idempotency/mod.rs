//! [`IdempotencyLayer`]: the `Idempotency-Key` protocol around any tower service.
//!
//! For a request whose method (and route) is covered:
//! 1. no key where one is required, or a malformed key: 400, before any state;
//! 2. a body over `max_body_bytes`: 413, before any state;
//! 3. `begin` on the store: a replay answers with the stored status, headers and body plus
//!    `Idempotent-Replayed: true`; a request in flight gets 409 with `Retry-After: 1`, a poll
//!    hint (or waits, if configured); the same key with a different request (method, path with query, body, and the
//!    header fields named in [`IdempotencyLayer::fingerprint_headers`]) gets 422. A replay the
//!    replay cache holds is answered on the async worker ([`Store::try_begin`]); a begin that
//!    reads the disk or the network, or writes, runs in `spawn_blocking`;
//! 4. otherwise the inner service runs, as its own task (a client that disconnects does not cancel
//!    a side effect half-way, nor the storing of its response), with an [`IdempotencyContext`] in
//!    the request's extensions. The lease is extended every third of the store's `lease_ttl`
//!    while the handler runs, so a slow handler is never taken over by a retry; a process that
//!    dies stops extending, and its lease lapses on time. The response is stored if the policy
//!    says so (default: 2xx–4xx), else the key is released so the client may retry (default:
//!    5xx). A handler that panics releases the key and answers 500. A handler whose lease was
//!    found lost (taken over after the process stalled past it) still answers its client, but
//!    its response is not stored (logged, and counted in `tollgate_http_leases_lost_total`).
//!
//! Responses over the store's `max_response_bytes` are returned but not stored (the key is
//! released). Hop-by-hop header fields are not stored.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};

use super::key_header;
use super::problem::problem;
use crate::idempotency::{Begin, Fingerprint, IdempotencyKey};
use crate::{BeginOptions, Error, Store};

mod context;
mod execute;

pub use context::IdempotencyContext;
pub use execute::HOP_BY_HOP;
use execute::{IN_FLIGHT_RETRY_AFTER, execute, insert_header, replayed, store_error};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Predicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;
type ScopeFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;
type StatusPolicy = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

/// The header a replayed response carries.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Default limit on a request body read to fingerprint it: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct Config {
    store: Store,
    methods: Vec<Method>,
    routes: Option<Predicate>,
    key_required: bool,
    scope: ScopeFn,
    unidentified: StatusCode,
    max_body_bytes: usize,
    wait: Option<Duration>,
    store_status: StatusPolicy,
    fingerprint: FingerprintRule,
}

/// What of a request goes into its fingerprint besides the method, path and body.
#[derive(Clone, Default)]
struct FingerprintRule {
    /// Request header fields (lowercase names) whose values are part of the request's meaning.
    headers: Vec<HeaderName>,
    /// Query parameters as a sorted set of pairs, instead of the query string as sent.
    ignore_query_order: bool,
}

/// What a scope function returns: a key space, or (`None`) no identity, which is refused.
pub trait IntoScope {
    /// The key space, or `None` when the request has no identity.
    fn into_scope(self) -> Option<String>;
}

impl IntoScope for String {
    fn into_scope(self) -> Option<String> {
        Some(self)
    }
}

impl IntoScope for Option<String> {
    fn into_scope(self) -> Option<String> {
        self
    }
}

impl IntoScope for &'static str {
    fn into_scope(self) -> Option<String> {
        Some(self.to_owned())
    }
}

/// A tower layer that makes covered requests idempotent under an `Idempotency-Key`.
///
/// ```
/// # #[cfg(feature = "tower")] {
/// use http::Method;
/// use tollgate::Store;
/// use tollgate::tower::IdempotencyLayer;
///
/// let store = Store::in_memory().unwrap(); // in production: Store::open(path)
/// let layer = IdempotencyLayer::new(store)
///     .methods([Method::POST, Method::PUT])
///     .scope(|request| {
///         // One key space per authenticated caller; a request without one is refused (401).
///         request.headers.get("x-user")?.to_str().ok().map(str::to_owned)
///     });
/// # let _ = layer; }
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

impl IdempotencyLayer {
    /// Covers POST and PATCH on every route, requires a key for them, one scope for all callers,
    /// request bodies up to 1 MiB, no waiting for in-flight duplicates, and stores 2xx–4xx.
    pub fn new(store: Store) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                methods: vec![Method::POST, Method::PATCH],
                routes: None,
                key_required: true,
                scope: Arc::new(|_| Some("default".to_owned())),
                unidentified: StatusCode::UNAUTHORIZED,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                wait: None,
                store_status: Arc::new(|status| status.as_u16() < 500),
                fingerprint: FingerprintRule::default(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The methods covered. Default = POST and PATCH (PUT and DELETE are idempotent by
    /// definition, but opt in if their effects are not).
    #[must_use]
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// Only requests for which `covered` returns true (e.g. by path) are handled; others pass
    /// through. Default = every route.
    #[must_use]
    pub fn routes(self, covered: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.with(|c| c.routes = Some(Arc::new(covered)))
    }

    /// Whether a covered request without a key is refused (400) or passed through. Default =
    /// refused.
    #[must_use]
    pub fn key_required(self, required: bool) -> Self {
        self.with(|c| c.key_required = required)
    }

    /// The key space of a request, e.g. the authenticated user, so that two callers' keys never
    /// collide. `scope` returns a `String`, or an `Option<String>` whose `None` says the request
    /// has no identity: such a request is refused (401, or [`IdempotencyLayer::unidentified`])
    /// before any state, instead of sharing one key space with every other caller without one.
    /// Default = one scope for everyone.
    ///
    /// ```
    /// # #[cfg(feature = "tower")] {
    /// use tollgate::Store;
    /// use tollgate::tower::IdempotencyLayer;
    ///
    /// let layer = IdempotencyLayer::new(Store::in_memory().unwrap()).scope(|request| {
    ///     // No (readable) user header: no identity, 401. Never `unwrap_or_default()` here.
    ///     request.headers.get("x-user")?.to_str().ok().map(str::to_owned)
    /// });
    /// # let _ = layer; }
    /// ```
    #[must_use]
    pub fn scope<T: IntoScope>(self, scope: impl Fn(&Parts) -> T + Send + Sync + 'static) -> Self {
        self.with(|c| c.scope = Arc::new(move |parts| scope(parts).into_scope()))
    }

    /// The status of the refusal of a covered request whose [`scope`](IdempotencyLayer::scope)
    /// found no identity. Default = 401 Unauthorized.
    #[must_use]
    pub fn unidentified(self, status: StatusCode) -> Self {
        self.with(|c| c.unidentified = status)
    }

    /// The largest request body read (to fingerprint it); larger ones get 413 before any state.
    /// Default = 1 MiB.
    #[must_use]
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.with(|c| c.max_body_bytes = bytes)
    }

    /// Wait up to `timeout` for an in-flight duplicate to finish and replay its response, instead
    /// of answering 409 at once. Default = no waiting.
    #[must_use]
    pub fn wait_for_in_flight(self, timeout: Duration) -> Self {
        self.with(|c| c.wait = Some(timeout))
    }

    /// Request header fields that are part of a request's meaning (`Content-Type`, an API
    /// version, a tenant), included in its fingerprint: a retry that sends other values for them
    /// is a different request (422). Names are case-insensitive; a name that is not a valid
    /// header name is ignored. Default = none (the method, the path with its query, and the body).
    #[must_use]
    pub fn fingerprint_headers<I>(self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let headers = names
            .into_iter()
            .filter_map(|name| HeaderName::from_bytes(name.as_ref().as_bytes()).ok())
            .collect();
        self.with(|c| c.fingerprint.headers = headers)
    }

    /// Whether query strings that differ only in the order of their parameters are the same
    /// request: `?a=1&b=2` and `?b=2&a=1` (and, as [`Fingerprint::request`]'s pairs are compared
    /// as a set, `?a=1&a=2` and `?a=2&a=1`). Parameters are compared as sent, without decoding.
    /// Default = off: the query string is compared as sent, byte for byte (turning this on changes
    /// the fingerprint of requests with a query, so a retry that spans the change is refused with
    /// 422).
    #[must_use]
    pub fn ignore_query_order(self, ignore: bool) -> Self {
        self.with(|c| c.fingerprint.ignore_query_order = ignore)
    }

    /// Which response statuses are stored (and replayed); for the others the key is released, so
    /// the client may retry. Default = below 500.
    #[must_use]
    pub fn store_when(self, policy: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        self.with(|c| c.store_status = Arc::new(policy))
    }
}

impl<S> tower_layer::Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, B, R> tower_service::Service<Request<B>> for Idempotency<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    R: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = super::take_ready(&mut self.inner);
        let config = Arc::clone(&self.config);
        Box::pin(handle(config, inner, request))
    }
}

async fn handle<S, B, R>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<B>,
) -> Result<Response<R>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    R: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let covered = config.methods.contains(&parts.method)
        && config.routes.as_ref().is_none_or(|covered| covered(&parts));
    if !covered {
        return inner.call(Request::from_parts(parts, body)).await;
    }
    let raw_key = match key_header::read(&parts.headers) {
        Ok(Some(key)) => key,
        Ok(None) if config.key_required => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key is missing",
                "this endpoint requires an Idempotency-Key header",
            ));
        }
        Ok(None) => return inner.call(Request::from_parts(parts, body)).await,
        Err(reason) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key is malformed",
                &reason,
            ));
        }
    };
    let key = match scoped_key(&config, &parts, &raw_key) {
        Ok(key) => key,
        Err(refusal) => return Ok(refusal),
    };
    let body = match Limited::new(body, config.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return Ok(if error.is::<http_body_util::LengthLimitError>() {
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large",
                    &format!("bodies up to {} bytes are accepted", config.max_body_bytes),
                )
            } else {
                problem(
                    StatusCode::BAD_REQUEST,
                    "Unreadable request body",
                    "the request body could not be read",
                )
            });
        }
    };
    let fingerprint = fingerprint(&config.fingerprint, &parts, &body);
    let options = BeginOptions {
        wait: config.wait,
        ..BeginOptions::default()
    };
    // Fast path: a replay (or a mismatch) the replay cache can answer is answered here, on the
    // async worker; a begin that reads the disk, writes or waits goes to a blocking thread.
    let begun = match config.store.try_begin(&key, &fingerprint, &options) {
        Ok(Some(begun)) => Ok(begun),
        Err(error) => Err(error),
        Ok(None) => {
            let store = config.store.clone();
            blocking(move || store.begin_with(&key, &fingerprint, &options)).await
        }
    };
    let lease = match begun {
        Ok(Begin::Acquired(lease)) => lease,
        Ok(Begin::Replay(replay)) => return Ok(replayed(replay.into_response())),
        Ok(Begin::InFlight { .. }) => {
            // A poll hint, not the lease's remaining time: the lease is kept alive while its
            // handler runs, and a client told to come back when it would lapse would come back
            // at the worst moment, or much later than the answer is ready.
            let mut response = problem(
                StatusCode::CONFLICT,
                "Request in progress",
                "a request with this Idempotency-Key is being processed; retry later",
            );
            insert_header(&mut response, "retry-after", IN_FLIGHT_RETRY_AFTER);
            return Ok(response);
        }
        Ok(Begin::Mismatch) => {
            return Ok(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key reused",
                "this Idempotency-Key was used for a different request",
            ));
        }
        Err(error) => return Ok(store_error(&error)),
    };
    // The execution and the recording of its outcome run as one task: a client that goes away
    // cancels neither the side effect half-way nor the storing of its response.
    let running = tokio::spawn(execute(config, inner, parts, body, lease));
    match running.await {
        Ok(result) => result,
        Err(_) => Ok(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Handler failed",
            "the request failed before producing a response; it may be retried",
        )),
    }
}

/// The request's key in its caller's scope, or the refusal when the scope finds no identity or
/// the key is not valid.
fn scoped_key<R: From<Bytes>>(
    config: &Config,
    parts: &Parts,
    raw_key: &str,
) -> Result<IdempotencyKey, Response<R>> {
    let Some(scope) = (config.scope)(parts) else {
        return Err(problem(
            config.unidentified,
            "Caller not identified",
            "this endpoint needs an identified caller for its Idempotency-Key",
        ));
    };
    IdempotencyKey::new(&scope, raw_key).map_err(|reason| {
        problem(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key is malformed",
            &reason.to_string(),
        )
    })
}

/// The request's fingerprint: method, path with query, the chosen header fields, and body.
fn fingerprint(rule: &FingerprintRule, parts: &Parts, body: &[u8]) -> Fingerprint {
    let mut fingerprint = Fingerprint::request().method(parts.method.as_str());
    if rule.ignore_query_order {
        fingerprint = fingerprint.path(parts.uri.path());
        for pair in parts.uri.query().unwrap_or("").split('&') {
            if !pair.is_empty() {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                fingerprint = fingerprint.query(name, value);
            }
        }
    } else {
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), http::uri::PathAndQuery::as_str);
        fingerprint = fingerprint.path(path);
    }
    for name in &rule.headers {
        for value in parts.headers.get_all(name) {
            fingerprint = fingerprint.header(name.as_str(), value.as_bytes());
        }
    }
    fingerprint.body(body).finish()
}

/// Runs a store call that may wait on an fsync off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or(Err(Error::Poisoned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An inner service ready only once `ready` is set.
    #[derive(Clone)]
    struct Gated(Arc<AtomicBool>);

    impl tower_service::Service<Request<Full<Bytes>>> for Gated {
        type Response = Response<Full<Bytes>>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
        }
    }

    #[test]
    fn the_layer_is_ready_only_when_its_service_is() {
        let ready = Arc::new(AtomicBool::new(false));
        let layer = IdempotencyLayer::new(Store::in_memory().unwrap());
        let mut service = tower_layer::Layer::layer(&layer, Gated(Arc::clone(&ready)));
        let mut context = Context::from_waker(std::task::Waker::noop());
        let mut poll = |service: &mut Idempotency<Gated>| {
            tower_service::Service::<Request<Full<Bytes>>>::poll_ready(service, &mut context)
        };
        assert!(poll(&mut service).is_pending());
        ready.store(true, Ordering::SeqCst);
        assert!(matches!(poll(&mut service), Poll::Ready(Ok(()))));
    }
}
