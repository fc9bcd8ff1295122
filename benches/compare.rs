//! tollgate against its real peers, side by side in one process and one run, so that machine noise
//! mostly cancels out of the ratios.
//!
//! ```text
//! cargo bench --bench compare                          # 3 s per row, about 2 minutes
//! TOLLGATE_BENCH_SECONDS=10 cargo bench --bench compare
//! TOLLGATE_COMPARE_ONLY=replay cargo bench --bench compare   # rows whose name contains "replay"
//! TOLLGATE_COMPARE_ONLY=cycle/tollgate/64,cycle/naive-pg/64 cargo bench --features postgres --bench compare  # any of a list
//! TOLLGATE_COMPARE_ROUNDS=5 cargo bench --bench compare      # every row 5 times, in turn
//! ```
//!
//! Rows:
//! - `cycle/*`: begin + complete of a fresh key with a 200-byte response, two durable writes per
//!   cycle, at 1, 8 and 64 threads: tollgate; a naive redb loop (one `Immediate` write
//!   transaction per transition); SQLite (rusqlite, bundled library, WAL, `synchronous=FULL`, one
//!   connection per thread, `BEGIN IMMEDIATE` per transition). At 1 thread also the *redb floor*:
//!   a plain redb loop that makes exactly the B-tree writes tollgate's format needs per transition
//!   (the record under its 32-byte digest, the expiry-index entry, the counters, opening the same
//!   tables) and nothing else, so the gap between the naive loop and tollgate splits into what the
//!   format costs and what tollgate's code costs.
//! - `replay/*`: `begin` of an already completed key (the read path), 1 and 2 threads, with the
//!   replay cache (its default size; the 10,000 keys fit) and without it (every replay reads redb).
//! - `rate/*`: checks over 10,000 subjects round-robin with a quota that allows every check:
//!   tollgate Batched vs governor's keyed limiter (1 and 2 threads; tollgate's subjects each
//!   checked once before the clock starts, so that their first reservations are written: the
//!   steady state); `rate/tollgate-batched-new/1`, Batched checks of subjects never seen (each
//!   writes its first reservation); tollgate Immediate vs a naive redb loop (one write
//!   transaction per check) at 64 threads.
//! - With `--features postgres`, against one local PostgreSQL (`TOLLGATE_BENCH_POSTGRES`, else a
//!   throwaway cluster with `fsync` and `synchronous_commit` on; skipped with a message if there
//!   is none): `cycle/tollgate-pg/*` vs `cycle/naive-pg/*` at 1, 8 and 64 threads (one
//!   connection per thread, prepared statements, one autocommit statement per transition), and
//!   `rate/tollgate-pg/*` vs `rate/naive-pg/*` at 1 and 64 threads (one autocommit upsert per
//!   check). `TOLLGATE_BENCH_PG_POOL` sets
//!   tollgate's `postgres_pool_size` (default 4), `TOLLGATE_BENCH_PG_WRITERS` its
//!   `postgres_writers` (default 2).
//! - With `--features redis`, against one local Redis (see `redis_peer/mod.rs`):
//!   `rate/tollgate-redis/64` vs `rate/naive-redis/64` (one `EVALSHA` of a single-key GCRA script
//!   per check, one connection per thread), and a flood of denied checks with and without the
//!   denial cache. For these rows the last column is checks per script call.
//!
//! Each row reports operations per second, p50 and p99 latency (hdrhistogram; the fast rows time
//! one operation in 16 so the clock does not dominate), and for tollgate the operations per
//! commit from `stats()`, which shows group commit at work. Then the goals, as ratios. With
//! `TOLLGATE_COMPARE_ROUNDS=N` every selected row runs N times, the rows in turn round by round,
//! and each goal is the median of its N per-round ratios (with their range): on a shared machine
//! whose disk and CPU drift from one minute to the next, a ratio of two rows run seconds apart
//! is steadier than one of rows run minutes apart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redb::{Database, ReadableTable, TableDefinition};
use tollgate::Store;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::ratelimit::{Limit, Quota, RateDurability};

#[cfg(feature = "redis")]
mod redis_peer;
mod support;

use support::seconds;

const RESPONSE_BYTES: usize = 200;
const SUBJECTS: usize = 10_000;
const REPLAY_KEYS: u64 = 10_000;

