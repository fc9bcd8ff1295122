//! Scale: compaction throughput and its effect on latency, and the store at 10 million records.
//!
//! ```text
//! cargo bench --bench scale                        # the full run: minutes, several GB of disk
//! TOLLGATE_SCALE_RECORDS=1000000 cargo bench --bench scale   # a smaller "large" store
//! TOLLGATE_SCALE_CACHE_MIB=1024 cargo bench --bench scale     # page cache (default 64 MiB)
//! TOLLGATE_SCALE_ONLY=compaction cargo bench --bench scale    # or `large`: one half only
//! TOLLGATE_SCALE_WAL=0 cargo bench --bench scale              # redb directly, no write-ahead log
//! TOLLGATE_SCALE_LOG_MIB=64 cargo bench --bench scale         # log_memory (default 4 MiB)
//! TOLLGATE_SCALE_BASE=/tmp/10m.redb cargo bench --bench scale # keep the loaded store, reuse it
//! TOLLGATE_SCALE_SECONDS=20 cargo bench --bench scale         # each workload's length (5 s)
//! TOLLGATE_SCALE_RATE_ONLY=1 cargo bench --bench scale        # skip the memory and kill children
//! ```
//!
//! Targets (issue "TTL compaction"):
//! 1. `compact_now` removes 1M expired records at ≥ 200,000 records/s;
//! 2. while a sweep of 1M expired records runs, begin+complete p99 at 8 threads stays within 2x of
//!    the same workload with no sweep (same run, same store);
//! 3. at 10M live records, begin+complete throughput at 64 threads is ≥ 70% of the figure at 10k;
//! 4. opening the 10M store after a clean shutdown takes < 1 s; after a kill -9 it is measured,
//!    with and without quick-repair;
//! 5. resident memory with 10M records stays within the cache size + 64 MiB.
//!
//! The memory and kill measurements run in a child process (this binary, re-invoked), so that the
//! parent's bulk load does not count and the kill is a real SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::{DEFAULT_CACHE_SIZE, ManualClock, Store, StoreBuilder};

const BODY: &[u8] = &[b'x'; 64];

fn key(prefix: &str, i: u64) -> IdempotencyKey {
    IdempotencyKey::new("scale", &format!("{prefix}-{i}")).expect("valid key")
}

