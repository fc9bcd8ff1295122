//! Redis servers for tollgate's tests (features `test-support` and `redis`).
//!
//! [`server`]: `TOLLGATE_TEST_REDIS` (a URL) if set, otherwise a throwaway `redis-server` on a
//! free loopback port, started once per test process. [`cluster`]: `TOLLGATE_TEST_REDIS_CLUSTER`
//! (the URL of one node) if set, otherwise three throwaway masters joined with
//! `redis-cli --cluster create`. [`Server::spawn`] starts one a test owns (to stop, restart or
//! empty). Every server started here runs without persistence, and a watchdog shell stops it
//! once this process is gone, however it ended.
//!
//! Without a `redis-server` binary these say loudly, for each test that asks, that it is skipped
//! ([`super::say_skipped`]: past libtest's capture) and return `None`; with
//! `TOLLGATE_REQUIRE_REDIS=1` they panic instead, so that CI cannot skip them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A Redis server for a test.
pub struct Server {
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
    /// The loopback port (0 for a server given by URL).
    pub port: u16,
    child: Option<Child>,
    dir: Option<PathBuf>,
    extra: Vec<String>,
    /// The certificate authority (PEM) of a TLS server's certificate.
    pub root_certificate: Option<Vec<u8>>,
}

/// Three masters of a Redis Cluster.
pub struct Cluster {
    /// The URL of the first master (the store finds the others).
    pub url: String,
    /// Every master.
    pub nodes: Vec<Server>,
}

/// The shared server, or why there is none.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
/// The shared cluster, or why there is none.
static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// Whether a missing server must fail the test (`TOLLGATE_REQUIRE_REDIS=1`).
fn required() -> bool {
    std::env::var("TOLLGATE_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

/// Says loudly that the calling test is skipped (each caller, past libtest's capture), or panics
/// when Redis is required.
fn skipped(what: &str, why: &str) {
    assert!(
        !required(),
        "TOLLGATE_REQUIRE_REDIS=1 but the tests have no {what}: {why}"
    );
    super::say_skipped(
        &format!("a Redis test that needs a {what}"),
        &format!("{why} (install redis-server, Debian: redis-server; or set TOLLGATE_TEST_REDIS)"),
    );
}

/// The shared test server, started on first use; `None` (after a loud message, at every call)
/// without one.
pub fn server() -> Option<&'static Server> {
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("TOLLGATE_TEST_REDIS") {
                return Ok(Server {
                    url,
                    port: 0,
                    child: None,
                    dir: None,
                    extra: Vec::new(),
                    root_certificate: None,
                });
            }
            Server::spawn(&[])
        })
        .as_ref()
        .map_err(|why| skipped("Redis server", why))
        .ok()
}

/// The shared test cluster, started on first use; `None` (after a loud message, at every call)
/// without one.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("TOLLGATE_TEST_REDIS_CLUSTER") {
                return Ok(Cluster {
                    url,
                    nodes: Vec::new(),
                });
            }
            start_cluster()
        })
        .as_ref()
        .map_err(|why| skipped("Redis Cluster", why))
        .ok()
}

/// The `redis-server` binary: `REDIS_SERVER`, or the first on `PATH`.
fn binary(name: &str) -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| format!("no {name} on PATH"))
}