/// One row of the table.
struct Row {
    name: String,
    ops: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Operations per commit (tollgate only).
    per_commit: Option<f64>,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `threads` workers for `duration`; each calls `op(thread, n)` for n = 0, 1, ... and times
/// one call in `sample_every`. Returns the operations done, the wall time and the latencies.
fn drive<F>(
    threads: usize,
    duration: Duration,
    sample_every: u64,
    op: F,
) -> (u64, Duration, Histogram<u64>)
where
    F: Fn(usize, u64) + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (op, stop, total, start) = (
                Arc::clone(&op),
                Arc::clone(&stop),
                Arc::clone(&total),
                Arc::clone(&start),
            );
            std::thread::spawn(move || {
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
                start.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if n % sample_every == 0 {
                        let began = Instant::now();
                        op(t, n);
                        let nanos = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        histogram.saturating_record(nanos.max(1));
                    } else {
                        op(t, n);
                    }
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
                histogram
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    for worker in workers {
        latency.add(worker.join().expect("worker")).expect("merge");
    }
    (total.load(Ordering::Relaxed), began.elapsed(), latency)
}

fn row(
    name: String,
    (ops, elapsed, latency): (u64, Duration, Histogram<u64>),
    per_commit: Option<f64>,
) -> Row {
    Row {
        name,
        ops,
        elapsed,
        latency,
        per_commit,
    }
}

fn per_commit(store: &Store, before: &tollgate::Stats) -> Option<f64> {
    let after = store.stats().ok()?;
    let commits = after.commits.saturating_sub(before.commits).max(1);
    Some((after.writes - before.writes) as f64 / commits as f64)
}

fn response() -> StoredResponse {
    StoredResponse::new(201, vec![b'x'; RESPONSE_BYTES])
}

// ------------------------------------------------------------------------------------------------
// begin + complete cycles

fn tollgate_cycles(threads: usize, duration: Duration) -> Row {
    tollgate_cycles_with(threads, duration, true)
}

/// `write_ahead_log`: through the log (the default), or redb directly (one transaction per batch,
/// as before the log): `cycle/tollgate-direct/*`.
fn tollgate_cycles_with(threads: usize, duration: Duration, write_ahead_log: bool) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::builder()
        .write_ahead_log(write_ahead_log)
        .open(dir.path().join("cycles.redb"))
        .expect("open");
    let before = store.stats().expect("stats");
    let worker = store.clone();
    let result = drive(threads, duration, 1, move |t, n| {
        let key = IdempotencyKey::new("bench", &format!("{t}-{n}")).expect("key");
        match worker
            .begin(&key, &Fingerprint::of(b"POST /v1/charges"))
            .expect("begin")
        {
            Begin::Acquired(lease) => lease.complete(response()).expect("complete"),
            other => panic!("unexpected {other:?}"),
        }
    });
    let per_commit = per_commit(&store, &before).map(|writes| writes / 2.0);
    store.close().expect("close");
    let name = if write_ahead_log {
        "tollgate"
    } else {
        "tollgate-direct"
    };
    row(format!("cycle/{name}/{threads}"), result, per_commit)
}

const NAIVE_RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// The same two transitions done the obvious way: one Immediate write transaction each, reading
/// the key first as a real implementation must.
fn naive_redb_cycles(threads: usize, duration: Duration) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Database::create(dir.path().join("naive.redb")).expect("create"));
    let body = [b'x'; RESPONSE_BYTES];
    let result = drive(threads, duration, 1, move |t, n| {
        let key = format!("{t}-{n}");
        for value in [&b"running"[..], &body[..]] {
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(NAIVE_RECORDS).expect("table");
                let _seen = table.get(key.as_str()).expect("get").is_some();
                table.insert(key.as_str(), value).expect("insert");
            }
            txn.commit().expect("commit");
        }
    });
    row(format!("cycle/naive-redb/{threads}"), result, None)
}

const FLOOR_RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("records");
const FLOOR_RUNNING: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("running");
const FLOOR_EXPIRY: TableDefinition<&[u8; 41], ()> = TableDefinition::new("expiry");
const FLOOR_META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// tollgate's writes per transition (format 2) with none of its code: a running record (about 70
/// bytes) into the running table, then the completed one (about 270) into the records table and
/// out of the running one, keyed by a SHA-256 digest; an expiry-index entry inserted at begin (a
/// completion keeps it: same granule); five counters rewritten each commit. Like tollgate, each
/// transaction opens only the tables it touches (a begin reads both record tables).
fn redb_floor_cycles(threads: usize, duration: Duration) -> Row {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Database::create(dir.path().join("floor.redb")).expect("create"));
    let values = [vec![b'r'; 70], vec![b'c'; RESPONSE_BYTES + 70]];
    let result = drive(threads, duration, 1, move |t, n| {
        let digest: [u8; 32] = sha2::Sha256::digest(format!("{t}-{n}").as_bytes()).into();
        let expiry_key = |at: u64| {
            let mut key = [0; 41];
            key[..8].copy_from_slice(&at.to_be_bytes());
            key[9..].copy_from_slice(&digest);
            key
        };
        for (step, value) in values.iter().enumerate() {
            let txn = db.begin_write().expect("write");
            {
                let mut records = txn.open_table(FLOOR_RECORDS).expect("table");
                let mut running = txn.open_table(FLOOR_RUNNING).expect("table");
                let mut meta = txn.open_table(FLOOR_META).expect("table");
                let _seen = running.get(&digest).expect("get").is_some()
                    || records.get(&digest).expect("get").is_some();
                if step == 0 {
                    running.insert(&digest, value.as_slice()).expect("insert");
                    let mut expiry = txn.open_table(FLOOR_EXPIRY).expect("table");
                    expiry.insert(&expiry_key(n), ()).expect("insert");
                } else {
                    records.insert(&digest, value.as_slice()).expect("insert");
                    running.remove(&digest).expect("remove");
                }
                for name in ["token", "clock", "running", "completed", "failed"] {
                    meta.insert(name, n.to_le_bytes().as_slice()).expect("meta");
                }
            }
            txn.commit().expect("commit");
        }
    });
    row(format!("cycle/redb-floor/{threads}"), result, None)
}

