//! A store file of every format version is committed at `tests/data/format_v<N>.redb`, each with
//! the same records; every later tollgate must keep opening them and reading those records. Write
//! the current version's file only when deliberately starting a new format version (and keep the
//! older ones): `TOLLGATE_WRITE_FIXTURE=1 cargo test --test format_fixtures`.
//!
//! Format 1 keeps its RUNNING record in `tollgate_records`; format 2 in `tollgate_running`. The
//! takeover and completion below move the version-1 record between the tables. Format 3 has a
//! write-ahead log beside the file (`format_v3.redb.log`); its fixture is a crash image taken
//! while the applier was held, so the records are in the log only and the open must replay them.

use crate::fixture;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use fixture::{acquired, replay};
use tollgate::idempotency::{
    Begin, Fingerprint, IdempotencyKey, Outcome, RecordState, StoredResponse,
};
use tollgate::{ManualClock, Store};

/// When the fixture was written, by its clock.
const WRITTEN_AT: u64 = 1_800_000_000;
const TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The format this build writes.
const CURRENT: u32 = 3;

fn committed(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/format_v{version}.redb"))
}

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new("fixture-scope", name).unwrap()
}

fn store_at(path: &std::path::Path, seconds: u64) -> Store {
    Store::builder()
        .clock(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
        ))
        .record_ttl(TTL)
        .open(path)
        .unwrap()
}

fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.redb");
    let store = store_at(&path, WRITTEN_AT);
    assert!(store.hold_log_applier_for_tests(true));
    acquired(
        store
            .begin(&key("completed"), &Fingerprint::of(b"a"))
            .unwrap(),
    )
    .complete(
        StoredResponse::new(201, b"created".to_vec()).with_header("content-type", "text/plain"),
    )
    .unwrap();
    acquired(store.begin(&key("failed"), &Fingerprint::of(b"b")).unwrap())
        .fail(StoredResponse::new(402, b"declined".to_vec()))
        .unwrap();
    let mut running = acquired(
        store
            .begin(&key("running"), &Fingerprint::of(b"c"))
            .unwrap(),
    );
    running.save_checkpoint("charged", b"ch_fixture").unwrap();
    drop(running);
    // A crash image: every change acknowledged, none applied to the file.
    fixture::copy_store(&path, &committed(CURRENT));
    store.close().unwrap();
}

#[test]
fn every_format_still_opens_and_reads() {
    if std::env::var_os("TOLLGATE_WRITE_FIXTURE").is_some() {
        write_fixture();
    }
    for version in 1..=CURRENT {
        opens_and_reads(version);
    }
}

fn opens_and_reads(version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.redb");
    fixture::copy_store(&committed(version), &path);
    if version >= 3 {
        let log = std::fs::metadata(Store::log_path(committed(version))).unwrap();
        assert!(log.len() > 4096, "the format-3 fixture's log holds frames");
    }
    let store = store_at(&path, WRITTEN_AT + 3600);

    let done = replay(
        store
            .begin(&key("completed"), &Fingerprint::of(b"a"))
            .unwrap(),
    );
    assert_eq!(done.outcome(), Outcome::Completed);
    assert_eq!(
        done.response(),
        &StoredResponse::new(201, b"created".to_vec()).with_header("content-type", "text/plain")
    );
    let failed = replay(store.begin(&key("failed"), &Fingerprint::of(b"b")).unwrap());
    assert_eq!(
        (failed.outcome(), failed.response().status),
        (Outcome::Failed, 402)
    );
    assert!(matches!(
        store.begin(&key("failed"), &Fingerprint::of(b"x")).unwrap(),
        Begin::Mismatch
    ));

    let info = store.get(&key("running")).unwrap().unwrap();
    assert_eq!(info.state, RecordState::Running);
    assert_eq!(
        info.created_at,
        SystemTime::UNIX_EPOCH + Duration::from_secs(WRITTEN_AT)
    );
    let lease = acquired(
        store
            .begin(&key("running"), &Fingerprint::of(b"c"))
            .unwrap(),
    );
    assert!(lease.recovered());
    assert_eq!(
        lease.checkpoint().map(|c| c.data.as_slice()),
        Some(&b"ch_fixture"[..])
    );
    // Tokens continue above every token the file handed out.
    assert!(lease.token() > 3);
    lease
        .complete(StoredResponse::new(201, b"recovered".to_vec()))
        .unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.running, stats.completed, stats.failed),
        (0, 2, 1),
        "format {version}"
    );
    store.close().unwrap();

    // Opened again (now in the current format), everything reads the same.
    let store = store_at(&path, WRITTEN_AT + 7200);
    let recovered = replay(
        store
            .begin(&key("running"), &Fingerprint::of(b"c"))
            .unwrap(),
    );
    assert_eq!(recovered.response().body, b"recovered");
    assert_eq!(store.list_records(None, 10).unwrap().len(), 3);
    store.close().unwrap();
}
