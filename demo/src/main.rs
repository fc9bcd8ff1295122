//! A small payments API on 127.0.0.1, made idempotent and rate-limited by tollgate's tower layers,
//! with a health check and Prometheus metrics.
//!
//! ```text
//! cargo run -p tollgate-demo              # http://127.0.0.1:3000
//! PORT=3001 cargo run -p tollgate-demo
//! ```
//!
//! - Callers authenticate with a bearer token: `Authorization: Bearer alice-token` is user `alice`,
//!   `bob-token` is `bob` (or the `user=token` pairs of `TOLLGATE_DEMO_TOKENS`, comma-separated).
//!   `/payments` without a known token is 401.
//! - `POST /payments` with `{"amount": 1000, "currency": "eur"}` and an `Idempotency-Key` creates
//!   a payment (201). A retry with the same key replays it; the same key with another body is 422;
//!   a retry while the first is still running is 409. Keys are scoped by user: Alice's key
//!   `order-1` and Bob's `order-1` are two requests, never one response shared between two callers.
//! - `GET /payments/{id}` shows one.
//! - Limits, all checked together: 5 requests per 10 seconds per user, 20 per 10 seconds per
//!   client address, 1000 per second for the whole server (429 after that).
//! - `GET /health`: 200 when the store is ready, 503 with the reason when it is not (closed,
//!   failed, its database unreachable); `GET /health/live`: 200 while the process answers.
//! - `GET /metrics`: Prometheus text format (`metrics-exporter-prometheus`): tollgate's counters
//!   (begins by outcome, rate decisions, resolutions) and histograms (commit latency).
//!
//! State lives in the working directory: `tollgate-server.redb` (the idempotency records and rate
//! counters) and `tollgate-payments.jsonl` (the payments, one JSON line each, fsync'd before the
//! answer). Stop the server and start it again: retries still replay.
//!
//! Many servers, one truth (feature `postgres`): with `TOLLGATE_POSTGRES` set to a connection
//! string, the records and counters live in PostgreSQL instead, shared by every server started
//! that way; each is a node named `demo-PORT` (or `TOLLGATE_NODE_ID`). A payment made through
//! one server is replayed by the other:
//!
//! ```text
//! TOLLGATE_POSTGRES="host=127.0.0.1 user=postgres" PORT=3000 cargo run -p tollgate-demo --features postgres
//! TOLLGATE_POSTGRES="host=127.0.0.1 user=postgres" PORT=3001 cargo run -p tollgate-demo --features postgres
//! ```
//!
//! The integration tests build this file as a module (`tests/it/demo_server.rs`) and drive
//! [`app`] over real HTTP.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Extension, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use tollgate::ratelimit::{Limit, Quota};
use tollgate::tower::{IdempotencyContext, IdempotencyLayer, RateLimitLayer};
use tollgate::{HealthWatch, Store};

const STORE_FILE: &str = "tollgate-server.redb";
const PAYMENTS_FILE: &str = "tollgate-payments.jsonl";
/// How often `/health`'s answer is refreshed (by a thread of the store's health watch).
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The payments, in memory and in an append-only file.
pub struct Payments {
    by_id: Mutex<HashMap<String, Value>>,
    file: Mutex<std::fs::File>,
}

impl Payments {
    /// The payments in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let mut by_id = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                if let Ok(payment) = serde_json::from_str::<Value>(line) {
                    if let Some(id) = payment["id"].as_str() {
                        by_id.insert(id.to_owned(), payment.clone());
                    }
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            by_id: Mutex::new(by_id),
            file: Mutex::new(file),
        })
    }

    /// Records a payment durably (the side effect the idempotency key protects).
    fn create(&self, amount: i64, currency: &str) -> std::io::Result<Value> {
        let mut by_id = self
            .by_id
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        let payment = json!({
            "id": format!("pay_{}", by_id.len() + 1),
            "amount": amount,
            "currency": currency,
            "status": "succeeded",
        });
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        writeln!(file, "{payment}")?;
        file.sync_data()?;
        by_id.insert(
            payment["id"].as_str().unwrap_or_default().to_owned(),
            payment.clone(),
        );
        Ok(payment)
    }
}

async fn create_payment(
    State(payments): State<Arc<Payments>>,
    Extension(context): Extension<IdempotencyContext>,
    Json(request): Json<Value>,
) -> impl IntoResponse {
    let (Some(amount), Some(currency)) = (request["amount"].as_i64(), request["currency"].as_str())
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "amount (integer) and currency (string) are required"})),
        );
    };
    if context.recovered {
        // A real service would look for the payment the crashed attempt may have made, using
        // `context.checkpoint`; this demo writes the payment in one step, so it just goes on.
        eprintln!("recovering attempt {} of a request", context.attempt);
    }
    match payments.create(amount, currency) {
        Ok(payment) => (StatusCode::CREATED, Json(payment)),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": error.to_string()})),
        ),
    }
}

async fn get_payment(
    State(payments): State<Arc<Payments>>,
    Path(id): Path<String>,
) -> impl IntoResponse {
    let found = payments
        .by_id
        .lock()
        .ok()
        .and_then(|by_id| by_id.get(&id).cloned());
    match found {
        Some(payment) => (StatusCode::OK, Json(payment)),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such payment"})),
        ),
    }
}

/// An authenticated caller, from its bearer token.
#[derive(Debug, Clone)]
pub struct User(pub String);

/// Bearer tokens and the users they stand for.
pub struct Tokens(HashMap<String, String>);

