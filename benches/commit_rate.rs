//! Quick durable-commit benchmark for the core store: begin+complete cycles (two durable writes
//! each, 200-byte responses, distinct keys) at 1 and 32 threads, with a naive redb loop (one
//! Immediate write transaction per transition, single thread) as the peer in the same run.
//!
//! ```text
//! cargo bench --bench commit_rate              # 3 s per configuration
//! TOLLGATE_BENCH_SECONDS=10 cargo bench --bench commit_rate
//! ```
//!
//! The full suite with SQLite and governor peers and latency histograms is the performance issue's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, TableDefinition};
use tollgate::Store;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};

mod support;

use support::seconds;

const RESPONSE_BYTES: usize = 200;

struct Run {
    cycles: u64,
    elapsed: Duration,
    commits: Option<u64>,
    writes: Option<u64>,
}

fn tollgate_cycles(threads: usize, duration: Duration) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("bench.redb")).expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (store, stop, cycles) = (store.clone(), Arc::clone(&stop), Arc::clone(&cycles));
            std::thread::spawn(move || {
                let fingerprint = Fingerprint::of(b"POST /v1/charges");
                let body = vec![b'x'; RESPONSE_BYTES];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = IdempotencyKey::new("bench", &format!("{t}-{i}")).expect("key");
                    i += 1;
                    match store.begin(&key, &fingerprint).expect("begin") {
                        Begin::Acquired(lease) => lease
                            .complete(StoredResponse::new(201, body.clone()))
                            .expect("complete"),
                        other => panic!("unexpected {other:?}"),
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("worker");
    }
    let elapsed = started.elapsed();
    let stats = store.stats().expect("stats");
    store.close().expect("close");
    Run {
        cycles: cycles.load(Ordering::Relaxed),
        elapsed,
        commits: Some(stats.commits),
        writes: Some(stats.writes),
    }
}

/// The same two transitions done the obvious way: one Immediate write transaction each.
fn naive_redb_cycles(duration: Duration) -> Run {
    const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Database::create(dir.path().join("naive.redb")).expect("create");
    let body = [b'x'; RESPONSE_BYTES];
    let started = Instant::now();
    let mut cycles = 0u64;
    while started.elapsed() < duration {
        let key = format!("naive-{cycles}");
        for value in [&b"running"[..], &body[..]] {
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                let _seen = table.get(key.as_bytes()).expect("get").is_some();
                table.insert(key.as_bytes(), value).expect("insert");
            }
            txn.commit().expect("commit");
        }
        cycles += 1;
    }
    Run {
        cycles,
        elapsed: started.elapsed(),
        commits: Some(cycles * 2),
        writes: Some(cycles * 2),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing and should not run.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let duration = seconds();
    let naive = naive_redb_cycles(duration);
    let one = tollgate_cycles(1, duration);
    let many = tollgate_cycles(32, duration);
    println!(
        "{:<28} {:>12} {:>14} {:>14} {:>14}",
        "workload", "cycles/s", "commits/s", "writes/commit", "vs naive redb"
    );
    let naive_rate = naive.cycles as f64 / naive.elapsed.as_secs_f64();
    for (name, run) in [
        ("naive redb, 1 thread", &naive),
        ("tollgate, 1 thread", &one),
        ("tollgate, 32 threads", &many),
    ] {
        let secs = run.elapsed.as_secs_f64();
        let rate = run.cycles as f64 / secs;
        let commits = run.commits.map_or(0.0, |c| c as f64 / secs);
        let per_commit = match (run.writes, run.commits) {
            (Some(w), Some(c)) if c > 0 => w as f64 / c as f64,
            _ => 0.0,
        };
        println!(
            "{name:<28} {rate:>12.0} {commits:>14.0} {per_commit:>14.2} {:>13.2}x",
            rate / naive_rate
        );
    }
}
