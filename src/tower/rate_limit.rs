//! [`RateLimitLayer`]: several limits per request, each with its own subject, checked and charged
//! all-or-nothing in one [`Store::check_all`].
//!
//! A payments API typically limits globally, per user, per client address and per endpoint at
//! once: each limit here takes its own subject function (the authenticated user, the client's
//! address, an API key), or none ([`RateLimitLayer::global_limit`]: one counter for every
//! request). A limit whose subject function says `None` does not apply to that request; a request
//! no limit applies to passes unlimited. Each request costs 1, or what
//! [`RateLimitLayer::cost`] says.
//!
//! Allowed requests reach the inner service and get the `RateLimit` header fields
//! (draft-ietf-httpapi-ratelimit-headers-10, plus the legacy `X-RateLimit-*`) on their response;
//! denied ones get 429 with `Retry-After` and the same fields, and never reach the inner service
//! (put this layer outside [`IdempotencyLayer`] so that a 429 is never stored as a request's
//! outcome). In shadow mode ([`RateLimitLayer::shadow`]) nothing is denied: the decision is taken,
//! counted and shown in the headers, and a request that would have been denied is counted as a
//! shadow denial and passed on.
//!
//! [`IdempotencyLayer`]: super::IdempotencyLayer

use std::fmt::Write as _;
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

type SubjectFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;
type CostFn = Arc<dyn Fn(&Parts) -> u32 + Send + Sync>;

/// Whose counter a request is charged to under one limit.
#[derive(Clone)]
enum Subject {
    /// The layer's shared key function ([`RateLimitLayer::key`]).
    Key,
    /// A function of the limit's own.
    Own(SubjectFn),
    /// A function of the limit's own whose `None` refuses the request.
    Required(SubjectFn),
    /// One counter for every request.
    Global,
}

/// The subject every request is counted under by a global limit
/// ([`RateLimitLayer::global_limit`]). Public for adapters outside tower (tollgate's Python
/// middlewares), so that a global counter is the same counter through every adapter.
pub const GLOBAL_SUBJECT: &str = "all";

#[derive(Clone)]
struct Rule {
    limit: Limit,
    subject: Subject,
    fields: FixedFields,
}

impl Rule {
    fn new(limit: Limit, subject: Subject) -> Self {
        let fields = FixedFields::of(&limit);
        Self {
            limit,
            subject,
            fields,
        }
    }
}

/// The header field values of a limit that are the same on every answer it decides, made once:
/// `RateLimit-Policy` and `X-RateLimit-Limit`, as [`Decision::headers`] writes them.
#[derive(Clone)]
struct FixedFields {
    /// The decision's `limit` and window (whole seconds, rounded up) these values are for.
    limit: u32,
    window: u64,
    policy: HeaderValue,
    limit_value: HeaderValue,
}

impl FixedFields {
    fn of(limit: &Limit) -> Self {
        let quota = u32::try_from(limit.spec.capacity()).unwrap_or(u32::MAX);
        let window = ceil_seconds(std::time::Duration::from_nanos(limit.spec.window()));
        let policy = format!("\"{}\";q={quota};w={window}", limit.name());
        Self {
            limit: quota,
            window,
            policy: HeaderValue::from_maybe_shared(Bytes::from(policy))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            limit_value: HeaderValue::from(quota),
        }
    }
}

fn ceil_seconds(duration: std::time::Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[derive(Clone)]
struct Config {
    store: Store,
    rules: Vec<Rule>,
    key: SubjectFn,
    key_required: bool,
    unidentified: StatusCode,
    cost: Option<CostFn>,
    shadow: bool,
    when_unavailable: WhenUnavailable,
}

/// What a [`RateLimitLayer`] does with a request when its counters cannot be reached (Redis or
/// PostgreSQL down or not answering in time, a store that cannot write): set with
/// [`RateLimitLayer::when_unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenUnavailable {
    /// Fail closed, the default: answer 503 with `Retry-After`. A limit that guards something
    /// worth guarding (logins, password resets, payments) must not open up exactly when its
    /// counters are gone, which is also when an attacker would want it; and with the store's
    /// circuit breaker the refusal is immediate, so failing closed costs no latency.
    #[default]
    FailClosed,
    /// Fail open: let the request through unlimited (without `RateLimit` fields). For limits that
    /// only shed load, where serving unlimited beats not serving.
    FailOpen,
}

