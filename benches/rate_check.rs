//! Rate-check throughput against peers, in one process and one run.
//!
//! - `single_thread_10k_subjects`: tollgate `check` in Batched mode (the default, persisting within
//!   50 ms) vs governor's keyed (dashmap) limiter, both over 10,000 subjects round-robin with a
//!   quota that allows every check. Goal: tollgate ≥ 1/3 of governor.
//! - `immediate_64_threads`: tollgate `check` in Immediate mode (durable before it returns) at 64
//!   threads vs a naive loop doing one redb write transaction per check at 64 threads. Goal: ≥ 10x.
//!
//! ```text
//! cargo bench --bench rate_check
//! ```

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use redb::{Database, ReadableTable, TableDefinition};
use tollgate::Store;
use tollgate::ratelimit::{Limit, Quota, RateDurability};

const SUBJECTS: usize = 10_000;
const THREADS: u64 = 64;

fn subjects() -> Vec<String> {
    (0..SUBJECTS).map(|i| format!("client-{i}")).collect()
}

fn single_thread(c: &mut Criterion) {
    let subjects = subjects();
    let mut group = c.benchmark_group("single_thread_10k_subjects");

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::builder()
        .rate_durability(RateDurability::default())
        .open(dir.path().join("batched.redb"))
        .expect("open");
    let limit = Limit::new("api", Quota::per_second(1_000_000)).expect("limit");
    let mut i = 0;
    group.bench_function("tollgate_batched", |b| {
        b.iter(|| {
            i = (i + 1) % SUBJECTS;
            assert!(store.check(&limit, &subjects[i]).expect("check").allowed());
        });
    });
    let stats = store.stats().expect("stats");
    store.close().expect("close");
    println!(
        "tollgate batched: {} counters written in {} commits",
        stats.writes, stats.commits
    );

    let quota = governor::Quota::per_second(NonZeroU32::new(1_000_000).expect("nonzero"));
    let governor = governor::RateLimiter::keyed(quota);
    let mut i = 0;
    group.bench_function("governor_keyed", |b| {
        b.iter(|| {
            i = (i + 1) % SUBJECTS;
            assert!(governor.check_key(&subjects[i]).is_ok());
        });
    });
    group.finish();
}

/// Runs `iters` operations spread over 64 threads and returns the wall time.
fn spread(iters: u64, work: Arc<dyn Fn(u64) + Send + Sync>) -> Duration {
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let work = Arc::clone(&work);
            let count = iters / THREADS + u64::from(t < iters % THREADS);
            std::thread::spawn(move || {
                for n in 0..count {
                    work(t * 1_000_000 + n);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    started.elapsed()
}

fn immediate_many_threads(c: &mut Criterion) {
    let subjects = Arc::new(subjects());
    let mut group = c.benchmark_group("immediate_64_threads");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::builder()
        .rate_durability(RateDurability::Immediate)
        .open(dir.path().join("immediate.redb"))
        .expect("open");
    let limit = Arc::new(Limit::new("api", Quota::per_second(1_000_000)).expect("limit"));
    {
        let (store, limit, subjects) = (store.clone(), Arc::clone(&limit), Arc::clone(&subjects));
        group.bench_function("tollgate_immediate", move |b| {
            let work: Arc<dyn Fn(u64) + Send + Sync> = {
                let (store, limit, subjects) =
                    (store.clone(), Arc::clone(&limit), Arc::clone(&subjects));
                Arc::new(move |n| {
                    let subject = &subjects[(n as usize) % SUBJECTS];
                    assert!(store.check(&limit, subject).expect("check").allowed());
                })
            };
            b.iter_custom(|iters| spread(iters, Arc::clone(&work)));
        });
    }
    let stats = store.stats().expect("stats");
    store.close().expect("close");
    println!(
        "tollgate immediate: {:.1} checks per commit",
        stats.writes as f64 / stats.commits.max(1) as f64
    );

    const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
    let db = Arc::new(Database::create(dir.path().join("naive.redb")).expect("create"));
    group.bench_function("naive_redb_txn_per_check", move |b| {
        let work: Arc<dyn Fn(u64) + Send + Sync> = {
            let (db, subjects) = (Arc::clone(&db), Arc::clone(&subjects));
            Arc::new(move |n| {
                let subject = subjects[(n as usize) % SUBJECTS].as_str();
                let txn = db.begin_write().expect("write");
                {
                    let mut table = txn.open_table(COUNTERS).expect("table");
                    let count = table.get(subject).expect("get").map_or(0, |v| v.value());
                    table.insert(subject, count + 1).expect("insert");
                }
                txn.commit().expect("commit");
            })
        };
        b.iter_custom(|iters| spread(iters, Arc::clone(&work)));
    });
    group.finish();
}

criterion_group!(benches, single_thread, immediate_many_threads);
criterion_main!(benches);
