//! A store file written by format version 1 is committed at `tests/data/format_v1.redb`; every later
//! tollgate must keep opening it and reading its records. Regenerate it only when deliberately
//! starting a new format version (and then keep this one too):
//! `TOLLGATE_WRITE_FIXTURE=1 cargo test --test format_v1_fixture`.

mod fixture;

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

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/format_v1.redb")
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
    let path = committed();
    let _ = std::fs::remove_file(&path);
    let store = store_at(&path, WRITTEN_AT);
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
    store.close().unwrap();
}

#[test]
fn format_v1_file_still_opens_and_reads() {
    if std::env::var_os("TOLLGATE_WRITE_FIXTURE").is_some() {
        write_fixture();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.redb");
    std::fs::copy(committed(), &path).unwrap();
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
    store.close().unwrap();
}
