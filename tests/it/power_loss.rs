//! Simulated power loss at every sync point of a scripted workload.
//!
//! The workload runs on a `SimDisk` whose power is cut during sync number `n`; for every `n` from
//! the first sync of the run to the last, the store reopens on what the disk kept: only the synced
//! bytes, and, for a few seeds each, the synced bytes plus a random mix of the unsynced writes kept
//! whole, dropped or torn at sector boundaries (redb's media assumptions: atomic bytes, durable
//! after sync, no change outside a written range). Against the log of what the workload was told
//! before the power went, the reopened store must show that:
//! 1. it reopens;
//! 2. every acknowledged completion or failure replays exactly the acknowledged response;
//! 3. every key whose execution started (its `begin` returned a lease, so the side effect ran) is
//!    either replayed or taken over with `recovered() == true` and at least the last acknowledged
//!    checkpoint: a side effect never runs twice unknowingly;
//! 4. lease tokens after the reopen are above every token handed out before it;
//! 5. no rate window allows more than its quota, counting allowances before and after the cut;
//! 6. the maintained record counts equal the records on disk, state by state (counted by listing
//!    them, right after the reopen and after the workload's keys are resolved), and a full sweep
//!    leaves zero of each.
//!
//! The small workload is crashed at every sync point; the large one (`TOLLGATE_POWER_LOSS_CASES`
//! random sync points, default 12) at random ones.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use tollgate::idempotency::{
    Begin, Fingerprint, IdempotencyKey, Outcome, RecordState, StoredResponse,
};
use tollgate::ratelimit::{Limit, Quota, RateDurability};
use tollgate::testing::SimDisk;
use tollgate::{BeginOptions, ManualClock, Store, StoreBuilder};

const QUOTA: u32 = 3;
const WINDOW: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(7);
/// Seeds for torn images per sync point (0 is the synced bytes only).
const SEEDS: [u64; 4] = [0, 1, 2, 3];

/// How the store writes: `Direct` into redb at each commit; `Logged` through the write-ahead log
/// (acknowledged at the log's sync, applied to redb by the applier thread), with small segments
/// so the ring wraps within the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Logged,
}

fn builder(clock: &ManualClock, durability: RateDurability, mode: Mode) -> StoreBuilder {
    Store::builder()
        .write_ahead_log(mode == Mode::Logged)
        .log_segment_bytes_for_tests(4096)
        .log_memory(8192)
        .clock(clock.clone())
        .lease_ttl(Duration::from_secs(30))
        .record_ttl(Duration::from_secs(3600))
        .rate_durability(durability)
        .background_compaction(false)
}

fn limit() -> Limit {
    Limit::new("power", Quota::fixed_window(QUOTA, WINDOW)).unwrap()
}

fn key(i: usize) -> IdempotencyKey {
    IdempotencyKey::new("power", &format!("key-{i}")).unwrap()
}

fn request(i: usize) -> Fingerprint {
    Fingerprint::of(format!("request-{i}").as_bytes())
}

fn response(i: usize) -> StoredResponse {
    StoredResponse::new(201, format!("response-{i}").into_bytes())
}

fn window_of(clock: &ManualClock) -> u64 {
    let now = tollgate::Clock::now(clock)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    now.as_secs() / WINDOW.as_secs()
}

/// What the workload was told before the power went.
#[derive(Debug, Default)]
struct Log {
    /// Keys whose `begin` returned a lease (their side effect ran).
    executed: BTreeMap<usize, u64>,
    /// Acknowledged completions and failures.
    finished: BTreeMap<usize, Outcome>,
    /// Outcomes attempted but not acknowledged (their commit was cut): may or may not be durable.
    attempted: BTreeMap<usize, Outcome>,
    /// The last acknowledged checkpoint per key, and one attempted after it.
    checkpoint: BTreeMap<usize, u32>,
    checkpoint_attempted: BTreeMap<usize, u32>,
    highest_token: u64,
    /// Rate allowances per (subject, window).
    allowed: HashMap<(usize, u64), u32>,
}

