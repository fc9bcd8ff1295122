//! The `tollgate` command-line tool against real store files: every command's output, and clear
//! errors for a missing file, a file in use by another process, and a file that is not a store;
//! and `--postgres` against a schema that a running node is using.

#[cfg(feature = "postgres")]
use crate::fixture;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use tollgate::Store;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};

use crate::fixture::tollgate_cli as tollgate;

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn make_store(path: &Path) {
    let store = Store::open(path).unwrap();
    for i in 0..3 {
        let key = IdempotencyKey::new("shop", &format!("order-{i}")).unwrap();
        let Begin::Acquired(lease) = store.begin(&key, &Fingerprint::of(b"r")).unwrap() else {
            panic!("fresh key");
        };
        if i < 2 {
            lease
                .complete(StoredResponse::new(201, b"ok".to_vec()))
                .unwrap();
        } else {
            drop(lease); // left running
        }
    }
    let short = IdempotencyKey::new("shop", "short-lived").unwrap();
    let options = tollgate::BeginOptions {
        record_ttl: Some(Duration::from_millis(1)),
        ..tollgate::BeginOptions::default()
    };
    if let Begin::Acquired(lease) = store
        .begin_with(&short, &Fingerprint::of(b"r"), &options)
        .unwrap()
    {
        lease
            .complete(StoredResponse::new(200, b"ok".to_vec()))
            .unwrap();
    }
    store.close().unwrap();
}

#[test]
fn every_command_on_a_real_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.redb");
    make_store(&path);
    let file = path.to_str().unwrap();

    let (out, _) = text(&tollgate(&["stats", file]));
    assert!(out.contains("completed      3"), "{out}");
    assert!(out.contains("running        1"), "{out}");

    let output = tollgate(&["inspect", file, "--scope", "shop", "--key", "order-0"]);
    let (out, _) = text(&output);
    assert!(output.status.success());
    let digest = IdempotencyKey::new("shop", "order-0")
        .unwrap()
        .digest()
        .to_string();
    assert!(out.contains(&digest), "{out}");
    assert!(out.contains("state    completed"), "{out}");
    assert!(!out.contains("order-0"), "raw keys are never printed");
    let (out, _) = text(&tollgate(&[
        "inspect", file, "--scope", "shop", "--key", "never",
    ]));
    assert!(out.contains("absent"), "{out}");

    let (out, _) = text(&tollgate(&["list", file, "--json"]));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows.iter().filter(|r| r["state"] == "running").count(), 1);
    assert!(
        rows.iter()
            .all(|r| r["digest_prefix"].as_str().unwrap().len() == 16)
    );
    let (out, _) = text(&tollgate(&["list", file, "--limit", "2"]));
    assert_eq!(out.lines().count(), 3, "a header and two rows: {out}");

    std::thread::sleep(Duration::from_millis(5)); // the short-lived record expires (wall clock)
    let (out, _) = text(&tollgate(&["compact", file]));
    assert!(out.contains("removed 1 expired records"), "{out}");

    let output = tollgate(&["check", file]);
    assert!(output.status.success());
    assert!(text(&output).0.contains("intact"));

    let output = tollgate(&["reclaim", file]);
    assert!(output.status.success(), "{:?}", text(&output));
    assert!(text(&output).0.contains("bytes ->"));
}

#[test]
fn clear_errors_for_missing_busy_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.redb");
    let output = tollgate(&["stats", missing.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(text(&output).1.contains("no such store file"));
    assert!(!missing.exists(), "a command never creates a store");

    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "hello").unwrap();
    let output = tollgate(&["list", foreign.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        text(&output).1.contains("not a tollgate store"),
        "{:?}",
        text(&output)
    );

    let busy = dir.path().join("busy.redb");
    let store = Store::open(&busy).unwrap();
    for command in ["stats", "compact", "check", "reclaim"] {
        let output = tollgate(&[command, busy.to_str().unwrap()]);
        assert!(!output.status.success(), "{command}");
        assert!(
            text(&output)
                .1
                .contains("open for writing in another process"),
            "{command}: {:?}",
            text(&output)
        );
    }
    store.close().unwrap();
}

/// With `--postgres`, the commands that make sense on a shared schema work beside a running node
/// (the tool joins as a node of its own): stats, inspect, list and compact.
#[cfg(feature = "postgres")]
#[test]
fn commands_on_a_postgres_schema_beside_a_running_node() {
    let server = require_postgres!();
    let schema = fixture::postgres::unique_schema("cli");
    let running = Store::builder()
        .postgres_schema(&schema)
        .node_id("web-1")
        .open_postgres(&server.conn)
        .unwrap();
    for i in 0..3 {
        let key = IdempotencyKey::new("shop", &format!("order-{i}")).unwrap();
        let Begin::Acquired(lease) = running.begin(&key, &Fingerprint::of(b"r")).unwrap() else {
            panic!("fresh key");
        };
        lease
            .complete(StoredResponse::new(201, b"ok".to_vec()))
            .unwrap();
    }
    let short = IdempotencyKey::new("shop", "short-lived").unwrap();
    let options = tollgate::BeginOptions {
        record_ttl: Some(Duration::from_secs(1)),
        ..tollgate::BeginOptions::default()
    };
    let Begin::Acquired(lease) = running
        .begin_with(&short, &Fingerprint::of(b"r"), &options)
        .unwrap()
    else {
        panic!("fresh key");
    };
    lease
        .complete(StoredResponse::new(200, b"ok".to_vec()))
        .unwrap();
    let conn = server.conn.as_str();
    let on_schema = |command: &[&str]| {
        let mut args = command.to_vec();
        args.extend(["--postgres", conn, "--schema", &schema]);
        let output = tollgate(&args);
        assert!(output.status.success(), "{command:?}: {:?}", text(&output));
        text(&output).0
    };

    let out = on_schema(&["stats"]);
    assert!(out.contains("completed      4"), "{out}");
    assert!(out.contains("(postgres)"), "{out}");
    let out = on_schema(&["inspect", "--scope", "shop", "--key", "order-1"]);
    assert!(out.contains("state    completed"), "{out}");
    assert!(!out.contains("order-1"), "raw keys are never printed");
    let rows = on_schema(&["list", "--json"]).lines().count();
    assert_eq!(rows, 4);

    running
        .advance_database_clock_for_tests(Duration::from_secs(2))
        .unwrap();
    let out = on_schema(&["compact"]);
    assert!(out.contains("removed 1 expired records"), "{out}");
    assert!(on_schema(&["stats"]).contains("completed      3"));

    // A file-only command says so; a bad connection string is a clear error.
    let output = tollgate(&["check", "--postgres", conn]);
    assert!(!output.status.success());
    let output = tollgate(&[
        "stats",
        "--postgres",
        "host=127.0.0.1 port=1 connect_timeout=2",
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output).1.contains("unavailable"),
        "{:?}",
        text(&output)
    );
    running.close().unwrap();
}