impl Server {
    /// Starts a server of this test's own on a free port, without persistence, with `extra`
    /// arguments (for example `["--cluster-enabled", "yes"]`).
    ///
    /// # Errors
    /// A message if there is no `redis-server` or it does not start.
    pub fn spawn(extra: &[&str]) -> Result<Server, String> {
        let port = super::free_port()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "tollgate-redis-{}-{port}-{stamp}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut server = Server {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child: None,
            dir: Some(dir),
            extra: extra.iter().map(|s| (*s).to_string()).collect(),
            root_certificate: None,
        };
        server.start()?;
        Ok(server)
    }

    /// Starts a server of this test's own that speaks TLS only (`rediss://127.0.0.1:<port>`),
    /// with a certificate for 127.0.0.1 signed by a throwaway CA ([`Server::root_certificate`]),
    /// and `extra` arguments.
    ///
    /// # Errors
    /// A message if there is no `redis-server` or `openssl`, or the server does not start.
    pub fn spawn_tls(extra: &[&str]) -> Result<Server, String> {
        let mut server = Server::spawn(&[])?;
        server.kill();
        let Some(dir) = server.dir.clone() else {
            return Err("no directory".into());
        };
        if !super::certificates(&dir)? {
            return Err("no openssl to make a certificate".into());
        }
        let path = |name: &str| dir.join(name).display().to_string();
        server.extra = [
            "--tls-port",
            &server.port.to_string(),
            "--port",
            "0",
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("root.crt"),
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_string())
        .collect();
        server.root_certificate =
            Some(std::fs::read(dir.join("root.crt")).map_err(|e| format!("read the CA: {e}"))?);
        server.url = format!("rediss://127.0.0.1:{}", server.port);
        server.start()?;
        Ok(server)
    }

    /// Starts the server (again, empty: it keeps nothing) and waits until it answers.
    ///
    /// # Errors
    /// A message if it does not start within 20 s.
    pub fn start(&mut self) -> Result<(), String> {
        let Some(dir) = &self.dir else {
            return Err("a server given by URL cannot be started".into());
        };
        // In a session of its own (`setsid`, which execs it in place): the scheduler then gives
        // the server its own share of the CPU, as a service beside the application has, instead
        // of one thread's share among the test's or benchmark's many.
        let server = binary("redis-server")?;
        let mut command = match binary("setsid") {
            Ok(setsid) => {
                let mut command = Command::new(setsid);
                command.arg(server);
                command
            }
            Err(_) => Command::new(server),
        };
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start redis-server: {e}"))?;
        // The watchdog: the server goes when this process does.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 0.5; done; \
                 kill -9 {child} 2>/dev/null; [ -d {dir} ] && ! kill -0 {me} 2>/dev/null && rm -rf {dir}",
                me = std::process::id(),
                child = child.id(),
                dir = dir.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("redis-server exited at once ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} did not answer", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server at once (`SIGKILL`: nothing is saved).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (`SIGSTOP`): it keeps its connections and answers nothing, like a
    /// partitioned or paused machine. [`Server::resume`] continues it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a paused server.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Whether the server answers `PING` within a second (an answer that asks for a password
    /// counts: the server is up).
    pub fn ping(&self) -> bool {
        let answered = |error: &redis::RedisError| error.code().is_some();
        let Ok(client) = self.client() else {
            return false;
        };
        match client.get_connection_with_timeout(Duration::from_secs(1)) {
            Ok(mut connection) => match redis::cmd("PING").query::<String>(&mut connection) {
                Ok(_) => true,
                Err(error) => answered(&error),
            },
            Err(error) => answered(&error),
        }
    }

    /// A client for the server, trusting its throwaway CA if it speaks TLS.
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.root_certificate {
            Some(pem) => redis::Client::build_with_tls(
                self.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(self.url.as_str()),
        }
    }

    /// A connection to the server, every step bounded by 5 s.
    ///
    /// # Errors
    /// A message if it cannot connect.
    pub fn connection(&self) -> Result<redis::Connection, String> {
        let client = self.client().map_err(|e| e.to_string())?;
        let connection = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .map_err(|e| e.to_string())?;
        let _ = connection.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = connection.set_write_timeout(Some(Duration::from_secs(5)));
        Ok(connection)
    }

    /// Every key that starts with `prefix`.
    ///
    /// # Errors
    /// A message if the server does not answer.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut connection = self.connection()?;
        redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut connection)
            .map_err(|e| e.to_string())
    }

    /// Deletes every key that starts with `prefix`, in one atomic command (on a cluster node:
    /// the node's own keys). Returns how many went.
    ///
    /// # Errors
    /// A message if the server does not answer.
    pub fn delete(&self, prefix: &str) -> Result<usize, String> {
        let mut connection = self.connection()?;
        redis::cmd("EVAL")
            .arg(
                "local keys = redis.call('KEYS', ARGV[1]) \
                 for _, key in ipairs(keys) do redis.call('DEL', key) end return #keys",
            )
            .arg(0)
            .arg(format!("{prefix}*"))
            .query(&mut connection)
            .map_err(|e| e.to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start_cluster() -> Result<Cluster, String> {
    let cli = binary("redis-cli")?;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Server::spawn(&[
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "5000",
        ])?);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port))
        .collect();
    let output = Command::new(cli)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        ));
    }
    // Ready once every node sees every slot assigned.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        loop {
            let info = node.connection().and_then(|mut c| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut c)
                    .map_err(|e| e.to_string())
            });
            if info.is_ok_and(|info| info.contains("cluster_state:ok")) {
                break;
            }
            if Instant::now() > deadline {
                return Err("the Redis Cluster did not reach cluster_state:ok".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(Cluster {
        url: nodes
            .first()
            .map(|node| node.url.clone())
            .unwrap_or_default(),
        nodes,
    })
}