fn sqlite_connection(path: &std::path::Path) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(path).expect("sqlite open");
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    connection
        .pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    connection
        .busy_timeout(Duration::from_secs(60))
        .expect("busy timeout");
    connection
}

/// SQLite as most users would set it up: WAL, synchronous=FULL, a connection per thread, and
/// `BEGIN IMMEDIATE` so that concurrent writers queue instead of failing.
fn sqlite_cycles(threads: usize, duration: Duration) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sqlite.db");
    sqlite_connection(&path)
        .execute_batch(
            "CREATE TABLE records (key TEXT PRIMARY KEY, state INTEGER NOT NULL, response BLOB)",
        )
        .expect("schema");
    let connections: Vec<_> = (0..threads)
        .map(|_| parking_lot::Mutex::new(sqlite_connection(&path)))
        .collect();
    let body = vec![b'x'; RESPONSE_BYTES];
    let result = drive(threads, duration, 1, move |t, n| {
        let mut connection = connections[t].lock();
        let key = format!("{t}-{n}");
        let txn = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("begin");
        let seen: Option<i64> = txn
            .query_row("SELECT state FROM records WHERE key = ?1", [&key], |r| {
                r.get(0)
            })
            .ok();
        assert!(seen.is_none());
        txn.execute("INSERT INTO records (key, state) VALUES (?1, 1)", [&key])
            .expect("insert");
        txn.commit().expect("commit");
        let txn = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("begin");
        txn.execute(
            "UPDATE records SET state = 2, response = ?2 WHERE key = ?1",
            rusqlite::params![key, body],
        )
        .expect("update");
        txn.commit().expect("commit");
    });
    drop(dir);
    row(format!("cycle/sqlite/{threads}"), result, None)
}

// ------------------------------------------------------------------------------------------------
// replays

fn tollgate_replays(threads: usize, cached: bool, duration: Duration) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = if cached {
        tollgate::DEFAULT_REPLAY_CACHE_SIZE
    } else {
        0
    };
    let store = Store::builder()
        .replay_cache_size(cache)
        .open(dir.path().join("replay.redb"))
        .expect("open");
    store
        .bulk_load(REPLAY_KEYS, Duration::from_secs(24 * 3600), |i| {
            let key = IdempotencyKey::new("bench", &format!("done-{i}")).expect("key");
            (key, Fingerprint::of(b"POST /v1/charges"), response())
        })
        .expect("bulk load");
    let keys: Arc<Vec<IdempotencyKey>> = Arc::new(
        (0..REPLAY_KEYS)
            .map(|i| IdempotencyKey::new("bench", &format!("done-{i}")).expect("key"))
            .collect(),
    );
    let fingerprint = Fingerprint::of(b"POST /v1/charges");
    let worker = store.clone();
    let result = drive(threads, duration, 16, move |t, n| {
        let key = &keys[((n + t as u64 * 7919) % REPLAY_KEYS) as usize];
        match worker.begin(key, &fingerprint).expect("begin") {
            Begin::Replay(replay) => assert_eq!(replay.response().status, 201),
            other => panic!("unexpected {other:?}"),
        }
    });
    store.close().expect("close");
    let name = if cached {
        "tollgate"
    } else {
        "tollgate-uncached"
    };
    row(format!("replay/{name}/{threads}"), result, None)
}

// ------------------------------------------------------------------------------------------------
// rate checks

fn subjects() -> Arc<Vec<String>> {
    Arc::new((0..SUBJECTS).map(|i| format!("client-{i}")).collect())
}

fn tollgate_rate(durability: RateDurability, threads: usize, duration: Duration) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::builder()
        .rate_durability(durability)
        .open(dir.path().join("rate.redb"))
        .expect("open");
    let limit = Limit::new("api", Quota::per_second(1_000_000)).expect("limit");
    let subjects = subjects();
    if matches!(durability, RateDurability::Batched { .. }) {
        // Steady state: each subject's first check writes its first reservation (an eighth of
        // the burst; `rate/tollgate-batched-new/1` measures that cost alone), so every subject is
        // checked once before the clock starts, by 64 threads whose first reservations share
        // commits. (A GCRA reservation also runs out with time: this quota's eighth of a burst
        // is 125 ms of refill, renewed ahead by the writer while the subject is checked.)
        std::thread::scope(|scope| {
            for chunk in subjects.chunks(subjects.len().div_ceil(64)) {
                let (store, limit) = (&store, &limit);
                scope.spawn(move || {
                    for subject in chunk {
                        assert!(store.check(limit, subject).expect("check").allowed());
                    }
                });
            }
        });
        // One flush renews the reservations the warm-up's first checks made, all at once.
        store.flush().expect("flush");
    }
    let before = store.stats().expect("stats");
    let worker = store.clone();
    let sample = if matches!(durability, RateDurability::Immediate) {
        1
    } else {
        16
    };
    let result = drive(threads, duration, sample, move |t, n| {
        let subject = &subjects[((n + t as u64 * 7919) % SUBJECTS as u64) as usize];
        assert!(worker.check(&limit, subject).expect("check").allowed());
    });
    let per_commit = per_commit(&store, &before);
    store.close().expect("close");
    let mode = match durability {
        RateDurability::Immediate => "immediate",
        _ => "batched",
    };
    row(
        format!("rate/tollgate-{mode}/{threads}"),
        result,
        per_commit,
    )
}