impl Config {
    /// The `(rule, subject)` pairs that apply to a request, or `None` when a required subject
    /// found no identity (the request is refused).
    fn subjects(&self, parts: &Parts) -> Option<Vec<(usize, String)>> {
        let mut key: Option<Option<String>> = None;
        let mut subjects = Vec::with_capacity(self.rules.len());
        for (index, rule) in self.rules.iter().enumerate() {
            let (subject, required) = match &rule.subject {
                Subject::Key => (
                    key.get_or_insert_with(|| (self.key)(parts)).clone(),
                    self.key_required,
                ),
                Subject::Own(subject) => (subject(parts), false),
                Subject::Required(subject) => (subject(parts), true),
                Subject::Global => (Some(GLOBAL_SUBJECT.to_owned()), false),
            };
            match subject {
                Some(subject) => subjects.push((index, subject)),
                None if required => return None,
                None => {}
            }
        }
        Some(subjects)
    }

    fn checks<'a>(&'a self, subjects: &'a [(usize, String)]) -> Vec<(&'a Limit, &'a str)> {
        subjects
            .iter()
            .filter_map(|(index, subject)| Some((&self.rules.get(*index)?.limit, subject.as_str())))
            .collect()
    }
}

/// A tower layer that charges every request against one or several limits, all or nothing.
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
///
/// Limits with subjects of their own, a per-request cost, and shadow mode for a new limit:
///
/// ```
/// # #[cfg(feature = "tower")] {
/// use tollgate::Store;
/// use tollgate::ratelimit::{Limit, Quota};
/// use tollgate::tower::RateLimitLayer;
///
/// let store = Store::in_memory().unwrap();
/// let everyone = Limit::new("global", Quota::per_second(10_000)).unwrap();
/// let per_user = Limit::new("per-user", Quota::per_minute(600)).unwrap();
/// let per_route = Limit::new("per-route", Quota::per_second(500)).unwrap();
/// let layer = RateLimitLayer::new(store.clone(), [])
///     .global_limit(everyone)
///     .limit_by(per_user, |request| {
///         request.headers.get("x-user")?.to_str().ok().map(str::to_owned)
///     })
///     .limit_by(per_route, |request| Some(request.uri.path().to_owned()))
///     // Bulk exports cost 10 units of every limit.
///     .cost(|request| if request.uri.path() == "/export" { 10 } else { 1 });
/// // A limit being rolled out: decided, counted and shown in the headers, never enforced.
/// let trial = Limit::new("per-user-strict", Quota::per_minute(60)).unwrap();
/// let shadow = RateLimitLayer::new(store, [])
///     .limit_by(trial, |request| {
///         request.headers.get("x-user")?.to_str().ok().map(str::to_owned)
///     })
///     .shadow(true);
/// # let _ = (layer, shadow); }
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    config: Arc<Config>,
}

