//! A store shared by real processes (`open_shared`): this test binary re-runs itself as worker
//! processes on one file, and the parent kills them with SIGKILL.
//!
//! - A killed client's leases are free at once (the next begin is `recovered()`, with the
//!   checkpoint), while a live client's lease is never taken over before it expires.
//! - Whichever process owns the file is killed 20 times while workers in other processes run
//!   begin/complete on the same keys at once (each key's duplicates wait while it is in flight): afterwards every acknowledged completion replays with the
//!   response of the execution that was acknowledged, and a key executed twice was told so
//!   (`recovered()`) every time after the first, and only ever taken from a process that was
//!   killed: no two live leases ever ran one key.
//! - A process of another user (`nobody`, through `runuser`) is refused: by the socket's mode,
//!   and, with the socket opened to everyone, by the owner's check of the peer's credentials.
//!
//! Each worker writes what it did to a log of its own, flushed before it goes on: `exec KEY
//! BODY RECOVERED` once a lease is granted, `ack KEY BODY` once `complete` returned.

use crate::fixture;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use fixture::{key, request, response};
use tollgate::Store;
use tollgate::idempotency::Begin;

const DIR_ENV: &str = "TOLLGATE_SHARED_DIR";
const ROLE_ENV: &str = "TOLLGATE_SHARED_ROLE";
const KILLS_ENV: &str = "TOLLGATE_SHARED_KILLS";

fn store_path(dir: &Path) -> PathBuf {
    dir.join("shared.redb")
}

fn builder() -> tollgate::StoreBuilder {
    // Nothing expires while a test runs: every takeover seen is one of a process that ended.
    Store::builder()
        .lease_ttl(Duration::from_secs(600))
        .record_ttl(Duration::from_secs(3600))
}

fn spawn(test: &str, dir: &Path, role: &str) -> Child {
    fixture::spawn_test_child(
        module_path!(),
        test,
        &[
            (DIR_ENV, dir.as_os_str()),
            (ROLE_ENV, std::ffi::OsStr::new(role)),
        ],
    )
}

