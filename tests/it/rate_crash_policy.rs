//! A batched session killed with SIGKILL loses the decisions it had not flushed. With the default
//! `CrashPolicy::DrainOnRecovery` those lost decisions never turn into free quota: every counter is
//! treated as spent at the recovery time. With `TrustLastFlush` the last flush is believed, and the
//! lost decisions are forgiven, which this test shows too, so the switch demonstrably matters.
//!
//! The child is this test binary, re-run with `TOLLGATE_RATE_CHILD` naming the store file.

use crate::fixture;

use std::path::Path;
use std::time::{Duration, SystemTime};

use tollgate::ratelimit::{CrashPolicy, Limit, Quota, RateDurability};
use tollgate::{ManualClock, Store};

const CHILD_ENV: &str = "TOLLGATE_RATE_CHILD";
const TEST_NAME: &str = "a_killed_batched_session_never_mints_quota_under_the_default_policy";
const START: u64 = 1_800_000_000;

fn login() -> Limit {
    Limit::new("login", Quota::fixed_window(5, Duration::from_secs(900))).unwrap()
}

fn open(path: &Path, seconds_after_start: u64, policy: CrashPolicy) -> Store {
    Store::builder()
        .clock(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(START + seconds_after_start),
        ))
        .rate_durability(RateDurability::Batched {
            max_delay: Duration::from_secs(3600),
        })
        .crash_policy(policy)
        .open(path)
        .unwrap()
}

/// In the child: spend all 5 attempts of "victim", only 2 of them flushed, then wait to be killed.
fn child(path: &Path) -> ! {
    fixture::exit_with_parent();
    let store = open(path, 0, CrashPolicy::DrainOnRecovery);
    for _ in 0..2 {
        assert!(store.check(&login(), "victim").unwrap().allowed());
    }
    store.flush().unwrap();
    for _ in 0..3 {
        assert!(store.check(&login(), "victim").unwrap().allowed());
    }
    println!("SPENT");
    loop {
        std::thread::park();
    }
}

fn run_child_and_kill(path: &Path) {
    let env = [(CHILD_ENV, path.as_os_str())];
    fixture::kill_test_child_at(module_path!(), TEST_NAME, &env, "SPENT");
}

#[test]
fn a_killed_batched_session_never_mints_quota_under_the_default_policy() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let crashed = dir.path().join("crashed.redb");
    run_child_and_kill(&crashed);
    let copy = dir.path().join("crashed-copy.redb");
    fixture::copy_store(&crashed, &copy);

    // Default policy: the victim spent 5 of 5 before the crash (3 unflushed): still denied.
    let store = open(&crashed, 10, CrashPolicy::DrainOnRecovery);
    let victim = store.check(&login(), "victim").unwrap();
    assert!(!victim.allowed());
    // The price of the guarantee: a subject never seen is treated as spent too, until the window
    // that contains the recovery ends (the child ran in the window starting at START).
    assert!(!store.check(&login(), "bystander").unwrap().allowed());
    assert_eq!(victim.retry_after(), Some(Duration::from_secs(890)));
    store.close().unwrap();
    // The next window is whole again, and a clean close and reopen does not drain anything.
    let store = open(&crashed, 900, CrashPolicy::DrainOnRecovery);
    assert_eq!(store.check(&login(), "victim").unwrap().remaining(), 4);
    assert_eq!(store.check(&login(), "bystander").unwrap().remaining(), 4);
    store.close().unwrap();

    // TrustLastFlush: only the 2 flushed attempts are remembered; the 3 lost ones are forgiven.
    let store = open(&copy, 10, CrashPolicy::TrustLastFlush);
    assert_eq!(store.peek(&login(), "victim").unwrap().remaining(), 3);
    assert_eq!(store.peek(&login(), "bystander").unwrap().remaining(), 5);
    store.close().unwrap();
}

#[test]
fn a_clean_batched_session_is_not_drained_at_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clean.redb");
    let store = open(&path, 0, CrashPolicy::DrainOnRecovery);
    assert!(store.check_n(&login(), "user", 2).unwrap().allowed());
    store.close().unwrap();
    let store = open(&path, 10, CrashPolicy::DrainOnRecovery);
    assert_eq!(store.peek(&login(), "user").unwrap().remaining(), 3);
    assert_eq!(store.peek(&login(), "other").unwrap().remaining(), 5);
    store.close().unwrap();
}
