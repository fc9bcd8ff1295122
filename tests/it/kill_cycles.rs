//! Crash safety under real process kills. A child process (this test binary, re-run in child mode)
//! runs a workload against the store; the parent kills it with SIGKILL at a pseudo-random moment,
//! reopens the store, checks the invariants against what the child wrote down, and repeats.
//!
//! The child records every side effect in an append-only log, fsync'd *before* it acknowledges
//! anything, so the log is the ground truth of what happened:
//! - `exec KEY TOKEN RECOVERED` after `begin` returned a lease and before `complete` (the side
//!   effect itself);
//! - `ack KEY TOKEN` after `complete` returned (an acknowledged completion);
//! - `allow WINDOW` after an allowed rate check.
//!
//! Invariants checked after every kill:
//! 1. the store reopens;
//! 2. every acknowledged completion replays, with the response of the execution that was acked;
//! 3. a key executed more than once was told every time after the first (`recovered() == true`;
//!    the first may be told too, when a kill landed between `begin` and its log line);
//! 4. lease tokens are never reused, and grow with every execution of a key;
//! 5. in every rate window (each spans two sessions, so a kill lands in its middle) the allowances
//!    the log confirms never exceed the quota. Batched counters are never flushed by a timer
//!    within a session (`max_delay` is an hour), so what a killed session spent is on disk only
//!    as far as the default policy's (`BoundedLoss`) reservations put it there: without them the
//!    next session would grant the quota again (this check fails with reservations disabled).
//!    `tests/it/rate_reservations.rs` and `tests/it/rate_crash_policy.rs` check the policies
//!    deterministically; here under random kills.
//!
//! `TOLLGATE_KILL_CYCLES` sets the number of cycles (default 20, what CI runs).

use crate::fixture;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::ratelimit::{Limit, Quota, RateDurability};
use tollgate::{ManualClock, Store, StoreBuilder};

const CHILD_ENV: &str = "TOLLGATE_KILL_CHILD";
const CYCLE_ENV: &str = "TOLLGATE_KILL_CYCLE";
/// The rate window; the clock moves half of it per cycle, so each window sees two sessions.
const WINDOW: Duration = Duration::from_secs(3600);
const TEST_NAME: &str = "sigkill_cycles_never_lose_acknowledged_work_or_mint_quota";
const KEYS: u64 = 200_000;
const QUOTA: u32 = 10;

/// A multiple of the window, so that windows line up with pairs of cycles.
const START: u64 = 1_800_000_000;

/// The clock of session `cycle` when it opens. It stands still within a session and moves half a
/// rate window between sessions, so each window holds two sessions and a crash lands in its
/// middle. An even session opens a second before its window starts (the crash policy's drain,
/// dated at the open, then covers the previous window only) and steps into it after the open, so
/// it has the whole quota; the odd session after it opens mid-window, after a kill that lost
/// whatever the even one spent.
fn session_clock(cycle: u64) -> ManualClock {
    let window_start = START + (cycle / 2) * WINDOW.as_secs();
    let at = if cycle % 2 == 0 {
        window_start - 1
    } else {
        window_start + WINDOW.as_secs() / 2
    };
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(at))
}

fn builder(clock: &ManualClock) -> StoreBuilder {
    // Records are kept far longer than any run's simulated time: an expired record would rightly
    // behave as absent, which is not what this test is about.
    Store::builder()
        .clock(clock.clone())
        .record_ttl(Duration::from_secs(10 * 365 * 24 * 3600))
        // No timed flush within a session: every allowance is in memory only when the kill
        // lands, so the next session of the same window sees nothing of it on disk and only the
        // crash policy (drain on recovery) keeps it from granting the quota a second time.
        .rate_durability(RateDurability::Batched {
            max_delay: Duration::from_secs(24 * 3600),
        })
}

fn key(n: u64) -> IdempotencyKey {
    IdempotencyKey::new("kill", &format!("k{n}")).unwrap()
}

fn limit() -> Limit {
    Limit::new("kills", Quota::fixed_window(QUOTA, WINDOW)).unwrap()
}

