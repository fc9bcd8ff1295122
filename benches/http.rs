//! The tower layers over real HTTP, against the same handler without them, in one run.
//!
//! ```text
//! cargo bench --features tower --bench http                      # 3 rounds of 3 s per row
//! TOLLGATE_BENCH_SECONDS=5 TOLLGATE_BENCH_ROUNDS=5 cargo bench --features tower --bench http
//! TOLLGATE_BENCH_WRK=1 cargo bench --features tower --bench http # drive it with wrk instead
//! TOLLGATE_BENCH_ONLY=rate cargo bench --features tower --bench http  # bare and rate only
//! ```
//!
//! One axum server per row on 127.0.0.1 (a tokio runtime with 2 workers, as on a 2-core box), all
//! answering `POST /` with the same 2-byte handler:
//! - `bare`: no layer;
//! - `rate`: `RateLimitLayer` over a file store with Batched counters (the default) and a quota
//!   that never denies, one subject for every request;
//! - `replay`: `IdempotencyLayer` over a file store, every request a retry of one completed key
//!   (answered from the replay cache).
//!
//! 64 keep-alive connections send requests back to back: from this process by default (one
//! client thread with a minimal HTTP/1.1 client, which also uses a core), or from `wrk` with
//! `TOLLGATE_BENCH_WRK=1` (`wrk -t1 -c64`, a Lua script for the POST). The rows alternate, round by
//! round, so that machine noise falls on all of them; each round prints requests per second and
//! the ratio to `bare` of that round. Goals (issue 35; issue 17 asked 0.8x and 0.7x): `rate`
//! ≥ 0.85x and `replay` ≥ 0.8x `bare`, with `wrk`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::Store;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::tower::{IdempotencyLayer, RateLimitLayer};

const CONNECTIONS: usize = 64;
const KEY: &str = "bench-key";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn ok() -> &'static str {
    "ok"
}

struct Row {
    name: &'static str,
    address: SocketAddr,
}

fn main() {
    let seconds = env_u64("TOLLGATE_BENCH_SECONDS", 3);
    let rounds = env_u64("TOLLGATE_BENCH_ROUNDS", 3);
    let use_wrk = std::env::var("TOLLGATE_BENCH_WRK").is_ok_and(|v| v == "1");
    // `TOLLGATE_BENCH_ONLY=rate` runs `bare` and the rows whose name contains it (for profiles).
    let only = std::env::var("TOLLGATE_BENCH_ONLY").unwrap_or_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let rate_store = Store::open(dir.path().join("rate.redb")).expect("open");
    let replay_store = Store::open(dir.path().join("replay.redb")).expect("open");
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("server runtime");
    let limit = Limit::new("never-denies", Quota::per_second(1_000_000_000)).expect("limit");
    let apps = [
        ("bare", Router::new().route("/", post(ok))),
        (
            "rate",
            Router::new()
                .route("/", post(ok))
                .layer(RateLimitLayer::new(rate_store.clone(), [limit])),
        ),
        (
            "replay",
            Router::new()
                .route("/", post(ok))
                .layer(IdempotencyLayer::new(replay_store.clone())),
        ),
    ];
    let rows: Vec<Row> = apps
        .into_iter()
        .map(|(name, app)| {
            let listener = server
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind");
            let address = listener.local_addr().expect("address");
            server.spawn(async move {
                axum::serve(listener, app).await.expect("serve");
            });
            Row { name, address }
        })
        .filter(|row| row.name == "bare" || row.name.contains(only.as_str()))
        .collect();
    // The key `replay` retries: completed once, then replayed from the cache.
    for row in &rows {
        let answer = one_request(row.address);
        assert!(answer.starts_with("HTTP/1.1 200"), "{}: {answer}", row.name);
    }
    println!(
        "{CONNECTIONS} connections, {seconds} s per row and round, driven by {}",
        if use_wrk { "wrk" } else { "this process" }
    );
    let mut ratios: Vec<(&str, Vec<f64>)> =
        rows[1..].iter().map(|r| (r.name, Vec::new())).collect();
    for round in 1..=rounds {
        let mut bare = 0.0;
        let mut line = format!("round {round}:");
        for (index, row) in rows.iter().enumerate() {
            let rate = if use_wrk {
                wrk(row.address, seconds)
            } else {
                load(row.address, Duration::from_secs(seconds))
            };
            if index == 0 {
                bare = rate;
                line += &format!(" {} {rate:.0}/s", row.name);
            } else {
                let ratio = rate / bare;
                ratios[index - 1].1.push(ratio);
                line += &format!(", {} {rate:.0}/s ({ratio:.2}x)", row.name);
            }
        }
        println!("{line}");
    }
    for (name, mut values) in ratios {
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        let goal = if name == "rate" { 0.85 } else { 0.8 };
        println!(
            "{name}/bare: median {median:.2}x over {} rounds (goal >= {goal}x: {})",
            values.len(),
            if median >= goal { "met" } else { "NOT met" }
        );
    }
    let stats = rate_store.stats().expect("stats");
    println!(
        "rate store: {} counters written in {} commits",
        stats.writes, stats.commits
    );
    rate_store.close().expect("close");
    replay_store.close().expect("close");
}

fn request_bytes() -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         idempotency-key: {KEY}\r\ncontent-length: 2\r\n\r\n{{}}"
    )
    .into_bytes()
}

/// One request on a connection of its own, answered in full.
fn one_request(address: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(&request_bytes()).expect("write");
    let mut buffer = vec![0u8; 4096];
    let mut answer = Vec::new();
    while response_length(&answer).is_none() {
        let n = stream.read(&mut buffer).expect("read");
        assert!(n > 0, "the server closed the connection");
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The length of the whole response at the start of `bytes`, once it has arrived.
fn response_length(bytes: &[u8]) -> Option<usize> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (bytes.len() >= end + length).then_some(end + length)
}

/// Requests per second over `CONNECTIONS` keep-alive connections for `duration`.
fn load(address: SocketAddr, duration: Duration) -> f64 {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    client.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..CONNECTIONS {
            let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let request = request_bytes();
                let mut stream = tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let mut buffer = vec![0u8; 8192];
                let mut filled = 0;
                while !stop.load(Ordering::Relaxed) {
                    stream.write_all(&request).await.expect("write");
                    loop {
                        if let Some(length) = response_length(&buffer[..filled]) {
                            assert!(buffer.starts_with(b"HTTP/1.1 200"), "not a 200");
                            buffer.copy_within(length..filled, 0);
                            filled -= length;
                            break;
                        }
                        let n = stream.read(&mut buffer[filled..]).await.expect("read");
                        assert!(n > 0, "the server closed the connection");
                        filled += n;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("connection task");
        }
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Requests per second as `wrk -t1 -c64` measures them.
fn wrk(address: SocketAddr, seconds: u64) -> f64 {
    let script = std::env::temp_dir().join(format!("tollgate-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{{}}\"\n\
             wrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Idempotency-Key\"] = \"{KEY}\"\n"
        ),
    )
    .expect("wrk script");
    let output = std::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{address}/"))
        .output()
        .expect("run wrk (TOLLGATE_BENCH_WRK=1 needs wrk on the PATH)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"))
}
