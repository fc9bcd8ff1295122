//! A shared store across real processes against one process, in one run.
//!
//! - `cycles`: durable begin + complete of fresh keys (a 200-byte response), 4 processes × 16
//!   threads through `open_shared` (one of them owns the file, three are its clients) against 1
//!   process × 64 threads through `open`. Issue 32's goal: ≥ 0.6×. The bench binary re-runs itself
//!   as the worker processes; each row runs `TOLLGATE_BENCH_SECONDS` (default 3), the rows in turn
//!   `TOLLGATE_BENCH_ROUNDS` times (default 3), and the ratio reported is the median of the
//!   per-round ratios.
//! - `latency`: one thread, p50 and p99 of a begin of a key in flight (one round trip for a
//!   client, none for the owner), and of a Batched rate check.
//!
//! ```text
//! cargo bench --bench shared_processes
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::ratelimit::{Limit, Quota};
use tollgate::{Store, StoreBuilder};

const WORKER_ENV: &str = "TOLLGATE_BENCH_SHARED_WORKER";
const PROCESSES: usize = 4;
const THREADS: usize = 64;

fn seconds() -> Duration {
    Duration::from_secs(
        std::env::var("TOLLGATE_BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    )
}

fn builder() -> StoreBuilder {
    Store::builder().lease_ttl(Duration::from_secs(3600))
}

/// Runs begin + complete cycles of fresh keys on `threads` threads for `run`; returns the count.
fn cycles(store: &Store, threads: usize, run: Duration, prefix: &str) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let body = vec![b'x'; 200];
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (done, stop, body) = (Arc::clone(&done), Arc::clone(&stop), body.clone());
            scope.spawn(move || {
                let request = Fingerprint::of(b"POST /orders");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = IdempotencyKey::new(prefix, &format!("{t}-{i}")).expect("key");
                    if let Ok(Begin::Acquired(lease)) = store.begin(&key, &request) {
                        if lease
                            .complete(StoredResponse::new(201, body.clone()))
                            .is_ok()
                        {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            });
        }
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed)
}

/// A worker process: opens the shared store, says READY, runs on GO, says DONE with its count,
/// and closes when its stdin closes.
fn worker(path: &Path) -> ! {
    let store = builder().open_shared(path).expect("open_shared");
    println!("READY");
    std::io::stdout().flush().expect("stdout");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("GO");
    let count = cycles(
        &store,
        THREADS / PROCESSES,
        seconds(),
        &format!("p{}", std::process::id()),
    );
    println!("DONE {count}");
    std::io::stdout().flush().expect("stdout");
    let _ = std::io::stdin().read_line(&mut line);
    store.close().expect("close");
    std::process::exit(0);
}

/// Cycles per second of 4 worker processes on one shared file.
fn shared_round(dir: &Path, round: usize) -> f64 {
    let path = dir.join(format!("shared-{round}.redb"));
    let mut workers: Vec<_> = (0..PROCESSES)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe().expect("this bench"))
                .env(WORKER_ENV, &path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("a worker");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("READY"));
            (child, lines)
        })
        .collect();
    let start = Instant::now();
    for (child, _) in &mut workers {
        writeln!(child.stdin.as_mut().expect("stdin"), "GO").expect("GO");
    }
    let mut total = 0;
    for (_, lines) in &mut workers {
        let line = lines.next().and_then(Result::ok).expect("DONE");
        total += line
            .strip_prefix("DONE ")
            .and_then(|n| n.parse::<u64>().ok())
            .expect("a count");
    }
    let elapsed = start.elapsed();
    for (mut child, _) in workers {
        drop(child.stdin.take());
        child.wait().expect("a worker's exit");
    }
    total as f64 / elapsed.as_secs_f64()
}

/// Cycles per second of one process with 64 threads on a file of its own.
fn single_round(dir: &Path, round: usize) -> f64 {
    let store = builder()
        .open(dir.join(format!("single-{round}.redb")))
        .expect("open");
    let start = Instant::now();
    let count = cycles(&store, THREADS, seconds(), "single");
    let rate = count as f64 / start.elapsed().as_secs_f64();
    store.close().expect("close");
    rate
}

fn percentiles(mut op: impl FnMut()) -> (u64, u64) {
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..20_000 {
        let start = Instant::now();
        op();
        histogram
            .record(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
            .expect("record");
    }
    (
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
    )
}

fn latency(dir: &Path) {
    let path = dir.join("latency.redb");
    let owner = builder().open_shared(&path).expect("owner");
    let client = builder().open_shared(&path).expect("client");
    let request = Fingerprint::of(b"r");
    let held = IdempotencyKey::new("bench", "held").expect("key");
    let Ok(Begin::Acquired(lease)) = owner.begin(&held, &request) else {
        panic!("a fresh key")
    };
    let limit = Limit::new("bench", Quota::per_second(1_000_000_000)).expect("limit");
    for (name, store) in [("owner", &owner), ("client", &client)] {
        let (p50, p99) = percentiles(|| {
            assert!(matches!(
                store.begin(&held, &request),
                Ok(Begin::InFlight { .. })
            ));
        });
        println!("latency/in_flight/{name}: p50 {p50} ns, p99 {p99} ns");
        let (p50, p99) = percentiles(|| {
            assert!(store.check(&limit, "subject").expect("check").allowed());
        });
        println!("latency/batched_check/{name}: p50 {p50} ns, p99 {p99} ns");
    }
    lease.release().expect("release");
    client.close().expect("close");
    owner.close().expect("close");
}

fn main() {
    if let Some(path) = std::env::var_os(WORKER_ENV) {
        worker(Path::new(&path));
    }
    // `cargo bench` passes `--bench`; a filter argument is not used.
    let rounds: usize = std::env::var("TOLLGATE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let single = single_round(dir.path(), round);
        let shared = shared_round(dir.path(), round);
        println!(
            "round {round}: cycles/s 1x{THREADS} open {single:.0}, {PROCESSES}x{} open_shared {shared:.0}, ratio {:.2}",
            THREADS / PROCESSES,
            shared / single
        );
        ratios.push(shared / single);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "cycles: {PROCESSES} processes x {} threads / 1 x {THREADS}: median {:.2} (range {:.2}-{:.2}; goal >= 0.6)",
        THREADS / PROCESSES,
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    latency(dir.path());
}