/// An append-only log whose every line is on disk before `write` returns.
struct Log(Mutex<File>);

impl Log {
    fn write(&self, line: &str) {
        let mut file = self.0.lock().unwrap();
        file.write_all(format!("{line}\n").as_bytes()).unwrap();
        file.sync_data().unwrap();
    }
}

fn child(dir: &Path, cycle: u64) -> ! {
    fixture::exit_with_parent();
    let clock = session_clock(cycle);
    let store = builder(&clock).open(dir.join("store.redb")).unwrap();
    if cycle % 2 == 0 {
        clock.advance(Duration::from_secs(1));
    }
    let log_path = dir.join("effects.log");
    let earlier = read_log(dir);
    let log = Log(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap(),
    ));
    // Keys an earlier session executed but did not acknowledge: retried first, so that every
    // kill's in-flight work is recovered in the next session.
    let unfinished: Vec<u64> = earlier
        .executions
        .keys()
        .filter(|name| !earlier.acks.contains_key(*name))
        .filter_map(|name| name.trim_start_matches('k').parse().ok())
        .collect();
    let start = earlier.executions.len() as u64;
    let execute = |n: u64| match store.begin(&key(n), &Fingerprint::of(b"charge")).unwrap() {
        Begin::Acquired(lease) => {
            let token = lease.token();
            log.write(&format!("exec k{n} {token} {}", lease.recovered()));
            lease
                .complete(StoredResponse::new(201, token.to_string()))
                .unwrap();
            log.write(&format!("ack k{n} {token}"));
        }
        Begin::Replay(_) | Begin::InFlight { .. } => {}
        Begin::Mismatch => panic!("same fingerprint every time"),
    };
    for n in unfinished {
        execute(n);
    }
    println!("STARTED");
    let window = cycle / 2;
    std::thread::scope(|scope| {
        let (store, log) = (&store, &log);
        // One thread spends the shared rate limit as fast as it can.
        scope.spawn(move || {
            loop {
                if store.check(&limit(), "shared").unwrap().allowed() {
                    log.write(&format!("allow {window}"));
                }
            }
        });
        for thread in 0..3u64 {
            scope.spawn(move || {
                let mut n = start + thread;
                loop {
                    execute(n % KEYS);
                    n += 3;
                }
            });
        }
    });
    unreachable!("the workload runs until the process is killed")
}

fn run_child_and_kill(dir: &Path, cycle: u64, after: Duration) {
    let cycle = cycle.to_string();
    let env = [
        (CHILD_ENV, dir.as_os_str()),
        (CYCLE_ENV, std::ffi::OsStr::new(&cycle)),
    ];
    let mut child = fixture::spawn_test_child(module_path!(), TEST_NAME, &env);
    fixture::wait_for_line(&mut child, "STARTED");
    std::thread::sleep(after); // the kill moment: not an ordering crutch, the point of the test
    child.kill().unwrap();
    child.wait().unwrap();
}

struct Seen {
    /// Per key: (token, recovered) of every execution, in log order.
    executions: HashMap<String, Vec<(u64, bool)>>,
    acks: HashMap<String, u64>,
    /// Acknowledgements in log order.
    ack_order: Vec<(String, u64)>,
    /// Confirmed allowances per rate window.
    allowed: HashMap<u64, u64>,
}

