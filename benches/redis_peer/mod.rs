//! The Redis rows of `compare` (feature `redis`): tollgate's counters on Redis against the naive
//! loop people write, on one local server (`TOLLGATE_TEST_REDIS`, else a throwaway
//! `redis-server` without persistence; skipped with a message if there is none).
//!
//! - `rate/tollgate-redis/64`: `check` over 10,000 subjects from 64 threads of one store, which
//!   pipelines what is waiting and runs it in shared script calls.
//! - `rate/naive-redis/64`: 64 threads, one connection each, one `EVALSHA` of a single-key GCRA
//!   script per check, on Redis `TIME` (the shape of go-redis/redis_rate's `allowN`).
//! - `rate/tollgate-redis-denied/64` and `…-denied-uncached/64`: a flood of checks that are all
//!   denied (64 threads on 64 exhausted subjects), with and without the denial cache.

use std::sync::Arc;
use std::time::Duration;

use tollgate::Store;
use tollgate::ratelimit::{Limit, Quota};

use super::{Row, SUBJECTS, drive, row, subjects};

/// A GCRA check in one script, as go-redis/redis_rate writes it (floating seconds; `TIME`).
const NAIVE_GCRA: &str = r"
local rate_limit_key = KEYS[1]
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local emission_interval = period / rate
local increment = emission_interval * cost
local burst_offset = emission_interval * burst
local t = redis.call('TIME')
local now = (t[1] - 1700000000) + t[2] / 1000000
local tat = redis.call('GET', rate_limit_key)
if not tat then tat = now else tat = tonumber(tat) end
tat = math.max(tat, now)
local new_tat = tat + increment
local allow_at = new_tat - burst_offset
local diff = now - allow_at
local remaining = diff / emission_interval
if remaining < 0 then
  return {0, 0, tostring(diff * -1), tostring(burst_offset - (tat - now))}
end
local reset_after = new_tat - now
if reset_after > 0 then
  redis.call('SET', rate_limit_key, new_tat, 'EX', math.ceil(reset_after))
end
return {cost, remaining, '-1', tostring(reset_after)}
";

fn server(name: &str) -> Option<&'static tollgate::testing::redis::Server> {
    let server = tollgate::testing::redis::server();
    if server.is_none() {
        eprintln!(
            "SKIPPED {name}: no Redis server (install redis-server or set TOLLGATE_TEST_REDIS)"
        );
    }
    server
}

fn skipped(name: String) -> Row {
    row(
        name,
        (
            0,
            Duration::from_secs(1),
            hdrhistogram::Histogram::new(3).expect("histogram"),
        ),
        None,
    )
}

fn namespace(what: &str) -> String {
    format!(
        "bench-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
    )
}

fn store(url: &str, what: &str, denial_cache: bool) -> Store {
    Store::builder()
        .rate_counters_redis(url)
        .redis_namespace(&namespace(what))
        .redis_denial_cache(denial_cache)
        .open_in_memory()
        .expect("open")
}

pub(crate) fn tollgate_rate(threads: usize, duration: Duration) -> Row {
    let name = format!("rate/tollgate-redis/{threads}");
    let Some(server) = server(&name) else {
        return skipped(name);
    };
    let store = store(&server.url, "rate", true);
    let limit = Limit::new("api", Quota::per_second(1_000_000)).expect("limit");
    let subjects = subjects();
    let worker = store.clone();
    let result = drive(threads, duration, 1, move |t, n| {
        let subject = &subjects[((n + t as u64 * 7919) % SUBJECTS as u64) as usize];
        assert!(worker.check(&limit, subject).expect("check").allowed());
    });
    let per_call = store
        .redis_calls_for_tests()
        .map(|(calls, _)| result.0 as f64 / calls.max(1) as f64);
    store.close().expect("close");
    row(name, result, per_call)
}

pub(crate) fn naive_rate(threads: usize, duration: Duration) -> Row {
    let name = format!("rate/naive-redis/{threads}");
    let Some(server) = server(&name) else {
        return skipped(name);
    };
    let prefix = namespace("naive");
    let connections: Vec<_> = (0..threads)
        .map(|_| {
            let mut connection = server.connection().expect("connect");
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(NAIVE_GCRA)
                .query(&mut connection)
                .expect("load");
            parking_lot::Mutex::new((connection, sha))
        })
        .collect();
    let connections = Arc::new(connections);
    let subjects = subjects();
    let result = drive(threads, duration, 1, move |t, n| {
        let subject = &subjects[((n + t as u64 * 7919) % SUBJECTS as u64) as usize];
        let mut guard = connections[t].lock();
        let (connection, sha) = &mut *guard;
        let reply: (i64, f64, String, String) = redis::cmd("EVALSHA")
            .arg(&*sha)
            .arg(1)
            .arg(format!("{prefix}:{subject}"))
            .arg(1_000_000)
            .arg(1_000_000)
            .arg(1)
            .arg(1)
            .query(connection)
            .expect("evalsha");
        assert_eq!(reply.0, 1, "allowed");
    });
    row(name, result, None)
}

/// Every check denied: 64 exhausted subjects, one per thread.
pub(crate) fn tollgate_denied(threads: usize, cached: bool, duration: Duration) -> Row {
    let name = format!(
        "rate/tollgate-redis-denied{}/{threads}",
        if cached { "" } else { "-uncached" }
    );
    let Some(server) = server(&name) else {
        return skipped(name);
    };
    let store = store(&server.url, "denied", cached);
    let limit = Limit::new("login", Quota::per_hour(1)).expect("limit");
    for t in 0..threads {
        let _ = store
            .check(&limit, &format!("attacker-{t}"))
            .expect("check");
    }
    let worker = store.clone();
    let result = drive(threads, duration, 1, move |t, _| {
        let decision = worker
            .check(&limit, &format!("attacker-{t}"))
            .expect("check");
        assert!(!decision.allowed());
    });
    let per_call = store
        .redis_calls_for_tests()
        .map(|(calls, _)| result.0 as f64 / calls.max(1) as f64);
    store.close().expect("close");
    row(name, result, per_call)
}
