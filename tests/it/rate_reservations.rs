//! A crash costs a subject a little, never everyone everything (`CrashPolicy::BoundedLoss`, the
//! default). A Batched session is killed with SIGKILL after charging, under each algorithm, an
//! idle subject (charged, then not for two seconds, then flushed) and an active one (charged just
//! before the kill, its reservation outstanding). After the reopen:
//! - a subject never seen has its whole quota;
//! - the idle one has exactly what it really had left;
//! - the active one has at most what it really had left (nothing minted), and at most
//!   `max(1, burst / 8)` units less;
//! - a subject reset, or given units back, just before the crash has that (a refund and a reset
//!   are written before they are answered), less at most one reservation: the subject is still
//!   active, and a flush of the writer's timer between the answer and the kill may renew its
//!   reservation ahead. (Asserting "exactly" failed about one run in ten on a loaded machine,
//!   before this session's changes too: 2 of 30 at the previous session's commit.)
//!
//! Within a reservation checks are answered from memory, and a reservation running low is renewed
//! ahead by the writer's flush; past it, `try_check_all` has no answer (the charge needs a write)
//! and `check` writes the next reservation and answers.
//!
//! The child is this test binary, re-run with `TOLLGATE_RESERVATION_CHILD` naming the store file.

use crate::fixture;

use std::path::Path;
use std::time::{Duration, SystemTime};

use tollgate::ratelimit::{Limit, Quota};
use tollgate::{ManualClock, Store};

const CHILD_ENV: &str = "TOLLGATE_RESERVATION_CHILD";
const TEST_NAME: &str = "a_killed_session_costs_only_subjects_charged_in_its_last_second";
/// An hour boundary, so that the windows of an hour start here.
const START: u64 = 1_800_000_000;
const BURST: u32 = 16;
/// `max(1, BURST / 8)`.
const RESERVATION: u32 = 2;
const SPENT: u32 = 5;

/// One limit per algorithm, each of 16 an hour (GCRA refills one unit in 225 s: none in the
/// two seconds of the test).
fn limits() -> [Limit; 3] {
    let hour = Duration::from_secs(3600);
    [
        Limit::new("gcra", Quota::per_hour(BURST)).unwrap(),
        Limit::new("fixed", Quota::fixed_window(BURST, hour)).unwrap(),
        Limit::new("sliding", Quota::sliding_window(BURST, hour)).unwrap(),
    ]
}

fn open(path: &Path, clock: &ManualClock) -> Store {
    Store::builder().clock(clock.clone()).open(path).unwrap()
}

fn clock_at(seconds_after_start: u64) -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(START + seconds_after_start))
}

/// In the child: charge "idle", let two seconds pass and flush (its reservation is released),
/// then charge "active" and wait to be killed.
fn child(path: &Path) -> ! {
    fixture::exit_with_parent();
    let clock = clock_at(0);
    let store = open(path, &clock);
    for limit in &limits() {
        for _ in 0..SPENT {
            assert!(store.check(limit, "idle").unwrap().allowed());
        }
    }
    clock.advance(Duration::from_secs(2));
    store.flush().unwrap();
    for limit in &limits() {
        for _ in 0..SPENT {
            assert!(store.check(limit, "active").unwrap().allowed());
            assert!(store.check(limit, "reset").unwrap().allowed());
            assert!(store.check(limit, "refunded").unwrap().allowed());
        }
        // A reset and a refund are written before they are answered: the crash keeps them.
        store.reset(limit, "reset").unwrap();
        store.refund(limit, "refunded", 3).unwrap();
    }
    println!("SPENT");
    loop {
        std::thread::park();
    }
}

#[test]
fn a_killed_session_costs_only_subjects_charged_in_its_last_second() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reserved.redb");
    let env = [(CHILD_ENV, path.as_os_str())];
    fixture::kill_test_child_at(module_path!(), TEST_NAME, &env, "SPENT");

    let store = open(&path, &clock_at(2));
    let really_left = BURST - SPENT;
    for limit in &limits() {
        let name = limit.name();
        let fresh = store.peek(limit, "never-seen").unwrap();
        assert_eq!(
            fresh.remaining(),
            BURST,
            "{name}: a subject never seen lost quota"
        );
        let idle = store.peek(limit, "idle").unwrap();
        assert_eq!(idle.remaining(), really_left, "{name}: the idle subject");
        let active = store.peek(limit, "active").unwrap().remaining();
        assert!(active <= really_left, "{name}: {active} left, quota minted");
        assert!(
            active + RESERVATION >= really_left,
            "{name}: {active} left of {really_left}: more than a reservation lost"
        );
        // Both were written before they were answered. Both subjects are still active, so a
        // flush of the writer's timer after that may have renewed a reservation ahead (a crash
        // costs an active subject at most that): within it, and a lost reset or refund would
        // be below it (RESERVATION < 3 < BURST - SPENT).
        let reset = store.peek(limit, "reset").unwrap().remaining();
        assert!(
            reset <= BURST && reset + RESERVATION >= BURST,
            "{name}: the reset did not survive the crash ({reset} left)"
        );
        let refunded = store.peek(limit, "refunded").unwrap().remaining();
        assert!(
            refunded <= really_left + 3 && refunded + RESERVATION >= really_left + 3,
            "{name}: the refund did not survive the crash ({refunded} left)"
        );
        // And it is a real bound, not a lockout: the active subject is still served.
        assert!(store.check(limit, "active").unwrap().allowed(), "{name}");
    }
    store.close().unwrap();
}

#[test]
fn checks_within_a_reservation_are_answered_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock_at(0);
    let store = open(&dir.path().join("memory.redb"), &clock);
    for limit in &limits() {
        let name = limit.name();
        // Not in memory: no answer. The blocking check loads the counter and reserves 1 + 2.
        assert!(store.try_check_all(&[(limit, "s")], 1).unwrap().is_none());
        let writes = store.stats().unwrap().writes;
        assert_eq!(store.check(limit, "s").unwrap().remaining(), BURST - 1);
        assert_eq!(
            store.stats().unwrap().writes,
            writes + 1,
            "{name}: one reservation"
        );
        // The two reserved units are answered from memory, without a write.
        for left in [BURST - 2, BURST - 3] {
            let fast = store.try_check_all(&[(limit, "s")], 1).unwrap();
            assert_eq!(fast.map(|d| d.remaining()), Some(left), "{name}");
        }
        assert_eq!(store.stats().unwrap().writes, writes + 1, "{name}");
        // The last of them left less than half a reservation: the next one is written ahead by
        // the writer's flush (here asked for), and memory goes on answering.
        store.flush().unwrap();
        assert_eq!(
            store.stats().unwrap().writes,
            writes + 2,
            "{name}: one renewal"
        );
        let fast = store.try_check_all(&[(limit, "s")], 1).unwrap();
        assert_eq!(fast.map(|d| d.remaining()), Some(BURST - 4), "{name}");
        // Past the reservation (three units more: 7 spent, 6 reserved), memory has no answer
        // and charges nothing; the blocking check writes the next reservation and answers.
        assert!(store.try_check_all(&[(limit, "s")], 3).unwrap().is_none());
        assert_eq!(store.peek(limit, "s").unwrap().remaining(), BURST - 4);
        assert_eq!(store.check_n(limit, "s", 3).unwrap().remaining(), BURST - 7);
        assert_eq!(store.stats().unwrap().writes, writes + 3, "{name}");
    }
    store.close().unwrap();
}