/// Batched checks of subjects never seen before, one thread: each writes its first reservation
/// (a commit of its own, as nothing else is waiting).
fn tollgate_rate_new_subjects(duration: Duration) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("rate-new.redb")).expect("open");
    let limit = Limit::new("api", Quota::per_second(1_000_000)).expect("limit");
    let before = store.stats().expect("stats");
    let worker = store.clone();
    let result = drive(1, duration, 1, move |_, n| {
        let subject = format!("new-{n}");
        assert!(worker.check(&limit, &subject).expect("check").allowed());
    });
    let per_commit = per_commit(&store, &before);
    store.close().expect("close");
    row("rate/tollgate-batched-new/1".to_owned(), result, per_commit)
}

fn governor_rate(threads: usize, duration: Duration) -> Row {
    let quota = governor::Quota::per_second(std::num::NonZeroU32::new(1_000_000).expect("nonzero"));
    let limiter = Arc::new(governor::RateLimiter::keyed(quota));
    let subjects = subjects();
    let result = drive(threads, duration, 16, move |t, n| {
        let subject = &subjects[((n + t as u64 * 7919) % SUBJECTS as u64) as usize];
        assert!(limiter.check_key(subject).is_ok());
    });
    row(format!("rate/governor/{threads}"), result, None)
}

fn naive_redb_rate(threads: usize, duration: Duration) -> Row {
    const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Database::create(dir.path().join("naive-rate.redb")).expect("create"));
    let subjects = subjects();
    let result = drive(threads, duration, 1, move |t, n| {
        let subject = subjects[((n + t as u64 * 7919) % SUBJECTS as u64) as usize].as_str();
        let txn = db.begin_write().expect("write");
        {
            let mut table = txn.open_table(COUNTERS).expect("table");
            let count = table.get(subject).expect("get").map_or(0, |v| v.value());
            table.insert(subject, count + 1).expect("insert");
        }
        txn.commit().expect("commit");
    });
    row(format!("rate/naive-redb/{threads}"), result, None)
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL (feature `postgres`): tollgate's engine against the naive loop, on one local server

#[cfg(feature = "postgres")]
#[path = "../tests/it/fixture/postgres.rs"]
#[allow(dead_code, unused_macros)]
mod test_server;

/// The server for the PostgreSQL rows: `TOLLGATE_BENCH_POSTGRES`, else a throwaway cluster (as
/// the tests start one), else `None` and the rows are skipped with a message. TLS is off on both
/// sides: the rows compare round trips and commits, not ciphers.
#[cfg(feature = "postgres")]
fn postgres_conn() -> Option<String> {
    static CONN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CONN.get_or_init(|| {
        if let Ok(conn) = std::env::var("TOLLGATE_BENCH_POSTGRES") {
            return Some(conn);
        }
        test_server::server().map(|server| format!("{} sslmode=disable", server.conn))
    })
    .clone()
}

#[cfg(feature = "postgres")]
fn postgres_row(name: String) -> Row {
    eprintln!("SKIPPED {name}: no PostgreSQL server (set TOLLGATE_BENCH_POSTGRES)");
    row(
        name,
        (
            0,
            Duration::from_secs(1),
            Histogram::new(3).expect("histogram"),
        ),
        None,
    )
}

