//! The demo payments server (`demo/src/main.rs`, built here as a module) over real HTTP: its
//! health check says ready, then 503 once the store is closed; idempotency keys are scoped by the
//! bearer-token user (Alice's and Bob's same key and body are two payments); a request without a
//! token is 401; and `/metrics` serves a Prometheus scrape with the replays, the rate denials and
//! the commit latency histogram those requests made.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::fixture;
use crate::web::{self, Server, client, send, within};

#[allow(dead_code)] // its `main` and the constants `main` uses
#[path = "../../demo/src/main.rs"]
mod server;

fn payment(url: &str, token: Option<&str>, key: &str, body: &str) -> Request<Full<Bytes>> {
    let mut request = web::post_json(url, Some(key), body);
    if let Some(token) = token {
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
    }
    request
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// The value of the first sample line of `name` whose labels contain every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' '])
                .next()
                .is_some_and(|metric| metric == name)
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[test]
fn health_scoping_and_a_prometheus_scrape_over_http() {
    // A process of its own: the Prometheus recorder is the process's one global recorder, and
    // other tests' stores would count in it.
    if fixture::isolated(
        module_path!(),
        "health_scoping_and_a_prometheus_scrape_over_http",
    ) {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scenario());
}

async fn scenario() {
    let metrics = server::install_metrics().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = tollgate::Store::open(dir.path().join("store.redb")).unwrap();
    let payments = Arc::new(server::Payments::open(&dir.path().join("payments.jsonl")).unwrap());
    let tokens = server::Tokens::from_env();
    let http = Server::start(server::app(&store, payments, tokens, metrics)).await;
    let client = client();

    let health = send(&client, get(&http.url("/health"))).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains(r#""ready":true"#), "{}", health.body);

    // No token, or an unknown one: 401 before any state.
    let body = r#"{"amount": 1000, "currency": "eur"}"#;
    let url = http.url("/payments");
    let anonymous = send(&client, payment(&url, None, "order-1", body)).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let forged = send(&client, payment(&url, Some("guess"), "order-1", body)).await;
    assert_eq!(forged.status, 401);

    // Alice pays, retries, and is replayed; Bob's same key and same body is his own payment.
    let alice = send(&client, payment(&url, Some("alice-token"), "order-1", body)).await;
    assert_eq!(alice.status, 201, "{}", alice.body);
    let retry = send(&client, payment(&url, Some("alice-token"), "order-1", body)).await;
    assert_eq!(retry.status, 201);
    assert!(retry.replayed());
    assert_eq!(retry.body, alice.body);
    let bob = send(&client, payment(&url, Some("bob-token"), "order-1", body)).await;
    assert_eq!(bob.status, 201, "{}", bob.body);
    assert!(
        !bob.replayed(),
        "Bob must not be answered with Alice's payment"
    );
    assert_ne!(bob.body, alice.body);

    // Alice's per-user limit is 5 per 10 s: her third to fifth requests pass, the sixth is 429.
    for n in 2..5 {
        let next = send(
            &client,
            payment(&url, Some("alice-token"), &format!("order-{n}"), body),
        )
        .await;
        assert_eq!(next.status, 201, "request {n}: {}", next.body);
    }
    let denied = send(&client, payment(&url, Some("alice-token"), "order-9", body)).await;
    assert_eq!(denied.status, 429, "{}", denied.body);
    assert!(denied.header("retry-after").is_some());
    assert!(denied.body.contains("per-user"), "{}", denied.body);

    let scrape = send(&client, get(&http.url("/metrics"))).await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        scrape.headers
    );
    let text = &scrape.body;
    assert_eq!(
        sample(text, "tollgate_begins_total", &[r#"outcome="replay""#]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(text, "tollgate_begins_total", &[r#"outcome="acquired""#]),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            "tollgate_rate_checks_total",
            &[r#"decision="denied""#, r#"limit="per-user""#]
        ),
        Some(1.0),
        "{text}"
    );
    // Each acquired lease and each completion is a durable commit, measured in the histogram.
    let commits = sample(text, "tollgate_commit_seconds_count", &[]).unwrap_or(0.0);
    assert!(commits >= 2.0, "{text}");
    assert!(
        sample(text, "tollgate_commit_seconds_bucket", &[r#"le="+Inf""#]) == Some(commits),
        "{text}"
    );

    // Closed: not ready (once the health watch's next read, within a second, saw it), and the
    // probe says why; the liveness probe still answers.
    store.clone().close().unwrap();
    let closed = within("/health to say the store closed", async {
        loop {
            let answer = send(&client, get(&http.url("/health"))).await;
            if answer.status != 200 {
                return answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(closed.status, 503, "{}", closed.body);
    assert!(closed.body.contains("closed"), "{}", closed.body);
    let live = send(&client, get(&http.url("/health/live"))).await;
    assert_eq!(live.status, 200);
    within("the server to stop", http.stop()).await;
}