/// The scripted workload over `keys` keys; stops at the first error (the power cut).
fn workload(store: &Store, clock: &ManualClock, keys: usize, log: &mut Log) {
    let limit = limit();
    let ephemeral = BeginOptions {
        record_ttl: Some(Duration::from_secs(5)),
        ..BeginOptions::default()
    };
    for i in 0..keys {
        let Ok(Begin::Acquired(mut lease)) = store.begin(&key(i), &request(i)) else {
            return;
        };
        log.executed.insert(i, lease.token());
        log.highest_token = log.highest_token.max(lease.token());
        if i % 4 == 1 {
            log.checkpoint_attempted.insert(i, 1);
            if lease.save_checkpoint("step", &[1]).is_err() {
                return;
            }
            log.checkpoint.insert(i, 1);
        }
        let outcome = match i % 4 {
            0 | 1 => Some(Outcome::Completed),
            3 => Some(Outcome::Failed),
            _ => None, // Left running: the crash finds it mid-execution.
        };
        if let Some(outcome) = outcome {
            log.attempted.insert(i, outcome);
            let result = match outcome {
                Outcome::Completed => lease.complete(response(i)),
                Outcome::Failed => lease.fail(response(i)),
            };
            if result.is_err() {
                return;
            }
            log.finished.insert(i, outcome);
        }
        // A short-lived record for the sweep to remove.
        match store.begin_with(&key(1000 + i), &request(i), &ephemeral) {
            Ok(Begin::Acquired(lease)) => {
                if lease.complete(response(i)).is_err() {
                    return;
                }
            }
            _ => return,
        }
        match store.check(&limit, &format!("subject-{}", i % 2)) {
            Ok(decision) if decision.allowed() => {
                *log.allowed.entry((i % 2, window_of(clock))).or_default() += 1;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        clock.advance(STEP);
        if i % 5 == 4 && (store.flush().is_err() || store.compact_now().is_err()) {
            return;
        }
    }
}

/// Reopens `disk` (what the cut left of both files) and checks the invariants against `log`.
fn verify(
    disk: &SimDisk,
    clock: &ManualClock,
    (durability, mode): (RateDurability, Mode),
    keys: usize,
    log: &Log,
    context: &str,
) {
    let store = builder(clock, durability, mode)
        .open_simulated(disk)
        .unwrap_or_else(|e| panic!("{context}: the store does not reopen: {e}"));
    counts_match_records(&store, &format!("{context}, after the reopen"));
    for i in 0..keys {
        let answer = store
            .begin(&key(i), &request(i))
            .unwrap_or_else(|e| panic!("{context}: begin of key {i} failed: {e}"));
        match answer {
            Begin::Replay(replay) => {
                let expected = log.finished.get(&i).or_else(|| log.attempted.get(&i));
                assert_eq!(
                    Some(&replay.outcome()),
                    expected,
                    "{context}: key {i} replays an outcome never attempted"
                );
                assert_eq!(replay.response(), &response(i), "{context}: key {i}");
            }
            Begin::Acquired(lease) => {
                assert!(
                    !log.finished.contains_key(&i),
                    "{context}: key {i}'s acknowledged outcome is lost"
                );
                assert!(
                    lease.token() > log.highest_token,
                    "{context}: token {} reused (highest before the cut: {})",
                    lease.token(),
                    log.highest_token
                );
                if log.executed.contains_key(&i) {
                    assert!(
                        lease.recovered(),
                        "{context}: key {i} executed before the cut, but its new owner is not told"
                    );
                }
                let checkpoint = lease.checkpoint().map(|c| c.data[0]);
                if let Some(acked) = log.checkpoint.get(&i) {
                    assert_eq!(
                        checkpoint,
                        Some(u8::try_from(*acked).unwrap()),
                        "{context}: key {i} lost its checkpoint"
                    );
                } else if checkpoint.is_some() {
                    assert!(
                        log.checkpoint_attempted.contains_key(&i),
                        "{context}: key {i} has a checkpoint never saved"
                    );
                }
                lease.complete(response(i)).unwrap();
            }
            other => panic!("{context}: key {i}: unexpected {other:?}"),
        }
    }
    // No minted quota: allowances before and after the cut, per window.
    let limit = limit();
    for subject in 0..2 {
        let mut allowed = log
            .allowed
            .get(&(subject, window_of(clock)))
            .copied()
            .unwrap_or(0);
        for _ in 0..=QUOTA {
            if store
                .check(&limit, &format!("subject-{subject}"))
                .unwrap()
                .allowed()
            {
                allowed += 1;
            }
        }
        assert!(
            allowed <= QUOTA,
            "{context}: subject {subject}: {allowed} allowed in one window, quota {QUOTA}"
        );
    }
    counts_match_records(&store, &format!("{context}, after resolving every key"));
    // After every record expires, a sweep leaves none (and the counts follow).
    clock.advance(Duration::from_secs(10 * 24 * 3600));
    store.compact_now().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.running, stats.completed, stats.failed),
        (0, 0, 0),
        "{context}: record counts after a full sweep"
    );
    store.close().unwrap();
}