impl Tokens {
    /// `TOLLGATE_DEMO_TOKENS` (`user=token,user=token`), else `alice-token` and `bob-token`.
    pub fn from_env() -> Self {
        let pairs = std::env::var("TOLLGATE_DEMO_TOKENS")
            .unwrap_or_else(|_| "alice=alice-token,bob=bob-token".to_owned());
        Self(
            pairs
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(user, token)| (token.trim().to_owned(), user.trim().to_owned()))
                .collect(),
        )
    }

    fn user(&self, authorization: Option<&str>) -> Option<User> {
        let token = authorization?.strip_prefix("Bearer ")?;
        self.0.get(token.trim()).cloned().map(User)
    }
}

/// Refuses a request without a known bearer token (401); gives the others their [`User`].
async fn authenticate(
    State(tokens): State<Arc<Tokens>>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let Some(user) = tokens.user(authorization) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "a bearer token is required"})),
        )
            .into_response();
    };
    request.extensions_mut().insert(user);
    next.run(request).await
}

/// The user a request authenticated as (the authentication layer runs first).
fn user_of(request: &axum::http::request::Parts) -> Option<String> {
    request.extensions.get::<User>().map(|user| user.0.clone())
}

/// `GET /health`: the store's readiness (a round trip to the database on PostgreSQL, so off the
/// async workers).
async fn health(State(watch): State<Arc<HealthWatch>>) -> impl IntoResponse {
    // Read from memory: the watch's thread asks the store (which may wait for PostgreSQL) every
    // second, so this handler never blocks the runtime.
    let health = watch.latest();
    let (ready, health) = (health.is_ready(), health.to_string());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"live": true, "ready": ready, "store": health})),
    )
}

/// `GET /metrics`: every metric recorded so far, in the Prometheus text format.
async fn metrics_text(State(handle): State<PrometheusHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

/// Installs the process's Prometheus recorder (once per process: the `metrics` facade has one
/// global recorder), with tollgate's commit latency as a histogram, and keeps it tidy.
pub fn install_metrics() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tollgate_commit_seconds".to_owned()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
            ],
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })?;
    Ok(handle)
}

/// The payments API with authentication, rate limits and idempotency, plus `/health` and
/// `/metrics`, over `store`.
pub fn app(
    store: &Store,
    payments: Arc<Payments>,
    tokens: Tokens,
    metrics: PrometheusHandle,
) -> Router {
    let per_user =
        Limit::new("per-user", Quota::new(5, Duration::from_secs(10))).expect("a valid limit");
    let per_address =
        Limit::new("per-address", Quota::new(20, Duration::from_secs(10))).expect("a valid limit");
    let server = Limit::new("server", Quota::per_second(1000)).expect("a valid limit");
    let api = Router::new()
        .route("/payments", post(create_payment))
        .route("/payments/{id}", get(get_payment))
        .with_state(payments)
        // Innermost: one key space per user, so that two callers never share a response.
        .layer(
            IdempotencyLayer::new(store.clone())
                // No user: refused with 401, never one key space shared by every such caller.
                .scope(user_of),
        )
        .layer(
            RateLimitLayer::new(store.clone(), [])
                .limit_by_required(per_user, user_of)
                .limit_by(per_address, |request| {
                    let ConnectInfo(address) =
                        request.extensions.get::<ConnectInfo<SocketAddr>>()?;
                    Some(address.ip().to_string())
                })
                .global_limit(server),
        )
        // Outermost: who is asking.
        .layer(middleware::from_fn_with_state(
            Arc::new(tokens),
            authenticate,
        ));
    let probes = Router::new()
        .route("/health", get(health))
        .route(
            "/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .with_state(Arc::new(
            store
                .watch_health(HEALTH_EVERY)
                .expect("the health watch's thread starts"),
        ));
    let scrape = Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics);
    api.merge(probes).merge(scrape)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let metrics = install_metrics()?;
    let (store, where_) = open_store(port)?;
    let payments = Arc::new(Payments::open(std::path::Path::new(PAYMENTS_FILE))?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "payments API on http://{} (store: {where_})",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app(&store, payments, Tokens::from_env(), metrics)
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    store.close()?;
    println!("closed {where_}");
    Ok(())
}

/// The store: PostgreSQL when `TOLLGATE_POSTGRES` is set (this server is node `demo-PORT`, or
/// `TOLLGATE_NODE_ID`), else the file in the working directory. The store opens (and may block
/// on the network) before the async runtime serves anything.
fn open_store(port: u16) -> Result<(Store, String), Box<dyn std::error::Error>> {
    match std::env::var("TOLLGATE_POSTGRES") {
        Ok(conn) => open_postgres(&conn, port),
        Err(_) => Ok((open_file()?, STORE_FILE.to_string())),
    }
}

/// The file, shared (on Linux): the `tollgate` CLI reads it while the server runs, and a second
/// server process started on it (a rolling restart) shares it instead of being refused.
#[cfg(target_os = "linux")]
fn open_file() -> tollgate::Result<Store> {
    Store::builder().open_shared(STORE_FILE)
}

#[cfg(not(target_os = "linux"))]
fn open_file() -> tollgate::Result<Store> {
    Store::open(STORE_FILE)
}

#[cfg(feature = "postgres")]
fn open_postgres(conn: &str, port: u16) -> Result<(Store, String), Box<dyn std::error::Error>> {
    let node = std::env::var("TOLLGATE_NODE_ID").unwrap_or_else(|_| format!("demo-{port}"));
    let store = Store::builder().node_id(&node).open_postgres(conn)?;
    Ok((store, format!("PostgreSQL, node {node}")))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_conn: &str, _port: u16) -> Result<(Store, String), Box<dyn std::error::Error>> {
    Err("TOLLGATE_POSTGRES is set, but this example was built without the postgres feature".into())
}
