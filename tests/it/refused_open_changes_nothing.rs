//! An open that refuses changes nothing. Every refusal of an existing store (its log missing, a
//! log of another store, a newer format, a damaged header, a redb database of another program)
//! leaves the store's files byte for byte as they were: no epoch bumped, no table created, no
//! log made; and its error names the file. (A full disk at creation is in `full_disk_real.rs`: it
//! needs a real filesystem.)

use std::path::{Path, PathBuf};

use crate::fixture;
use fixture::{Fixture, acquired, key, request, response};
use tollgate::{Error, Store};

/// The bytes of every file in `dir`, by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Opens `path` expecting a refusal that `expected` recognises, and checks that no file in its
/// directory changed, appeared or went.
fn refused_without_a_trace(fixture: &Fixture, path: &Path, expected: impl Fn(&Error) -> bool) {
    let dir = path.parent().unwrap();
    let before = snapshot(dir);
    let refusal = fixture.builder().open(path).unwrap_err();
    assert!(expected(&refusal), "{refusal:?}");
    // An error with words of its own names the file (a newer format's says only the versions).
    if !matches!(refusal, Error::IncompatibleFormat { .. }) {
        let shown = path.display().to_string();
        assert!(
            refusal.to_string().contains(&shown),
            "{refusal} does not name {shown}"
        );
    }
    let after = snapshot(dir);
    let names = |files: &[(String, Vec<u8>)]| files.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&before), names(&after), "after {refusal:?}");
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        assert!(
            old == new,
            "{name} changed by the refused open ({refusal:?})"
        );
    }
}

/// A store with one completed key, closed cleanly, in a directory of its own.
fn a_store(fixture: &Fixture, name: &str) -> PathBuf {
    let dir = fixture.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("store.redb");
    let store = fixture.builder().open(&path).unwrap();
    acquired(store.begin(&key("k"), &request("r")).unwrap())
        .complete(response("done"))
        .unwrap();
    store.close().unwrap();
    path
}

#[test]
fn a_store_without_its_log_or_with_another_stores_log_is_refused_untouched() {
    let fixture = Fixture::new();
    let path = a_store(&fixture, "missing");
    let log = Store::log_path(&path);
    let saved = fixture.dir.path().join("saved.log");
    std::fs::rename(&log, &saved).unwrap();
    refused_without_a_trace(
        &fixture,
        &path,
        |e| matches!(e, Error::Corrupted(why) if why.contains("missing")),
    );

    let other = a_store(&fixture, "other");
    std::fs::copy(Store::log_path(&other), &log).unwrap();
    refused_without_a_trace(
        &fixture,
        &path,
        |e| matches!(e, Error::Corrupted(why) if why.contains("another store")),
    );

    // With its own log back it opens (the refusals left it able to).
    std::fs::rename(&saved, &log).unwrap();
    let store = fixture.builder().open(&path).unwrap();
    assert!(store.get(&key("k")).unwrap().is_some());
    store.close().unwrap();
}

#[test]
fn a_newer_format_a_damaged_header_and_a_foreign_database_are_refused_untouched() {
    let fixture = Fixture::new();
    let meta = redb::TableDefinition::<&str, &[u8]>::new("tollgate_meta");

    let newer = a_store(&fixture, "newer");
    {
        let db = redb::Database::create(&newer).unwrap();
        let txn = db.begin_write().unwrap();
        let mut future = vec![1u8];
        future.extend(99u64.to_le_bytes());
        txn.open_table(meta)
            .unwrap()
            .insert("format_version", future.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    refused_without_a_trace(&fixture, &newer, |e| {
        matches!(e, Error::IncompatibleFormat { found: 99, .. })
    });

    let damaged = a_store(&fixture, "damaged");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[..8].copy_from_slice(b"garbage!");
    std::fs::write(&damaged, &bytes).unwrap();
    refused_without_a_trace(&fixture, &damaged, |e| {
        matches!(e, Error::NotAStore(_) | Error::Corrupted(_))
    });

    let foreign_dir = fixture.dir.path().join("foreign");
    std::fs::create_dir(&foreign_dir).unwrap();
    let foreign = foreign_dir.join("app.redb");
    {
        let db = redb::Database::create(&foreign).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("users"))
            .unwrap()
            .insert("x", 1)
            .unwrap();
        txn.commit().unwrap();
    }
    refused_without_a_trace(&fixture, &foreign, |e| matches!(e, Error::NotAStore(_)));
}