/// The maintained counts (`stats`) equal the records on disk by state, counted by listing them:
/// exact in both directions (a sweep alone would not see a count below the truth, since counts
/// saturate at zero).
fn counts_match_records(store: &Store, context: &str) {
    let mut listed = [0u64; 3];
    let mut after = None;
    loop {
        let page = store.list_records(after.as_ref(), 100).unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        for (_, info) in &page {
            let info = info
                .as_ref()
                .unwrap_or_else(|e| panic!("{context}: a record does not decode: {e}"));
            listed[match info.state {
                RecordState::Running => 0,
                RecordState::Completed => 1,
                RecordState::Failed => 2,
            }] += 1;
        }
    }
    let stats = store.stats().unwrap();
    assert_eq!(
        [stats.running, stats.completed, stats.failed],
        listed,
        "{context}: the maintained counts (running, completed, failed) differ from the records"
    );
}

/// Runs the workload with the power cut at `sync` (of either file), then verifies every image the
/// cut may leave.
fn crash_at(
    sync: u64,
    keys: usize,
    (durability, mode): (RateDurability, Mode),
    seeds: &[u64],
) -> bool {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let disk = SimDisk::new();
    disk.cut_power_at_sync(sync);
    let mut log = Log::default();
    let Ok(store) = builder(&clock, durability, mode).open_simulated(&disk) else {
        // Cut while the store was being created: on a real file system the file would not exist
        // yet (tests/it/interrupted_creation.rs), so there is nothing to reopen.
        return true;
    };
    workload(&store, &clock, keys, &mut log);
    drop(store);
    if !disk.is_dead() {
        return false;
    }
    for &seed in seeds {
        let verify_clock = ManualClock::new(tollgate::Clock::now(&clock));
        let context =
            format!("{mode:?}, {durability:?}, {keys} keys, power cut at sync {sync}, seed {seed}");
        verify(
            &disk.crashed(seed),
            &verify_clock,
            (durability, mode),
            keys,
            &log,
            &context,
        );
    }
    true
}

fn every_sync_point(mode: Mode) {
    for durability in [
        RateDurability::Immediate,
        RateDurability::Batched {
            max_delay: Duration::from_secs(3600),
        },
    ] {
        let mut points = 0;
        for sync in 1.. {
            if !crash_at(sync, 12, (durability, mode), &SEEDS) {
                break;
            }
            points += 1;
        }
        assert!(points > 20, "the workload syncs {points} times");
        println!(
            "{mode:?}, {durability:?}: {points} crash points, {} images each",
            SEEDS.len()
        );
    }
}

#[test]
fn power_cut_at_every_sync_point_loses_nothing_acknowledged() {
    every_sync_point(Mode::Direct);
}

/// The same through the write-ahead log: the cut comes at a sync of the log or of redb (the
/// applier's commits, recovery's), and tears what either file had unsynced.
#[test]
fn power_cut_at_every_sync_point_of_either_file_loses_nothing_acknowledged_by_the_log() {
    every_sync_point(Mode::Logged);
}

#[test]
fn power_cut_at_random_sync_points_of_a_larger_workload() {
    random_sync_points(Mode::Direct);
}

#[test]
fn power_cut_at_random_sync_points_of_a_larger_workload_through_the_log() {
    random_sync_points(Mode::Logged);
}

fn random_sync_points(mode: Mode) {
    let cases: u64 = std::env::var("TOLLGATE_POWER_LOSS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let keys = 80;
    // Count the syncs of a full run first.
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let probe = SimDisk::new();
    let durability = RateDurability::Batched {
        max_delay: Duration::from_secs(3600),
    };
    {
        let store = builder(&clock, durability, mode)
            .open_simulated(&probe)
            .unwrap();
        workload(&store, &clock, keys, &mut Log::default());
        store.close().unwrap();
    }
    let total = probe.syncs();
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    for case in 0..cases {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let sync = 1 + state % total;
        assert!(
            crash_at(sync, keys, (durability, mode), &[0, case + 1]),
            "sync {sync} of {total} was reached"
        );
    }
}