fn read_log(dir: &Path) -> Seen {
    let text = std::fs::read_to_string(dir.join("effects.log")).unwrap_or_default();
    let mut seen = Seen {
        executions: HashMap::new(),
        acks: HashMap::new(),
        ack_order: Vec::new(),
        allowed: HashMap::new(),
    };
    for line in text.lines() {
        // A line torn by the kill does not parse and is ignored: it is not a completed record.
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["exec", key, token, recovered] => {
                if let (Ok(token), Ok(recovered)) = (token.parse(), recovered.parse()) {
                    seen.executions
                        .entry((*key).to_owned())
                        .or_default()
                        .push((token, recovered));
                }
            }
            ["ack", key, token] => {
                if let Ok(token) = token.parse() {
                    seen.acks.insert((*key).to_owned(), token);
                    seen.ack_order.push(((*key).to_owned(), token));
                }
            }
            ["allow", window] => {
                if let Ok(window) = window.parse() {
                    *seen.allowed.entry(window).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    seen
}

/// Checks the invariants after `cycle`'s kill; acknowledgements from position `from` on (all of
/// them when `from` is 0) are replayed against the store.
fn verify(dir: &Path, cycle: u64, from: usize) -> usize {
    let seen = read_log(dir);
    // 1. The store reopens.
    // At the next session's opening time: the recovery this open records is the next session's.
    let store = builder(&session_clock(cycle + 1))
        .open(dir.join("store.redb"))
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
    // 2. Every acknowledged completion replays the acked execution's response.
    for (name, _) in seen.ack_order.iter().skip(from) {
        // The latest acknowledgement of the key is what must replay.
        let token = &seen.acks[name];
        let key = IdempotencyKey::new("kill", name).unwrap();
        match store.begin(&key, &Fingerprint::of(b"charge")).unwrap() {
            Begin::Replay(replay) => {
                assert_eq!(
                    replay.response().body,
                    token.to_string().as_bytes(),
                    "cycle {cycle}: {name}"
                );
            }
            other => panic!("cycle {cycle}: acknowledged {name} does not replay: {other:?}"),
        }
    }
    // 3 and 4. Repeated executions were told; tokens are unique and grow per key.
    let mut tokens = HashSet::new();
    for (name, executions) in &seen.executions {
        for (index, (token, recovered)) in executions.iter().enumerate() {
            assert!(
                tokens.insert(*token),
                "cycle {cycle}: token {token} reused ({name})"
            );
            // The first logged execution may itself be a recovery (a kill between `begin` and
            // the log line leaves a RUNNING record with no side effect); every later one must be.
            assert!(
                index == 0 || *recovered,
                "cycle {cycle}: execution {index} of {name} was not told"
            );
            if index > 0 {
                assert!(
                    *token > executions[index - 1].0,
                    "cycle {cycle}: {name} token went down"
                );
            }
        }
    }
    // 5. No minted quota: in every window, the allowances the log confirms (before and after the
    // crash in its middle) never exceed the quota.
    for (window, allowed) in &seen.allowed {
        assert!(
            *allowed <= u64::from(QUOTA),
            "cycle {cycle}: window {window}: {allowed} allowed, quota {QUOTA}"
        );
    }
    store.close().unwrap();
    seen.ack_order.len()
}

#[test]
fn sigkill_cycles_never_lose_acknowledged_work_or_mint_quota() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let cycle = std::env::var(CYCLE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        child(Path::new(&dir), cycle);
    }
    let cycles: u64 = std::env::var("TOLLGATE_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut verified = 0;
    for cycle in 0..cycles {
        // Kill moments spread over 20–250 ms (a fixed sequence, so a failure reproduces).
        let after = Duration::from_millis(20 + (cycle * 7919) % 230);
        run_child_and_kill(dir.path(), cycle, after);
        // New acknowledgements every cycle; all of them every 50th cycle and after the last.
        let full = cycle % 50 == 49 || cycle + 1 == cycles;
        verified = verify(dir.path(), cycle, if full { 0 } else { verified });
    }
    let executions = read_log(dir.path())
        .executions
        .values()
        .map(Vec::len)
        .sum::<usize>();
    let seen = read_log(dir.path());
    let recovered = seen.executions.values().filter(|e| e.len() > 1).count();
    let most = seen.allowed.values().max().copied().unwrap_or(0);
    println!(
        "{cycles} kills: {executions} executions, {} acknowledged, {recovered} keys recovered after a kill, most allowed in one window {most} of {QUOTA}",
        seen.acks.len(),
    );
    assert!(executions > 0, "the workload never ran");
    // The harness exercised what it checks: kills landed mid-execution, and the limit was reached.
    if cycles >= 10 {
        assert!(
            recovered > 0,
            "no kill landed between an execution and its completion"
        );
        assert_eq!(most, u64::from(QUOTA), "the rate limit was never exhausted");
    }
}
