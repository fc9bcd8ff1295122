//! The CLI's reading commands change nothing: `stats`, `inspect` and `list` open a store file
//! read-only (its bytes and its log's stay the same, no epoch is bumped), and on PostgreSQL a
//! schema that does not exist is an error naming it, never a new schema. A directory given as the
//! store says so; output piped into a reader that stops early (`| head`) ends the program quietly.

#[cfg(feature = "postgres")]
use crate::fixture;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tollgate::Store;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};

use crate::fixture::tollgate_cli as tollgate;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A store of `records` completed keys and one left running, closed.
fn make_store(path: &Path, records: usize) {
    let store = Store::open(path).unwrap();
    for i in 0..records {
        let key = IdempotencyKey::new("shop", &format!("order-{i}")).unwrap();
        if let Begin::Acquired(lease) = store.begin(&key, &Fingerprint::of(b"r")).unwrap() {
            lease
                .complete(StoredResponse::new(201, b"ok".to_vec()))
                .unwrap();
        }
    }
    let running = IdempotencyKey::new("shop", "running").unwrap();
    let _lease = store.begin(&running, &Fingerprint::of(b"r")).unwrap();
    store.close().unwrap();
}

#[test]
fn reading_commands_leave_the_store_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.redb");
    make_store(&path, 5);
    let log = Store::log_path(&path);
    let before = (std::fs::read(&path).unwrap(), std::fs::read(&log).unwrap());
    let file = path.to_str().unwrap();
    for args in [
        vec!["stats", file],
        vec!["inspect", file, "--scope", "shop", "--key", "order-1"],
        vec!["list", file],
        vec!["list", file, "--json"],
    ] {
        let output = tollgate(&args);
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        let after = (std::fs::read(&path).unwrap(), std::fs::read(&log).unwrap());
        assert!(after == before, "{args:?} changed the store's files");
    }
    // The epoch is the last writable open's, and a writable open still follows on from it.
    let stats = String::from_utf8_lossy(&tollgate(&["stats", file]).stdout).into_owned();
    assert!(stats.contains("epoch          1 "), "{stats}");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.epoch(), 2);
    store.close().unwrap();
}

#[test]
fn a_directory_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = tollgate(&["stats", dir.path().to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is a directory"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.redb");
    // About 2,000 lines of list output: more than a pipe holds once the reader is gone.
    make_store(&path, 2000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["list", path.to_str().unwrap(), "--limit", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("digest"), "{first}");
    // The reader is gone (as `head -1` would be).
    let output = child.wait_with_output().unwrap();
    let stderr = stderr(&output);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[cfg(feature = "postgres")]
#[test]
fn a_postgres_schema_that_does_not_exist_is_named_and_not_created() {
    let server = require_postgres!();
    let typo = fixture::postgres::unique_schema("typo");
    let output = tollgate(&["stats", "--postgres", &server.conn, "--schema", &typo]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(&typo), "{}", stderr(&output));
    let mut client = postgres::Client::connect(&server.conn, postgres::NoTls).unwrap();
    let found = client
        .query(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&typo],
        )
        .unwrap();
    assert!(found.is_empty(), "the CLI created the schema {typo}");
}

/// On an existing schema the reading commands write nothing either: every table's rows are the
/// same before and after (the tool is an anonymous node, which registers no row).
#[cfg(feature = "postgres")]
#[test]
fn reading_commands_on_postgres_write_no_row() {
    let server = require_postgres!();
    let schema = fixture::postgres::unique_schema("cli_rows");
    let store = Store::builder()
        .postgres_schema(&schema)
        .node_id("web-1")
        .open_postgres(&server.conn)
        .unwrap();
    let key = IdempotencyKey::new("shop", "order-1").unwrap();
    if let Begin::Acquired(lease) = store.begin(&key, &Fingerprint::of(b"r")).unwrap() {
        lease
            .complete(StoredResponse::new(201, b"ok".to_vec()))
            .unwrap();
    }
    store.close().unwrap();
    let mut client = postgres::Client::connect(&server.conn, postgres::NoTls).unwrap();
    let rows = |client: &mut postgres::Client| -> Vec<String> {
        ["meta", "nodes", "records", "rates", "counts", "clock"]
            .iter()
            .map(|table| {
                let query = format!("SELECT t::text FROM {schema}.{table} t ORDER BY 1");
                let rows = client.query(query.as_str(), &[]).unwrap();
                let texts: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
                format!("{table}: {texts:?}")
            })
            .collect()
    };
    let before = rows(&mut client);
    for command in [
        vec!["stats"],
        vec!["list", "--json"],
        vec!["inspect", "--scope", "shop", "--key", "order-1"],
    ] {
        let mut args = command.clone();
        args.extend([
            "--postgres",
            server.conn.as_str(),
            "--schema",
            schema.as_str(),
        ]);
        let output = tollgate(&args);
        assert!(output.status.success(), "{command:?}: {}", stderr(&output));
        assert_eq!(rows(&mut client), before, "{command:?} wrote to the schema");
    }
}

/// The reading commands on a store a running process shares (`open_shared`) read through that
/// process: the live store's numbers and records, and no write on the owner. A store held by a
/// plain `open` is refused with a message that says how to share it.
#[cfg(target_os = "linux")]
#[test]
fn reading_commands_read_a_live_shared_store_through_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.redb");
    let owner = Store::builder().open_shared(&path).unwrap();
    for i in 0..3 {
        let key = IdempotencyKey::new("shop", &format!("order-{i}")).unwrap();
        if let Begin::Acquired(lease) = owner.begin(&key, &Fingerprint::of(b"r")).unwrap() {
            lease
                .complete(StoredResponse::new(201, b"ok".to_vec()))
                .unwrap();
        }
    }
    let writes = owner.stats().unwrap().writes;
    let file = path.to_str().unwrap();
    let stats = tollgate(&["stats", file]);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let shown = String::from_utf8_lossy(&stats.stdout);
    assert!(shown.contains("completed      3"), "{shown}");
    assert!(shown.contains("(shared)"), "{shown}");
    let inspect = tollgate(&["inspect", file, "--scope", "shop", "--key", "order-1"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("completed"));
    let list = tollgate(&["list", file]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 3 + 1);
    assert_eq!(
        owner.stats().unwrap().writes,
        writes,
        "the commands wrote nothing"
    );
    owner.close().unwrap();

    let plain = Store::open(&path).unwrap();
    let refused = tollgate(&["stats", file]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("open_shared"),
        "{}",
        stderr(&refused)
    );
    plain.close().unwrap();
}
