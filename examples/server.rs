//! A small payments API on 127.0.0.1, made idempotent and rate-limited by tollgate's tower layers.
//!
//! ```text
//! cargo run --features tower --example server            # http://127.0.0.1:3000
//! PORT=3001 cargo run --features tower --example server
//! ```
//!
//! - `POST /payments` with `{"amount": 1000, "currency": "eur"}` and an `Idempotency-Key` creates
//!   a payment (201). A retry with the same key replays it; the same key with another body is 422;
//!   a retry while the first is still running is 409.
//! - `GET /payments/{id}` shows one.
//! - Every client address may make 5 requests per 10 seconds (429 after that).
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
//! TOLLGATE_POSTGRES="host=127.0.0.1 user=postgres" PORT=3000 cargo run --features tower,postgres --example server
//! TOLLGATE_POSTGRES="host=127.0.0.1 user=postgres" PORT=3001 cargo run --features tower,postgres --example server
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tollgate::Store;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::tower::{IdempotencyContext, IdempotencyLayer, RateLimitLayer};

const STORE_FILE: &str = "tollgate-server.redb";
const PAYMENTS_FILE: &str = "tollgate-payments.jsonl";

/// The payments, in memory and in an append-only file.
struct Payments {
    by_id: Mutex<HashMap<String, Value>>,
    file: Mutex<std::fs::File>,
}

impl Payments {
    fn open() -> std::io::Result<Self> {
        let mut by_id = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(PAYMENTS_FILE) {
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
            .open(PAYMENTS_FILE)?;
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

/// The payments API with both layers, over `store`.
fn app(store: &Store, payments: Arc<Payments>) -> Router {
    let per_client =
        Limit::new("per-client", Quota::new(5, Duration::from_secs(10))).expect("a valid limit");
    Router::new()
        .route("/payments", post(create_payment))
        .route("/payments/{id}", get(get_payment))
        .with_state(payments)
        .layer(IdempotencyLayer::new(store.clone()))
        .layer(
            RateLimitLayer::new(store.clone(), [per_client]).key(|request| {
                let ConnectInfo(address) = request.extensions.get::<ConnectInfo<SocketAddr>>()?;
                Some(address.ip().to_string())
            }),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let (store, where_) = open_store(port)?;
    let payments = Arc::new(Payments::open()?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "payments API on http://{} (store: {where_})",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app(&store, payments).into_make_service_with_connect_info::<SocketAddr>(),
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
        Err(_) => Ok((Store::open(STORE_FILE)?, STORE_FILE.to_string())),
    }
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