impl RateLimitLayer {
    /// Charges every request one unit against each of `limits`, all under one shared subject
    /// until [`RateLimitLayer::key`] says otherwise. More limits, with subjects of their own, come
    /// from [`RateLimitLayer::limit_by`] and [`RateLimitLayer::global_limit`].
    ///
    /// Limit names should be distinct within a layer: a counter is named by its limit's name and
    /// its subject, so two limits of one name count a shared subject on one counter.
    pub fn new(store: Store, limits: impl IntoIterator<Item = Limit>) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                rules: limits
                    .into_iter()
                    .map(|limit| Rule::new(limit, Subject::Key))
                    .collect(),
                key: Arc::new(|_| Some(GLOBAL_SUBJECT.to_owned())),
                key_required: false,
                unidentified: StatusCode::UNAUTHORIZED,
                cost: None,
                shadow: false,
                when_unavailable: WhenUnavailable::default(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The subject a request is counted under by the limits given to [`RateLimitLayer::new`];
    /// `None` lets the request through those limits unlimited. Default = one subject for every
    /// request.
    #[must_use]
    pub fn key(self, key: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.with(|c| c.key = Arc::new(key))
    }

    /// Adds `limit`, counted per `subject` (the authenticated user, the client's address, the
    /// route). A request for which `subject` says `None` is not limited by it.
    #[must_use]
    pub fn limit_by(
        self,
        limit: Limit,
        subject: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let subject = Subject::Own(Arc::new(subject));
        self.with(|c| c.rules.push(Rule::new(limit, subject)))
    }

    /// Whether a request for which [`RateLimitLayer::key`] says `None` is refused (401, or
    /// [`RateLimitLayer::unidentified`]) instead of passing the key's limits unlimited: for limits
    /// that must hold for everyone, such as per-user limits behind optional authentication.
    /// Default = not required (`None` passes those limits).
    #[must_use]
    pub fn key_required(self, required: bool) -> Self {
        self.with(|c| c.key_required = required)
    }

    /// Adds `limit`, counted per `subject`, which every request must have: a request for which
    /// `subject` says `None` is refused (401, or [`RateLimitLayer::unidentified`]) before any
    /// counter is charged, instead of passing unlimited.
    #[must_use]
    pub fn limit_by_required(
        self,
        limit: Limit,
        subject: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let subject = Subject::Required(Arc::new(subject));
        self.with(|c| c.rules.push(Rule::new(limit, subject)))
    }

    /// The status of the refusal of a request a required subject found no identity for. Default
    /// = 401 Unauthorized.
    #[must_use]
    pub fn unidentified(self, status: StatusCode) -> Self {
        self.with(|c| c.unidentified = status)
    }

    /// Adds `limit` with one counter for every request (a global ceiling).
    #[must_use]
    pub fn global_limit(self, limit: Limit) -> Self {
        self.with(|c| {
            c.rules.push(Rule::new(limit, Subject::Global));
        })
    }

    /// What a request costs, charged to every limit that applies to it. Default = 1. A cost of 0
    /// charges nothing (the answer reports the counters, as a peek does); a cost over a limit's
    /// burst could never be allowed and gets 429 without `Retry-After`.
    #[must_use]
    pub fn cost(self, cost: impl Fn(&Parts) -> u32 + Send + Sync + 'static) -> Self {
        self.with(|c| c.cost = Some(Arc::new(cost)))
    }

    /// Shadow (dry-run) mode: every request is decided, charged as it would be, counted in the
    /// metrics and given the `RateLimit` header fields, but none is denied. A request the limits
    /// would have denied passes on, and is counted as `tollgate_rate_shadow_denials_total` (and
    /// a `rate_shadow_denied` event); one the store cannot decide (an error) passes on too. For
    /// rolling a limit out safely, as nginx's `limit_req_dry_run` and Envoy's shadow mode do.
    /// Default = off (limits are enforced).
    #[must_use]
    pub fn shadow(self, shadow: bool) -> Self {
        self.with(|c| c.shadow = shadow)
    }
}

impl RateLimitLayer {
    /// What to do with a request when the counters cannot be reached or cannot count (the
    /// store answers [`Error::Unavailable`], [`Error::InDoubt`], or cannot write): fail closed
    /// (503, the default) or fail open (let it through). Each such decision is counted as
    /// `tollgate_rate_unavailable_total{decision}` and logged as a `rate_unavailable` event.
    /// Other errors (a bad subject, a check across Redis Cluster slots) are answered 500 either
    /// way: they are bugs to fix, not outages to ride out.
    #[must_use]
    pub fn when_unavailable(self, policy: WhenUnavailable) -> Self {
        self.with(|c| c.when_unavailable = policy)
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
            let Some(subjects) = config.subjects(&parts) else {
                return Ok(problem(
                    config.unidentified,
                    "Caller not identified",
                    "this endpoint's limits need an identified caller",
                ));
            };
            if subjects.is_empty() {
                return inner.call(Request::from_parts(parts, body)).await;
            }
            let cost = config.cost.as_ref().map_or(1, |cost| cost(&parts));
            let checked = check(&config, subjects, cost).await;
            let decision = match checked {
                Ok(decision) => decision,
                Err(_) if config.shadow => {
                    // A dry run never takes the service down with its limiter.
                    return inner.call(Request::from_parts(parts, body)).await;
                }
                Err(Error::CostTooLarge { cost, limit }) => {
                    return Ok(problem(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Request too costly",
                        &format!(
                            "this request costs {cost}, more than a limit allows at once ({limit})"
                        ),
                    ));
                }
                Err(error) if super::problem::is_temporary(&error) => {
                    let open = config.when_unavailable == WhenUnavailable::FailOpen;
                    crate::observe::rate_unavailable(open, &error);
                    if open {
                        return inner.call(Request::from_parts(parts, body)).await;
                    }
                    return Ok(unavailable("Rate limiter unavailable", &error));
                }
                Err(error) => return Ok(unavailable("Rate limiter failed", &error)),
            };
            let shadow_denied = !decision.allowed() && config.shadow;
            if !decision.allowed() {
                if shadow_denied {
                    crate::observe::rate_shadow_denied(&decision);
                } else {
                    let mut response = problem(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Too many requests",
                        &format!("the {} limit is exhausted; retry later", decision.policy()),
                    );
                    add_headers(&mut response, &decision, true, &config.rules);
                    return Ok(response);
                }
            }
            let mut response = inner.call(Request::from_parts(parts, body)).await?;
            // A request shadow mode let through was not refused: no `Retry-After` on its answer.
            add_headers(&mut response, &decision, !shadow_denied, &config.rules);
            Ok(response)
        })
    }
}