#[cfg(feature = "postgres")]
fn tollgate_pg_store(conn: &str, schema: &str) -> Store {
    let pool = std::env::var("TOLLGATE_BENCH_PG_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tollgate::DEFAULT_POSTGRES_POOL_SIZE);
    let mut builder = Store::builder().postgres_pool_size(pool);
    if let Some(writers) = std::env::var("TOLLGATE_BENCH_PG_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder = builder.postgres_writers(writers);
    }
    builder
        .postgres_schema(schema)
        .background_compaction(false)
        .open_postgres(conn)
        .expect("open on PostgreSQL")
}

#[cfg(feature = "postgres")]
fn bench_schema(what: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("bench_{what}_{stamp}")
}

#[cfg(feature = "postgres")]
fn tollgate_pg_cycles(threads: usize, duration: Duration) -> Row {
    let name = format!("cycle/tollgate-pg/{threads}");
    let Some(conn) = postgres_conn() else {
        return postgres_row(name);
    };
    let store = tollgate_pg_store(&conn, &bench_schema("cycles"));
    let before = store.stats().expect("stats");
    let worker = store.clone();
    let result = drive(threads, duration, 1, move |t, n| {
        let key = IdempotencyKey::new("bench", &format!("{t}-{n}")).expect("key");
        match worker
            .begin(&key, &Fingerprint::of(b"POST /v1/charges"))
            .expect("begin")
        {
            Begin::Acquired(lease) => lease.complete(response()).expect("complete"),
            other => panic!("unexpected {other:?}"),
        }
    });
    let per_commit = per_commit(&store, &before).map(|writes| writes / 2.0);
    store.close().expect("close");
    row(name, result, per_commit)
}

/// One connection per thread (a pool as large as the load), prepared statements, one autocommit
/// statement per transition: the begin inserts the RUNNING row if the key is free, the
/// completion writes the response where the token still matches.
#[cfg(feature = "postgres")]
fn naive_pg_cycles(threads: usize, duration: Duration) -> Row {
    let name = format!("cycle/naive-pg/{threads}");
    let Some(conn) = postgres_conn() else {
        return postgres_row(name);
    };
    let table = bench_schema("naive_cycles");
    let mut setup = postgres::Client::connect(&conn, postgres::NoTls).expect("connect");
    setup
        .batch_execute(&format!(
            "CREATE TABLE {table} (key text PRIMARY KEY, state text NOT NULL, token bigint NOT NULL,              response bytea, expires_at bigint NOT NULL)"
        ))
        .expect("create");
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let mut client = postgres::Client::connect(&conn, postgres::NoTls).expect("connect");
            let begin = client
                .prepare(&format!(
                    "INSERT INTO {table} VALUES ($1, 'running', $2, NULL, $3) ON CONFLICT DO NOTHING"
                ))
                .expect("prepare");
            let complete = client
                .prepare(&format!(
                    "UPDATE {table} SET state = 'completed', response = $2 WHERE key = $1 AND token = $3"
                ))
                .expect("prepare");
            parking_lot::Mutex::new((client, begin, complete))
        })
        .collect();
    let clients = Arc::new(clients);
    let body = vec![b'x'; RESPONSE_BYTES];
    let result = drive(threads, duration, 1, move |t, n| {
        let key = format!("{t}-{n}");
        let token = i64::try_from(n).expect("token");
        let mut guard = clients[t].lock();
        let (client, begin, complete) = &mut *guard;
        let inserted = client
            .execute(&*begin, &[&key, &token, &0i64])
            .expect("begin");
        assert_eq!(inserted, 1);
        client
            .execute(&*complete, &[&key, &body, &token])
            .expect("complete");
    });
    row(name, result, None)
}

#[cfg(feature = "postgres")]
fn tollgate_pg_rate(threads: usize, duration: Duration) -> Row {
    let name = format!("rate/tollgate-pg/{threads}");
    let Some(conn) = postgres_conn() else {
        return postgres_row(name);
    };
    let store = tollgate_pg_store(&conn, &bench_schema("rate"));
    let limit = Limit::new("api", Quota::per_second(1_000_000)).expect("limit");
    let subjects = subjects();
    let before = store.stats().expect("stats");
    let worker = store.clone();
    let result = drive(threads, duration, 1, move |t, n| {
        let subject = &subjects[((n + t as u64 * 7919) % SUBJECTS as u64) as usize];
        assert!(worker.check(&limit, subject).expect("check").allowed());
    });
    let per_commit = per_commit(&store, &before);
    store.close().expect("close");
    row(name, result, per_commit)
}

/// One connection per thread, one autocommit upsert per check.
#[cfg(feature = "postgres")]
fn naive_pg_rate(threads: usize, duration: Duration) -> Row {
    let name = format!("rate/naive-pg/{threads}");
    let Some(conn) = postgres_conn() else {
        return postgres_row(name);
    };
    let table = bench_schema("naive_rate");
    let mut setup = postgres::Client::connect(&conn, postgres::NoTls).expect("connect");
    setup
        .batch_execute(&format!(
            "CREATE TABLE {table} (subject text PRIMARY KEY, count bigint NOT NULL)"
        ))
        .expect("create");
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let mut client = postgres::Client::connect(&conn, postgres::NoTls).expect("connect");
            let upsert = client
                .prepare(&format!(
                    "INSERT INTO {table} VALUES ($1, 1) ON CONFLICT (subject)                      DO UPDATE SET count = {table}.count + 1 RETURNING count"
                ))
                .expect("prepare");
            parking_lot::Mutex::new((client, upsert))
        })
        .collect();
    let clients = Arc::new(clients);
    let subjects = subjects();
    let result = drive(threads, duration, 1, move |t, n| {
        let subject = subjects[((n + t as u64 * 7919) % SUBJECTS as u64) as usize].as_str();
        let mut guard = clients[t].lock();
        let (client, upsert) = &mut *guard;
        let count: i64 = client
            .query_one(&*upsert, &[&subject])
            .expect("upsert")
            .get(0);
        assert!(count >= 1);
    });
    row(name, result, None)
}

// ------------------------------------------------------------------------------------------------