/// A child that takes the lease of `role` (a key name), saves a checkpoint, says so and waits
/// to be killed.
fn holder(dir: &Path, role: &str) -> ! {
    fixture::exit_with_parent();
    let store = builder().open_shared(store_path(dir)).unwrap();
    let Begin::Acquired(mut lease) = store.begin(&key(role), &request("r")).unwrap() else {
        panic!("{role}: the key was free");
    };
    lease.save_checkpoint("charged", role.as_bytes()).unwrap();
    println!("ACQUIRED");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_killed_clients_leases_are_freed_at_once_and_a_live_clients_are_kept() {
    const TEST: &str = "a_killed_clients_leases_are_freed_at_once_and_a_live_clients_are_kept";
    if let (Some(dir), Ok(role)) = (std::env::var_os(DIR_ENV), std::env::var(ROLE_ENV)) {
        holder(Path::new(&dir), &role);
    }
    let dir = tempfile::tempdir().unwrap();
    // This process owns the file; the holders are its clients.
    let owner = builder().open_shared(store_path(dir.path())).unwrap();
    assert_eq!(owner.shared_owner(), Some(std::process::id()));
    let mut dead = spawn(TEST, dir.path(), "dies");
    fixture::wait_for_line(&mut dead, "ACQUIRED");
    let mut live = spawn(TEST, dir.path(), "lives");
    fixture::wait_for_line(&mut live, "ACQUIRED");
    for name in ["dies", "lives"] {
        assert!(
            matches!(
                owner.begin(&key(name), &request("r")).unwrap(),
                Begin::InFlight { .. }
            ),
            "{name}: a live process's lease"
        );
    }

    dead.kill().unwrap();
    dead.wait().unwrap();
    // The owner sees the connection close as soon as the kernel closes it.
    let mut taken = None;
    fixture::wait_for("the killed client's lease to be taken over", || match owner
        .begin(&key("dies"), &request("r"))
        .unwrap()
    {
        Begin::Acquired(lease) => {
            taken = Some(lease);
            true
        }
        _ => false,
    });
    let taken = taken.unwrap();
    assert!(taken.recovered());
    let checkpoint = taken.checkpoint().unwrap();
    assert_eq!(
        (checkpoint.name.as_str(), checkpoint.data.as_slice()),
        ("charged", &b"dies"[..])
    );
    taken.complete(response("done")).unwrap();
    // The live client's lease is still its own, long after.
    assert!(matches!(
        owner.begin(&key("lives"), &request("r")).unwrap(),
        Begin::InFlight { .. }
    ));

    live.kill().unwrap();
    live.wait().unwrap();
    owner.close().unwrap();
}

/// A worker of the kill cycles: begin/complete over the shared key sequence, logging each step,
/// and marking itself when it owns the file.
fn worker(dir: &Path) -> ! {
    fixture::exit_with_parent();
    let pid = std::process::id();
    let store = builder().open_shared(store_path(dir)).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("log-{pid}")))
        .unwrap();
    let mut note = |line: String| {
        log.write_all(line.as_bytes()).unwrap();
        log.sync_data().unwrap();
    };
    println!("READY");
    let mut i = 0u64;
    let (mut waiting_on, mut waits) = (String::new(), 0);
    loop {
        if store.shared_owner() == Some(pid) {
            let marker = dir.join(format!("owner-{pid}"));
            if !marker.exists() {
                std::fs::write(&marker, b"").unwrap();
            }
        }
        let name = format!("k-{i}");
        if name != waiting_on {
            (waiting_on, waits) = (name.clone(), 0);
        }
        match store.begin(&key(&name), &request("r")) {
            Ok(Begin::Acquired(lease)) => {
                let body = format!("{pid}-{}", lease.token());
                note(format!("exec {name} {body} {}\n", lease.recovered()));
                // The work: the other workers, on the same key meanwhile, see it in flight.
                std::thread::sleep(Duration::from_millis(1));
                if lease.complete(response(&body)).is_ok() {
                    note(format!("ack {name} {body}\n"));
                }
                i += 1;
            }
            Ok(Begin::Replay(_)) => i += 1,
            // Concurrent duplicates: wait for the key's holder, as a retrying client would, but
            // not forever: a lease whose `complete` was in doubt (the owner died under it)
            // stays until it expires.
            Ok(Begin::InFlight { .. }) if waits < 200 => {
                waits += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(Begin::InFlight { .. }) => i += 1,
            Ok(other) => panic!("{name}: {other:?}"),
            // The owner went away: the next call goes to the next one.
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// What the workers' logs say: executions (key, body, recovered) and acknowledgements (key, body).
struct Logs {
    execs: Vec<(String, String, bool)>,
    acks: Vec<(String, String)>,
}

fn read_logs(dir: &Path) -> Logs {
    let (mut execs, mut acks) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let is_log = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("log-"));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["exec", key, body, recovered] => {
                    execs.push(((*key).into(), (*body).into(), *recovered == "true"));
                }
                ["ack", key, body] => acks.push(((*key).into(), (*body).into())),
                // A torn last line of a killed worker: it acknowledged nothing.
                _ => {}
            }
        }
    }
    Logs { execs, acks }
}

