//! A rolling restart of an HTTP server whose store is shared (`open_shared`), under load, with
//! real processes: the test binary re-runs itself as the server (an axum app behind
//! `IdempotencyLayer`). Three times, a new server process starts while the old one serves (it
//! opens the file as a client of the old one), the load moves to it (as a load balancer would),
//! and the old one shuts down gracefully: its in-flight requests finish, its store closes, the new
//! process takes the file over.
//!
//! Eight clients send each key twice, the second time as a retry that may land on the next
//! process. Checked: every request answered 2xx (zero failed requests), every retry replayed the
//! first answer, and no key's handler ran twice (the handlers write each execution to a log
//! shared by the processes, flushed before they answer).

use crate::web;

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tollgate::Store;
use tollgate::tower::IdempotencyLayer;
use web::{Server, client, post_json, send};

const DIR_ENV: &str = "TOLLGATE_ROLL_DIR";
const TEST: &str = "a_rolling_restart_under_load_fails_no_request_and_runs_no_key_twice";
const CLIENTS: usize = 8;
const ROLLS: usize = 3;

/// The handler: one execution, written down before the answer.
async fn pay(
    State(dir): State<Arc<std::path::PathBuf>>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let pid = std::process::id();
    let line = format!("exec {key} {pid}\n");
    let written = tokio::task::spawn_blocking(move || {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("execs"))?;
        log.write_all(line.as_bytes())?;
        log.sync_data()
    })
    .await;
    match written {
        Ok(Ok(())) => (StatusCode::CREATED, format!("paid {key} by {pid}")),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "log".into()),
    }
}

/// The server process: serves until its stdin closes, then shuts down gracefully.
fn serve(dir: &Path) -> ! {
    crate::fixture::exit_with_parent();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::builder()
            .open_shared(dir.join("store.redb"))
            .unwrap();
        let app = Router::new()
            .route("/pay", post(pay))
            .with_state(Arc::new(dir.to_path_buf()))
            .layer(IdempotencyLayer::new(store.clone()));
        let server = Server::start(app).await;
        println!("LISTENING {}", server.url("/pay"));
        std::io::stdout().flush().unwrap();
        // Told to go: stdin closes.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await
        .unwrap();
        server.stop().await;
        tokio::task::spawn_blocking(move || store.close())
            .await
            .unwrap()
            .unwrap();
        println!("CLOSED");
        std::io::stdout().flush().unwrap();
    });
    std::process::exit(0);
}

/// A server process, its stdin (drop it to stop the server) and its stdout's lines.
struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    url: String,
}

impl Process {
    fn start(dir: &Path) -> Process {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                crate::fixture::test_path(module_path!(), TEST).as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (send_line, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if send_line.send(line).is_err() {
                    return;
                }
            }
        });
        let mut process = Process {
            child,
            stdin,
            lines,
            url: String::new(),
        };
        let line = process.wait_for("LISTENING");
        process.url = line["LISTENING ".len()..].to_owned();
        process
    }

    fn wait_for(&mut self, marker: &str) -> String {
        loop {
            match self.lines.recv_timeout(crate::fixture::WAIT_DEADLINE) {
                // The harness may print the test's name on the same line first.
                Ok(line) => {
                    if let Some(at) = line.find(marker) {
                        return line[at..].to_owned();
                    }
                }
                Err(error) => {
                    let _ = self.child.kill();
                    panic!("the server process did not say {marker}: {error}");
                }
            }
        }
    }

    /// Stops the server gracefully and waits for it to exit cleanly.
    fn stop(mut self) {
        drop(self.stdin.take());
        self.wait_for("CLOSED");
        assert!(self.child.wait().unwrap().success());
    }
}

/// What the clients saw that they should not have.
#[derive(Default)]
struct Seen {
    requests: usize,
    failures: Vec<String>,
}

/// One client: each key sent, then sent again as a retry, to whichever server is current.
async fn load(target: Arc<parking_lot::RwLock<String>>, stop: Arc<AtomicBool>, id: usize) -> Seen {
    let client = client();
    let mut seen = Seen::default();
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let key = format!("k-{id}-{i}");
        let first_url = target.read().clone();
        let first = send(&client, post_json(&first_url, Some(&key), "{}")).await;
        let retry_url = target.read().clone();
        let retry = send(&client, post_json(&retry_url, Some(&key), "{}")).await;
        seen.requests += 2;
        if first.status != 201 {
            seen.failures
                .push(format!("{key}: {} {}", first.status, first.body));
        } else if retry.status != 201 || !retry.replayed() || retry.body != first.body {
            seen.failures.push(format!(
                "{key}: the retry got {} {} (replayed: {}), the first {}",
                retry.status,
                retry.body,
                retry.replayed(),
                first.body
            ));
        }
        i += 1;
    }
    seen
}

#[test]
fn a_rolling_restart_under_load_fails_no_request_and_runs_no_key_twice() {
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        serve(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut current = Process::start(dir.path());
    let target = Arc::new(parking_lot::RwLock::new(current.url.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| runtime.spawn(load(Arc::clone(&target), Arc::clone(&stop), id)))
        .collect();
    for _ in 0..ROLLS {
        std::thread::sleep(Duration::from_millis(300));
        let next = Process::start(dir.path());
        *target.write() = next.url.clone();
        std::thread::sleep(Duration::from_millis(100));
        // The old process drains and closes: its store's file moves to the new one.
        std::mem::replace(&mut current, next).stop();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let mut requests = 0;
    let mut failures = Vec::new();
    for client in clients {
        let seen = runtime.block_on(client).expect("a client task");
        requests += seen.requests;
        failures.extend(seen.failures);
    }
    current.stop();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert!(requests >= 200, "{requests} requests");

    let mut runs: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(dir.path().join("execs"))
        .unwrap()
        .lines()
    {
        if let Some(key) = line.split(' ').nth(1) {
            *runs.entry(key.to_owned()).or_default() += 1;
        }
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "run more than once: {twice:?}");
    assert_eq!(runs.len() * 2, requests, "every key ran exactly once");
    eprintln!("{requests} requests over {ROLLS} rolling restarts, none failed");
}