fn micros(nanos: u64) -> String {
    if nanos < 10_000 {
        format!("{:.2} µs", nanos as f64 / 1000.0)
    } else {
        format!("{:.0} µs", nanos as f64 / 1000.0)
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| row | ops/s | p50 | p99 | ops per commit |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            row.name,
            row.per_second(),
            micros(row.latency.value_at_quantile(0.5)),
            micros(row.latency.value_at_quantile(0.99)),
            row.per_commit
                .map_or_else(|| "–".to_owned(), |c| format!("{c:.1}")),
        );
    }
}

/// The goals, each from every round that has its rows: one round prints its value; several
/// print the median of the rounds' values (which decides "met") and their range.
fn print_goals(rounds: &[Vec<Row>]) {
    let rate = |name: &str| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|rows| rows.iter().find(|r| r.name == name).map(Row::per_second))
            .collect()
    };
    let ratio = |a: &str, b: &str| -> Vec<f64> {
        rounds
            .iter()
            .filter_map(|rows| {
                let per_second =
                    |name: &str| rows.iter().find(|r| r.name == name).map(Row::per_second);
                per_second(a).zip(per_second(b)).map(|(a, b)| a / b)
            })
            .collect()
    };
    println!();
    println!("| goal | measured | target | met |");
    println!("|---|---:|---:|---|");
    let goal = |what: &str, mut values: Vec<f64>, target: f64, unit: &str| {
        if values.is_empty() {
            return;
        }
        values.sort_by(f64::total_cmp);
        let median = if values.len() % 2 == 1 {
            values[values.len() / 2]
        } else {
            (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
        };
        let measured = if values.len() == 1 {
            format!("{median:.2}{unit}")
        } else {
            format!(
                "{median:.2}{unit} (median of {} rounds, {:.2}–{:.2})",
                values.len(),
                values[0],
                values[values.len() - 1]
            )
        };
        println!(
            "| {what} | {measured} | ≥ {target}{unit} | {} |",
            if median >= target { "yes" } else { "**no**" }
        );
    };
    goal(
        "1 thread cycles vs naive redb",
        ratio("cycle/tollgate/1", "cycle/naive-redb/1"),
        1.0,
        "x",
    );
    // Not goals: where the 1-thread goal's ceiling is (the format's writes with no tollgate code),
    // and how close tollgate comes to it.
    goal(
        "(bound) redb floor vs naive redb, 1 thread",
        ratio("cycle/redb-floor/1", "cycle/naive-redb/1"),
        0.9,
        "x",
    );
    goal(
        "(overhead) 1 thread cycles vs redb floor",
        ratio("cycle/tollgate/1", "cycle/redb-floor/1"),
        0.9,
        "x",
    );
    goal(
        "64 threads cycles vs naive redb",
        ratio("cycle/tollgate/64", "cycle/naive-redb/64"),
        15.0,
        "x",
    );
    goal(
        "64 threads cycles vs naive PostgreSQL loop (embedded store)",
        ratio("cycle/tollgate/64", "cycle/naive-pg/64"),
        4.0,
        "x",
    );
    // Not a goal: what the write-ahead log buys.
    goal(
        "(log) 64 threads cycles, through the log vs redb directly",
        ratio("cycle/tollgate/64", "cycle/tollgate-direct/64"),
        1.0,
        "x",
    );
    goal(
        "64 threads cycles vs SQLite",
        ratio("cycle/tollgate/64", "cycle/sqlite/64"),
        5.0,
        "x",
    );
    goal(
        "replays per second, 1 thread (millions)",
        rate("replay/tollgate/1")
            .into_iter()
            .map(|r| r / 1e6)
            .collect(),
        5.0,
        "M",
    );
    goal(
        "uncached replays per second, 1 thread (millions)",
        rate("replay/tollgate-uncached/1")
            .into_iter()
            .map(|r| r / 1e6)
            .collect(),
        0.8,
        "M",
    );
    goal(
        "rate Batched vs governor, 1 thread",
        ratio("rate/tollgate-batched/1", "rate/governor/1"),
        0.33,
        "x",
    );
    goal(
        "rate Immediate 64 threads vs naive redb",
        ratio("rate/tollgate-immediate/64", "rate/naive-redb/64"),
        10.0,
        "x",
    );
    goal(
        "PostgreSQL: 1 thread cycles vs naive autocommit loop",
        ratio("cycle/tollgate-pg/1", "cycle/naive-pg/1"),
        1.0,
        "x",
    );
    goal(
        "PostgreSQL: 1 thread rate checks vs naive upsert loop",
        ratio("rate/tollgate-pg/1", "rate/naive-pg/1"),
        1.0,
        "x",
    );
    goal(
        "PostgreSQL: 64 threads cycles vs naive autocommit loop",
        ratio("cycle/tollgate-pg/64", "cycle/naive-pg/64"),
        2.0,
        "x",
    );
    goal(
        "PostgreSQL: rate checks 64 threads vs naive upsert loop",
        ratio("rate/tollgate-pg/64", "rate/naive-pg/64"),
        2.0,
        "x",
    );
    goal(
        "Redis: rate checks 64 threads vs naive EVALSHA loop",
        ratio("rate/tollgate-redis/64", "rate/naive-redis/64"),
        2.0,
        "x",
    );
    // Not a goal: what the denial cache buys under a flood of denied checks.
    goal(
        "(denial cache) denied flood, cached vs uncached",
        ratio(
            "rate/tollgate-redis-denied/64",
            "rate/tollgate-redis-denied-uncached/64",
        ),
        1.0,
        "x",
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and should not run.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let duration = seconds();
    let only = std::env::var("TOLLGATE_COMPARE_ONLY").unwrap_or_default();
    type Bench = Box<dyn Fn(Duration) -> Row>;
    let benches: Vec<(&str, Bench)> = vec![
        ("cycle/tollgate/1", Box::new(|d| tollgate_cycles(1, d))),
        ("cycle/naive-redb/1", Box::new(|d| naive_redb_cycles(1, d))),
        ("cycle/sqlite/1", Box::new(|d| sqlite_cycles(1, d))),
        ("cycle/redb-floor/1", Box::new(|d| redb_floor_cycles(1, d))),
        ("cycle/tollgate/8", Box::new(|d| tollgate_cycles(8, d))),
        ("cycle/naive-redb/8", Box::new(|d| naive_redb_cycles(8, d))),
        ("cycle/sqlite/8", Box::new(|d| sqlite_cycles(8, d))),
        ("cycle/tollgate/64", Box::new(|d| tollgate_cycles(64, d))),
        (
            "cycle/naive-redb/64",
            Box::new(|d| naive_redb_cycles(64, d)),
        ),
        ("cycle/sqlite/64", Box::new(|d| sqlite_cycles(64, d))),
        (
            "cycle/tollgate-direct/1",
            Box::new(|d| tollgate_cycles_with(1, d, false)),
        ),
        (
            "cycle/tollgate-direct/64",
            Box::new(|d| tollgate_cycles_with(64, d, false)),
        ),
        (
            "replay/tollgate/1",
            Box::new(|d| tollgate_replays(1, true, d)),
        ),
        (
            "replay/tollgate/2",
            Box::new(|d| tollgate_replays(2, true, d)),
        ),
        (
            "replay/tollgate-uncached/1",
            Box::new(|d| tollgate_replays(1, false, d)),
        ),
        (
            "replay/tollgate-uncached/2",
            Box::new(|d| tollgate_replays(2, false, d)),
        ),
        (
            "rate/tollgate-batched/1",
            Box::new(|d| tollgate_rate(RateDurability::default(), 1, d)),
        ),
        ("rate/governor/1", Box::new(|d| governor_rate(1, d))),
        (
            "rate/tollgate-batched-new/1",
            Box::new(tollgate_rate_new_subjects),
        ),
        (
            "rate/tollgate-batched/2",
            Box::new(|d| tollgate_rate(RateDurability::default(), 2, d)),
        ),
        ("rate/governor/2", Box::new(|d| governor_rate(2, d))),
        (
            "rate/tollgate-immediate/64",
            Box::new(|d| tollgate_rate(RateDurability::Immediate, 64, d)),
        ),
        ("rate/naive-redb/64", Box::new(|d| naive_redb_rate(64, d))),
    ];
    #[cfg(feature = "postgres")]
    let benches = {
        let mut benches = benches;
        let postgres: Vec<(&str, Bench)> = vec![
            (
                "cycle/tollgate-pg/1",
                Box::new(|d| tollgate_pg_cycles(1, d)),
            ),
            ("cycle/naive-pg/1", Box::new(|d| naive_pg_cycles(1, d))),
            (
                "cycle/tollgate-pg/8",
                Box::new(|d| tollgate_pg_cycles(8, d)),
            ),
            ("cycle/naive-pg/8", Box::new(|d| naive_pg_cycles(8, d))),
            (
                "cycle/tollgate-pg/64",
                Box::new(|d| tollgate_pg_cycles(64, d)),
            ),
            ("cycle/naive-pg/64", Box::new(|d| naive_pg_cycles(64, d))),
            ("rate/tollgate-pg/1", Box::new(|d| tollgate_pg_rate(1, d))),
            ("rate/naive-pg/1", Box::new(|d| naive_pg_rate(1, d))),
            ("rate/tollgate-pg/64", Box::new(|d| tollgate_pg_rate(64, d))),
            ("rate/naive-pg/64", Box::new(|d| naive_pg_rate(64, d))),
        ];
        benches.extend(postgres);
        benches
    };
    #[cfg(feature = "redis")]
    let benches = {
        let mut benches = benches;
        let redis: Vec<(&str, Bench)> = vec![
            (
                "rate/tollgate-redis/64",
                Box::new(|d| redis_peer::tollgate_rate(64, d)),
            ),
            (
                "rate/naive-redis/64",
                Box::new(|d| redis_peer::naive_rate(64, d)),
            ),
            (
                "rate/tollgate-redis-denied/64",
                Box::new(|d| redis_peer::tollgate_denied(64, true, d)),
            ),
            (
                "rate/tollgate-redis-denied-uncached/64",
                Box::new(|d| redis_peer::tollgate_denied(64, false, d)),
            ),
        ];
        benches.extend(redis);
        benches
    };
    // Rounds: every selected row once per round, in turn, so that a ratio pairs two rows
    // measured minutes apart at most (this machine's speed drifts); the goals report the median
    // of the per-round ratios and their range.
    let rounds = std::env::var("TOLLGATE_COMPARE_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let mut all: Vec<Vec<Row>> = Vec::new();
    for round in 1..=rounds {
        let mut rows = Vec::new();
        for (name, bench) in &benches {
            if !only.split(',').any(|part| name.contains(part)) {
                continue;
            }
            let row = bench(duration);
            eprintln!(
                "{:<28} {:>12.0} ops/s ({} ops in {:.2} s){}",
                row.name,
                row.per_second(),
                row.ops,
                row.elapsed.as_secs_f64(),
                if rounds > 1 {
                    format!(" [round {round}/{rounds}]")
                } else {
                    String::new()
                }
            );
            rows.push(row);
        }
        if rounds > 1 {
            println!("\nround {round} of {rounds}:");
        }
        print_table(&rows);
        all.push(rows);
    }
    print_goals(&all);
    if let Some(rows) = all.last() {
        write_chart(rows);
    }
}

/// The cycle rows as an SVG chart: cycles per second (log scale) against threads, one line per
/// system. Written to `TOLLGATE_COMPARE_SVG` (default `target/compare-cycles.svg`) when the run
/// has cycle rows of at least two thread counts.
fn write_chart(rows: &[Row]) {
    const SYSTEMS: [(&str, &str, &str); 5] = [
        ("tollgate", "tollgate (embedded)", "#d62728"),
        ("naive-redb", "naive redb loop", "#1f77b4"),
        ("sqlite", "SQLite (WAL)", "#2ca02c"),
        ("naive-pg", "naive PostgreSQL loop", "#9467bd"),
        ("tollgate-pg", "tollgate on PostgreSQL", "#ff7f0e"),
    ];
    const THREADS: [u32; 3] = [1, 8, 64];
    let point = |system: &str, threads: u32| {
        rows.iter()
            .find(|row| row.name == format!("cycle/{system}/{threads}"))
            .map(Row::per_second)
    };
    let lines: Vec<_> = SYSTEMS
        .iter()
        .filter_map(|&(system, label, colour)| {
            let points: Vec<(usize, f64)> = THREADS
                .iter()
                .enumerate()
                .filter_map(|(i, &t)| point(system, t).map(|v| (i, v)))
                .collect();
            (points.len() >= 2).then_some((label, colour, points))
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    let (width, height, left, right, top, bottom) = (640.0, 400.0, 70.0, 190.0, 30.0, 50.0);
    let values = lines.iter().flat_map(|(_, _, p)| p.iter().map(|&(_, v)| v));
    let (low, high) = values.fold((f64::MAX, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (decade_low, decade_high) = (
        low.log10().floor(),
        high.log10().ceil().max(low.log10().floor() + 1.0),
    );
    let x = |i: usize| left + (width - left - right) * i as f64 / (THREADS.len() - 1) as f64;
    let y = |v: f64| {
        top + (height - top - bottom) * (decade_high - v.log10()) / (decade_high - decade_low)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">begin + complete cycles per second \
         (log scale), fsync on, one machine</text>\n"
    );
    let mut decade = decade_low;
    while decade <= decade_high {
        for step in [1.0, 2.0, 5.0] {
            let v = 10f64.powf(decade) * step;
            if v.log10() > decade_high + 1e-9 {
                continue;
            }
            let at = y(v);
            svg += &format!(
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{at:.1}\" y2=\"{at:.1}\" stroke=\"#ddd\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
                width - right,
                left - 6.0,
                at + 4.0
            );
        }
        decade += 1.0;
    }
    for (i, threads) in THREADS.iter().enumerate() {
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{threads}</text>\n",
            x(i),
            height - bottom + 18.0
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">threads</text>\n",
        (left + width - right) / 2.0,
        height - 12.0
    );
    for (n, (label, colour, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(i, v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for &(i, v) in points {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>\n",
                x(i),
                y(v)
            );
        }
        let legend = top + 20.0 * n as f64 + 10.0;
        svg += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{legend}\" y2=\"{legend}\" stroke=\"{colour}\" \
             stroke-width=\"2.5\"/><text x=\"{}\" y=\"{}\">{label}</text>\n",
            width - right + 12.0,
            width - right + 32.0,
            width - right + 38.0,
            legend + 4.0
        );
    }
    svg += "</svg>\n";
    let path = std::env::var("TOLLGATE_COMPARE_SVG").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/compare-cycles.svg").into()
    });
    match std::fs::write(&path, svg) {
        Ok(()) => eprintln!("chart written to {path}"),
        Err(error) => eprintln!("chart not written to {path}: {error}"),
    }
}