/// The page cache for every store of the run: `TOLLGATE_SCALE_CACHE_MIB`, default 64 MiB.
fn cache_size() -> usize {
    std::env::var("TOLLGATE_SCALE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(DEFAULT_CACHE_SIZE, |mib| mib << 20)
}

/// Every store of the run: through the write-ahead log unless `TOLLGATE_SCALE_WAL=0`.
fn base_builder() -> StoreBuilder {
    let wal = std::env::var("TOLLGATE_SCALE_WAL").map_or(true, |v| v != "0");
    let builder = Store::builder().write_ahead_log(wal);
    match std::env::var("TOLLGATE_SCALE_LOG_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(mib) => builder.log_memory(mib << 20),
        None => builder,
    }
}

fn builder(clock: &ManualClock) -> StoreBuilder {
    base_builder()
        .clock(clock.clone())
        .background_compaction(false)
        .cache_size(cache_size())
}

fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

/// `threads` threads doing begin+complete on fresh keys until `until()` is true. Returns cycles
/// per second and the sorted latencies of every cycle.
fn workload(
    store: &Store,
    threads: usize,
    prefix: &str,
    until: &(dyn Fn() -> bool + Sync),
) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let counter = AtomicU64::new(0);
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let counter = &counter;
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    let fingerprint = Fingerprint::of(b"POST /scale");
                    while !until() {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let begun = Instant::now();
                        match store
                            .begin(&key(&format!("{prefix}{t}"), n), &fingerprint)
                            .expect("begin")
                        {
                            Begin::Acquired(lease) => {
                                lease
                                    .complete(StoredResponse::new(201, BODY.to_vec()))
                                    .expect("complete");
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                        mine.push(begun.elapsed());
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    (rate, latencies)
}

/// The write-ahead log beside a store file (copied with it).
fn log_of(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// How long each workload runs: `TOLLGATE_SCALE_SECONDS`, default 5.
fn workload_seconds() -> u64 {
    std::env::var("TOLLGATE_SCALE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn for_seconds(seconds: u64) -> impl Fn() -> bool + Sync {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    move || Instant::now() >= deadline
}

fn bulk(store: &Store, prefix: &'static str, count: u64, ttl: Duration) -> Duration {
    let started = Instant::now();
    let written = store
        .bulk_load(count, ttl, move |i| {
            (
                key(prefix, i),
                Fingerprint::of(b"POST /scale"),
                StoredResponse::new(201, BODY.to_vec()),
            )
        })
        .expect("bulk load");
    assert_eq!(written, count);
    started.elapsed()
}

fn compaction(dir: &Path) {
    println!("\n== compaction of 1,000,000 expired records");
    let clock = clock();
    let store = builder(&clock)
        .open(dir.join("compaction.redb"))
        .expect("open");
    let loaded = bulk(&store, "expiring", 1_000_000, Duration::from_secs(1));
    println!("bulk load 1M: {loaded:.1?}");

    let (rate, quiet) = workload(&store, 8, "quiet", &for_seconds(5));
    let quiet_p99 = percentile(&quiet, 0.99);
    println!(
        "8 threads, no sweep:     {rate:>8.0} cycles/s  p50 {:>8.2?}  p99 {quiet_p99:>8.2?}",
        percentile(&quiet, 0.5)
    );

    clock.advance(Duration::from_secs(2));
    let sweeping = AtomicBool::new(true);
    let (report, (rate, busy)) = std::thread::scope(|scope| {
        let sweeper = scope.spawn(|| {
            let report = store.compact_now().expect("sweep");
            sweeping.store(false, Ordering::Relaxed);
            report
        });
        let load = workload(&store, 8, "busy", &|| !sweeping.load(Ordering::Relaxed));
        (sweeper.join().expect("sweeper"), load)
    });
    let busy_p99 = percentile(&busy, 0.99);
    println!(
        "8 threads, during sweep: {rate:>8.0} cycles/s  p50 {:>8.2?}  p99 {busy_p99:>8.2?}",
        percentile(&busy, 0.5)
    );
    println!(
        "  sweep under load: {} records in {:.2?} ({:.0}/s, {} steps); p99 ratio {:.2}x (target <= 2x)",
        report.removed_records,
        report.elapsed,
        report.removed_records as f64 / report.elapsed.as_secs_f64(),
        report.batches,
        busy_p99.as_secs_f64() / quiet_p99.as_secs_f64()
    );

    let loaded = bulk(&store, "second", 1_000_000, Duration::from_secs(1));
    println!("bulk load 1M: {loaded:.1?}");
    clock.advance(Duration::from_secs(2));
    let report = store.compact_now().expect("sweep");
    println!(
        "compact_now alone: {} records in {:.2?} = {:.0} records/s (target >= 200,000)",
        report.removed_records,
        report.elapsed,
        report.removed_records as f64 / report.elapsed.as_secs_f64()
    );
    store.close().expect("close");
}

fn child_command(mode: &str, path: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command
        .arg(mode)
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Child: opens the store, runs 64 threads of begin+complete for 5 s, prints its resident memory.
fn child_rss(path: &Path) {
    let store = base_builder()
        .background_compaction(false)
        .cache_size(cache_size())
        .open(path)
        .expect("open");
    let (rate, _) = workload(&store, 64, "rss", &for_seconds(5));
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ? kB")
        .to_owned();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ? kB")
        .to_owned();
    println!("RSS {rss} | {hwm} | {rate:.0} cycles/s");
    store.close().expect("close");
}

/// Child: opens the store and writes until it is killed.
fn child_kill(path: &Path, quick_repair: bool) {
    let store = base_builder()
        .background_compaction(false)
        .quick_repair(quick_repair)
        .open(path)
        .expect("open");
    std::thread::scope(|scope| {
        // Writes for as long as the process lives; the parent kills it mid-stream.
        let prefix = format!("killed{}", std::process::id());
        scope.spawn(move || workload(&store, 8, &prefix, &|| false));
        std::thread::sleep(Duration::from_millis(500));
        println!("WRITING");
    });
}

/// Child: opens the store with its log's applier held, and writes with 64 threads until the
/// log is full (writers wait: no cycle completes for a second), says so, and waits for the kill.
fn child_full_log(path: &Path) {
    let store = base_builder()
        .background_compaction(false)
        .open(path)
        .expect("open");
    assert!(
        store.hold_log_applier_for_tests(true),
        "the store has a log"
    );
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let prefix = format!("full{}", std::process::id());
        let (store, done) = (&store, &done);
        for t in 0..64 {
            let prefix = format!("{prefix}-{t}");
            scope.spawn(move || {
                let fingerprint = Fingerprint::of(b"POST /scale");
                for n in 0.. {
                    if let Ok(Begin::Acquired(lease)) = store.begin(&key(&prefix, n), &fingerprint)
                    {
                        let _ = lease.complete(StoredResponse::new(201, BODY.to_vec()));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut last = 0;
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = done.load(Ordering::Relaxed);
            if now == last && now > 0 {
                println!("FULL {now}");
                break;
            }
            last = now;
        }
        // The parent kills the process now.
        std::thread::sleep(Duration::from_secs(3600));
    });
}

/// Fills the log of the store at `path` (its applier held) in a child, kills it, and times the
/// open that replays the whole log into redb.
fn full_log_and_time_open(path: &Path) -> (Duration, u64, u64) {
    let mut child = child_command("--child-full-log", path)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let cycles = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("FULL ").and_then(|n| n.parse().ok()))
        .expect("the child filled its log");
    child.kill().expect("kill");
    child.wait().expect("wait");
    let log = std::fs::metadata(Store::log_path(path)).map_or(0, |m| m.len());
    let started = Instant::now();
    let store = base_builder()
        .background_compaction(false)
        .open(path)
        .expect("reopen");
    let elapsed = started.elapsed();
    store.close().expect("close");
    (elapsed, cycles, log)
}

fn kill_and_time_open(path: &Path, quick_repair: bool) -> Duration {
    let mode = if quick_repair {
        "--child-kill-quick"
    } else {
        "--child-kill"
    };
    let mut child = child_command(mode, path).spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let writing = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("WRITING"));
    assert!(writing, "the child never started writing");
    child.kill().expect("kill");
    child.wait().expect("wait");
    let started = Instant::now();
    let store = base_builder()
        .background_compaction(false)
        .quick_repair(quick_repair)
        .open(path)
        .expect("reopen");
    let elapsed = started.elapsed();
    store.close().expect("close");
    elapsed
}

fn large(dir: &Path, records: u64) {
    println!("\n== {records} live records vs 10,000");
    let clock = clock();
    let small = builder(&clock).open(dir.join("small.redb")).expect("open");
    bulk(&small, "live", 10_000, Duration::from_secs(30 * 24 * 3600));
    let (small_rate, small_lat) = workload(&small, 64, "small", &for_seconds(workload_seconds()));
    small.close().expect("close");

    let path: PathBuf = dir.join("large.redb");
    // `TOLLGATE_SCALE_BASE=FILE`: the loaded store is copied from FILE if it exists (and saved
    // there after a bulk load if not), so that runs after the first skip the load.
    let base = std::env::var_os("TOLLGATE_SCALE_BASE").map(PathBuf::from);
    let loaded = match &base {
        Some(base) if base.exists() => {
            let started = Instant::now();
            std::fs::copy(base, &path).expect("copy the saved store");
            std::fs::copy(log_of(base), log_of(&path)).expect("copy the saved log");
            println!("copied the loaded store from {}", base.display());
            started.elapsed()
        }
        _ => {
            let store = builder(&clock).open(&path).expect("open");
            let loaded = bulk(&store, "live", records, Duration::from_secs(30 * 24 * 3600));
            store.close().expect("close");
            if let Some(base) = &base {
                std::fs::copy(&path, base).expect("save the loaded store");
                std::fs::copy(log_of(&path), log_of(base)).expect("save the log");
            }
            loaded
        }
    };
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "bulk load: {loaded:.1?}; file {:.2} GiB",
        file as f64 / (1u64 << 30) as f64
    );

    let started = Instant::now();
    let store = builder(&clock).open(&path).expect("open");
    let open_clean = started.elapsed();
    println!("workload on the large store starts");
    let (large_rate, large_lat) = workload(&store, 64, "large", &for_seconds(workload_seconds()));
    store.close().expect("close");
    println!(
        "64 threads: 10k {small_rate:.0} cycles/s (p99 {:.2?}), large {large_rate:.0} cycles/s (p99 {:.2?}): {:.0}% (target >= 70%)",
        percentile(&small_lat, 0.99),
        percentile(&large_lat, 0.99),
        100.0 * large_rate / small_rate
    );
    println!("open after clean shutdown: {open_clean:.2?} (target < 1 s)");
    if std::env::var("TOLLGATE_SCALE_RATE_ONLY").is_ok_and(|v| v == "1") {
        return;
    }

    let mut child = child_command("--child-rss", &path).spawn().expect("spawn");
    let line = BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("RSS"));
    child.wait().expect("wait");
    println!(
        "child with {records} records, cache {} MiB: {} (target <= cache + 64 MiB)",
        cache_size() >> 20,
        line.unwrap_or_default()
    );

    let unclean = kill_and_time_open(&path, false);
    println!("open after kill -9, quick-repair off: {unclean:.2?}");
    let unclean_quick = kill_and_time_open(&path, true);
    println!("open after kill -9, quick-repair on:  {unclean_quick:.2?}");
    if std::env::var("TOLLGATE_SCALE_WAL").is_ok_and(|v| v == "0") {
        return;
    }
    let (full, cycles, log) = full_log_and_time_open(&path);
    println!(
        "open after kill -9 with a full log ({cycles} cycles unapplied, log file {:.1} MiB): {full:.2?}",
        log as f64 / f64::from(1 << 20)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child-rss") => return child_rss(Path::new(&args[2])),
        Some("--child-kill") => return child_kill(Path::new(&args[2]), false),
        Some("--child-kill-quick") => return child_kill(Path::new(&args[2]), true),
        Some("--child-full-log") => return child_full_log(Path::new(&args[2])),
        _ => {}
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and should not run this.
    if !args.iter().any(|arg| arg == "--bench") {
        return;
    }
    let records = std::env::var("TOLLGATE_SCALE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir =
        tempfile::tempdir_in(std::env::var("TOLLGATE_SCALE_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let only = std::env::var("TOLLGATE_SCALE_ONLY").unwrap_or_default();
    if only != "large" {
        compaction(dir.path());
    }
    if only != "compaction" {
        large(dir.path(), records);
    }
}