#[test]
fn killing_the_owner_twenty_times_under_load_loses_no_acknowledged_completion() {
    const TEST: &str = "killing_the_owner_twenty_times_under_load_loses_no_acknowledged_completion";
    const WORKERS: usize = 3;
    /// Completions between two kills (the more, the more duplicates meet on a key).
    const ACKS_PER_CYCLE: usize = 20;
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        worker(Path::new(&dir));
    }
    let kills: usize = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut killed = std::collections::HashSet::new();
    let mut takeovers = Vec::new();
    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|_| {
            let mut child = spawn(TEST, dir.path(), "worker");
            fixture::wait_for_line(&mut child, "READY");
            child
        })
        .collect();
    for cycle in 0..kills {
        let acks_before = read_logs(dir.path()).acks;
        // Some work between kills, then the owner of the moment.
        fixture::wait_for("completions since the last kill", || {
            read_logs(dir.path()).acks.len() >= acks_before.len() + ACKS_PER_CYCLE
        });
        let mut owner_at = None;
        fixture::wait_for("a live worker to own the file", || {
            owner_at = workers
                .iter()
                .position(|child| dir.path().join(format!("owner-{}", child.id())).exists());
            owner_at.is_some()
        });
        let mut owner = workers.swap_remove(owner_at.unwrap());
        owner.kill().unwrap();
        owner.wait().unwrap();
        killed.insert(owner.id());
        // How long until a survivor owns the file (reported, not asserted: no timing in tests).
        let killed_at = std::time::Instant::now();
        fixture::wait_for("a survivor to take the file over", || {
            workers
                .iter()
                .any(|child| dir.path().join(format!("owner-{}", child.id())).exists())
        });
        takeovers.push(killed_at.elapsed());
        eprintln!("cycle {cycle}: killed the owner, pid {}", owner.id());
        let mut child = spawn(TEST, dir.path(), "worker");
        fixture::wait_for_line(&mut child, "READY");
        workers.push(child);
    }
    for mut child in workers {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    takeovers.sort_unstable();
    eprintln!(
        "takeovers after a kill: median {:?}, longest {:?} (until the new owner's worker marked it)",
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1]
    );

    let Logs { execs, acks } = read_logs(dir.path());
    assert!(
        acks.len() >= kills * ACKS_PER_CYCLE,
        "{} completions",
        acks.len()
    );
    let store = builder().open(store_path(dir.path())).unwrap();
    for (name, body) in &acks {
        match store.begin(&key(name), &request("r")).unwrap() {
            Begin::Replay(replay) => assert_eq!(
                replay.response().body,
                body.as_bytes(),
                "{name}: the acknowledged execution's response"
            ),
            other => panic!("{name}: acknowledged, then {other:?}"),
        }
    }
    // Two executions not told they were recoveries would be two live leases on one key.
    let mut fresh: HashMap<&str, Vec<&str>> = HashMap::new();
    for (name, body, recovered) in &execs {
        if !recovered {
            fresh.entry(name).or_default().push(body);
        }
    }
    for (name, bodies) in fresh {
        assert!(bodies.len() <= 1, "{name}: executed as new by {bodies:?}");
    }
    // A lease is taken over only from a process that was killed (nothing expires here): in
    // token order, every execution after a key's first follows one by a killed process.
    let mut by_key: HashMap<&str, Vec<(u64, u32)>> = HashMap::new();
    for (name, body, _) in &execs {
        let (pid, token) = body.split_once('-').unwrap();
        by_key
            .entry(name)
            .or_default()
            .push((token.parse().unwrap(), pid.parse().unwrap()));
    }
    for (name, mut runs) in by_key {
        runs.sort_unstable();
        for pair in runs.windows(2) {
            assert!(
                killed.contains(&pair[0].1),
                "{name}: taken from process {} while it lived ({runs:?})",
                pair[0].1
            );
        }
    }
    store.close().unwrap();
}

/// Run as another user: connects to the socket and says how it was turned away.
fn stranger(socket: &Path) -> ! {
    fixture::exit_with_parent();
    let verdict = match std::os::unix::net::UnixStream::connect(socket) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => "REFUSED_BY_MODE",
        Err(error) => panic!("connect: {error}"),
        Ok(mut stream) => {
            if tollgate::testing::shared::is_admitted(&mut stream) {
                "ADMITTED"
            } else {
                "REFUSED_BY_PEER"
            }
        }
    };
    println!("VERDICT {verdict}");
    std::process::exit(0);
}

/// Runs this test as the user `nobody` with `socket` to knock on; returns its verdict. `binary`
/// is a copy of this test binary that `nobody` may run (the build directory may not be
/// reachable to other users).
fn knock_as_nobody(test: &str, binary: &Path, socket: &Path) -> String {
    let output = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(binary)
        .args([
            fixture::test_path(module_path!(), test).as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, socket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(at) = stdout.find("VERDICT ") else {
        panic!(
            "no verdict from the process run as nobody: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    };
    stdout[at + "VERDICT ".len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_socket_admits_only_the_owners_user() {
    const TEST: &str = "the_socket_admits_only_the_owners_user";
    use std::os::unix::fs::PermissionsExt;
    if let Some(socket) = std::env::var_os(DIR_ENV) {
        stranger(Path::new(&socket));
    }
    if !is_root() {
        tollgate::testing::say_skipped(TEST, "switching to another user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Another user may reach the directory: only the socket's mode and the peer check stand.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("it");
    std::fs::copy(std::env::current_exe().unwrap(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let owner = builder().open_shared(store_path(dir.path())).unwrap();
    let socket = dir.path().join("shared.redb.sock");
    // The owner's user is admitted: the handshake the stranger sends is a valid one.
    let mut ours = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    assert!(tollgate::testing::shared::is_admitted(&mut ours));
    drop(ours);

    assert_eq!(knock_as_nobody(TEST, &binary, &socket), "REFUSED_BY_MODE");
    // Even a socket anyone may open admits no other user: the kernel says who the peer is.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(knock_as_nobody(TEST, &binary, &socket), "REFUSED_BY_PEER");
    owner.close().unwrap();
}

/// Whether this process runs as root (the effective user id is 0).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // A file this process creates is owned by its effective user.
    let probe = tempfile::NamedTempFile::new().unwrap();
    probe.as_file().metadata().unwrap().uid() == 0
}