/// Charges `cost` to every `(limit, subject)` of `subjects`, all or nothing. A check memory can
/// answer (Batched counters in the cache) is answered here, on the async worker; one that needs
/// I/O (Immediate mode waits for an fsync) runs on a blocking thread.
async fn check(
    config: &Arc<Config>,
    subjects: Vec<(usize, String)>,
    cost: u32,
) -> crate::Result<Decision> {
    if let Some(decision) = config
        .store
        .try_check_all(&config.checks(&subjects), cost)?
    {
        return Ok(decision);
    }
    let config = Arc::clone(config);
    tokio::task::spawn_blocking(move || config.store.check_all(&config.checks(&subjects), cost))
        .await
        .unwrap_or(Err(Error::Poisoned))
}

/// Writes `decision`'s header fields (those of [`Decision::headers`]) into `response`; with
/// `retry_after` false, not its `Retry-After`.
fn add_headers<R>(
    response: &mut Response<R>,
    decision: &Decision,
    retry_after: bool,
    rules: &[Rule],
) {
    let headers = response.headers_mut();
    let fixed = rules
        .iter()
        .find(|rule| rule.limit.name() == decision.policy())
        .map(|rule| &rule.fields)
        .filter(|fields| {
            fields.limit == decision.limit() && fields.window == ceil_seconds(decision.window)
        });
    if let (Some(fixed), None) = (fixed, decision.retry_after()) {
        // The common answer, allowed: the fixed values are shared, the others written directly.
        let reset = ceil_seconds(decision.reset_after());
        let mut current = String::with_capacity(decision.policy().len() + 24);
        let _ = write!(
            current,
            "\"{}\";r={};t={reset}",
            decision.policy(),
            decision.remaining()
        );
        headers.reserve(5);
        headers.insert(
            HeaderName::from_static("ratelimit-policy"),
            fixed.policy.clone(),
        );
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(current)) {
            headers.insert(HeaderName::from_static("ratelimit"), value);
        }
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit"),
            fixed.limit_value.clone(),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(decision.remaining()),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(reset),
        );
        return;
    }
    let fields = decision.headers();
    headers.reserve(fields.len());
    for (name, value) in fields {
        if name == "Retry-After" && !retry_after {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(Bytes::from(value)),
        ) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{Quota, RateDurability};
    use std::time::Duration;

    /// The fields as `Decision::headers` gives them, lowercased, in order.
    fn reference(decision: &Decision, retry_after: bool) -> Vec<(String, String)> {
        decision
            .headers()
            .into_iter()
            .filter(|(name, _)| retry_after || *name != "Retry-After")
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect()
    }

    fn written(decision: &Decision, retry_after: bool, rules: &[Rule]) -> Vec<(String, String)> {
        let mut response = Response::new(());
        add_headers(&mut response, decision, retry_after, rules);
        let mut fields: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let order = reference(decision, true);
        fields.sort_by_key(|(name, _)| order.iter().position(|(n, _)| n == name));
        fields
    }

    #[test]
    fn the_fields_written_are_those_decision_headers_gives() {
        let store = Store::builder()
            .rate_durability(RateDurability::Immediate)
            .open_in_memory()
            .unwrap();
        let limits = [
            Limit::new("per-second", Quota::per_second(3)).unwrap(),
            Limit::new(
                "window",
                Quota::fixed_window(5, Duration::from_millis(1500)),
            )
            .unwrap(),
            Limit::new("sliding", Quota::sliding_window(2, Duration::from_secs(60))).unwrap(),
        ];
        let rules: Vec<Rule> = limits
            .iter()
            .map(|limit| Rule::new(limit.clone(), Subject::Global))
            .collect();
        for limit in &limits {
            for _ in 0..7 {
                let decision = store.check(limit, "s").unwrap();
                for retry_after in [true, false] {
                    assert_eq!(
                        written(&decision, retry_after, &rules),
                        reference(&decision, retry_after),
                        "{decision:?}"
                    );
                }
                // A rule list that does not hold the deciding limit: the same fields.
                assert_eq!(written(&decision, true, &[]), reference(&decision, true));
            }
        }
        store.close().unwrap();
    }

    #[test]
    fn fixed_fields_are_taken_only_from_the_rule_of_the_deciding_limit() {
        // The fields made once per rule are shared only with a decision of that very limit: same
        // name, same quota, same window. Otherwise the fields are written from the decision.
        let store = Store::builder()
            .rate_durability(RateDurability::Immediate)
            .open_in_memory()
            .unwrap();
        let minute = Duration::from_secs(60);
        let deciding = Limit::new("api", Quota::fixed_window(5, minute)).unwrap();
        let others = [
            // Another name, the same quota and window.
            Limit::new("other", Quota::fixed_window(5, minute)).unwrap(),
            // The same name and window, another quota.
            Limit::new("api", Quota::fixed_window(7, minute)).unwrap(),
            // The same name and quota, another window.
            Limit::new("api", Quota::fixed_window(5, Duration::from_secs(30))).unwrap(),
        ];
        let decision = store.check(&deciding, "s").unwrap();
        for other in &others {
            let rules = [Rule::new(other.clone(), Subject::Global)];
            assert_eq!(
                written(&decision, false, &rules),
                reference(&decision, false),
                "a rule of {other:?}"
            );
        }
        // And with the deciding limit's own rule after another: its fields, shared.
        let rules = [
            Rule::new(others[0].clone(), Subject::Global),
            Rule::new(deciding.clone(), Subject::Global),
        ];
        assert_eq!(
            written(&decision, false, &rules),
            reference(&decision, false)
        );
        store.close().unwrap();
    }

    /// An inner service that counts its calls and is ready only once `ready` is set.
    #[derive(Clone)]
    struct Inner {
        ready: Arc<std::sync::atomic::AtomicBool>,
        calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Inner {
        fn new(ready: bool) -> Self {
            Self {
                ready: Arc::new(std::sync::atomic::AtomicBool::new(ready)),
                calls: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            }
        }
    }

    impl tower_service::Service<Request<String>> for Inner {
        type Response = Response<Bytes>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<Bytes>, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.ready.load(std::sync::atomic::Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, _: Request<String>) -> Self::Future {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(Response::new(Bytes::from_static(b"served"))))
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    #[test]
    fn the_layer_is_ready_only_when_its_service_is() {
        let store = Store::in_memory().unwrap();
        let limit = Limit::new("api", Quota::per_second(10)).unwrap();
        let inner = Inner::new(false);
        let mut service =
            tower_layer::Layer::layer(&RateLimitLayer::new(store, [limit]), inner.clone());
        let waker = std::task::Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut ready = |service: &mut RateLimit<Inner>| {
            tower_service::Service::<Request<String>>::poll_ready(service, &mut context)
        };
        assert!(ready(&mut service).is_pending());
        inner.ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(ready(&mut service), Poll::Ready(Ok(()))));
    }

    #[test]
    fn a_lasting_store_failure_is_a_500_even_when_failing_open() {
        // Failing open is for counters out of reach; a store that is closed (or damaged) is not
        // that: the request is answered 500 and does not reach the service unlimited.
        let store = Store::in_memory().unwrap();
        let limit = Limit::new("api", Quota::per_second(10)).unwrap();
        let inner = Inner::new(true);
        let layer =
            RateLimitLayer::new(store.clone(), [limit]).when_unavailable(WhenUnavailable::FailOpen);
        let mut service = tower_layer::Layer::layer(&layer, inner.clone());
        store.close().unwrap();
        let response = block_on(tower_service::Service::call(
            &mut service,
            Request::new(String::new()),
        ))
        .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = String::from_utf8_lossy(response.body());
        assert!(body.contains("Rate limiter failed"), "{body}");
        assert_eq!(inner.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
