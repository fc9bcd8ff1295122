//! `tollgate.Store`: the openers, and every store call with the GIL released where it may wait.
//!
//! A `Store` belongs to the process that opened it: its threads (the writer, the shared store's
//! watcher) do not survive a `fork`. A store used in a forked child raises `Closed` with a
//! message saying to open it after the fork (gunicorn's `--preload` does this), instead of
//! waiting forever on a thread that does not exist there.

use std::path::PathBuf;

use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use tollgate::idempotency::IdempotencyKey;
use tollgate::ratelimit::RateDurability;
use tollgate::{BeginOptions, Error, Health, StoreBuilder};

use crate::clock::ManualClock;
use crate::errors::{IntoPy, invalid, named, to_py};
use crate::idempotency::{fingerprint_arg, to_python};
use crate::ratelimit::{Decision, Limit};
use crate::seconds;

/// A store of idempotency records and rate counters.
///
/// Open one per process with ``Store.open(path)`` (every process of the host that opens the same
/// path shares one store), ``Store.in_memory()`` or ``Store.open_postgres(conninfo)``; close it
/// with ``close()`` or a ``with`` block.
#[pyclass(frozen, module = "tollgate")]
pub struct Store {
    inner: RwLock<Option<tollgate::Store>>,
    /// The process that opened the store.
    pid: u32,
    /// How many forks this process had come from when it opened the store
    /// (`crate::fork_count`): another count means a fork's copy, found without a `getpid` system
    /// call per use.
    forks: u64,
}

/// The settings every opener takes.
struct Common {
    lease_ttl: f64,
    record_ttl: f64,
    rate_counters_redis: Option<String>,
    clock: Option<Py<ManualClock>>,
}

impl Common {
    fn builder(&self) -> PyResult<StoreBuilder> {
        let mut builder = tollgate::Store::builder()
            .lease_ttl(seconds::duration("lease_ttl", self.lease_ttl, false)?)
            .record_ttl(seconds::duration("record_ttl", self.record_ttl, false)?);
        if let Some(url) = &self.rate_counters_redis {
            builder = builder.rate_counters_redis(url);
        }
        if let Some(clock) = &self.clock {
            builder = builder.clock(clock.get().inner.clone());
        }
        Ok(builder)
    }
}

fn opened(store: tollgate::Store) -> Store {
    Store {
        inner: RwLock::new(Some(store)),
        pid: std::process::id(),
        forks: crate::fork_count().unwrap_or(0),
    }
}

pub(crate) fn key(scope: &str, key: &str) -> PyResult<IdempotencyKey> {
    IdempotencyKey::new(scope, key).map_err(|reason| to_py(&Error::InvalidKey(reason)))
}

pub(crate) fn begin_options(wait: Option<f64>) -> PyResult<BeginOptions> {
    Ok(BeginOptions {
        wait: wait
            .map(|wait| seconds::duration("wait", wait, true))
            .transpose()?,
        ..BeginOptions::default()
    })
}

/// The `(limit, subject)` pairs of `check_all`, held as Python objects (read without the GIL).
type Checks = Vec<(Py<Limit>, String)>;

fn with_checks<T>(
    checks: &Checks,
    run: impl FnOnce(&[(&tollgate::ratelimit::Limit, &str)]) -> T,
) -> T {
    let pairs: Vec<(&tollgate::ratelimit::Limit, &str)> = checks
        .iter()
        .map(|(limit, subject)| (&limit.get().inner, subject.as_str()))
        .collect();
    run(&pairs)
}

impl Store {
    /// The open store, or `Closed`.
    pub(crate) fn store(&self) -> PyResult<tollgate::Store> {
        if !self.opened_here() {
            let pid = std::process::id();
            // Not open in this process: `Closed`, saying how to open it where it is used.
            return Err(named(
                "Closed",
                format!(
                    "this store was opened by process {} and is used in process {pid}, a fork of \
                     it: open the store in each worker after the fork (gunicorn: not with \
                     --preload, or in post_fork)",
                    self.pid
                ),
            ));
        }
        self.inner
            .read()
            .clone()
            .ok_or_else(|| to_py(&Error::Closed))
    }

    /// Whether this process opened the store (and is not a fork's copy of the one that did).
    fn opened_here(&self) -> bool {
        match crate::fork_count() {
            Some(count) => count == self.forks,
            None => self.pid == std::process::id(),
        }
    }
}

#[pymethods]
impl Store {
    /// Opens (or creates) the store file at ``path``. With ``shared=True`` (the default) every
    /// process of this host that opens the same path shares one store: one of them holds the
    /// file and serves the others over a socket beside it, and another takes over if it exits.
    /// ``shared=False`` holds the file alone (a second open raises ``AlreadyOpen``).
    ///
    /// Raises ``AlreadyOpen``, ``Corrupted``, ``IncompatibleFormat``, ``StorageError``,
    /// ``InvalidArgument``.
    #[staticmethod]
    #[pyo3(signature = (path, *, lease_ttl = 30.0, record_ttl = 86_400.0, rate_durability = None, rate_counters_redis = None, shared = true, clock = None))]
    #[allow(clippy::too_many_arguments)]
    fn open(
        py: Python<'_>,
        path: PathBuf,
        lease_ttl: f64,
        record_ttl: f64,
        rate_durability: Option<&str>,
        rate_counters_redis: Option<String>,
        shared: bool,
        clock: Option<Py<ManualClock>>,
    ) -> PyResult<Self> {
        // Unset: the store's default (Batched on a file; on Redis, where an explicit choice is
        // refused, Redis decides every check).
        let durability = match rate_durability {
            None => None,
            Some("batched") => Some(RateDurability::default()),
            Some("immediate") => Some(RateDurability::Immediate),
            Some(other) => {
                return Err(invalid(format!(
                    "rate_durability is \"batched\" or \"immediate\", not {other:?}"
                )));
            }
        };
        let common = Common {
            lease_ttl,
            record_ttl,
            rate_counters_redis,
            clock,
        };
        let mut builder = common.builder()?;
        if let Some(durability) = durability {
            builder = builder.rate_durability(durability);
        }
        let store = py.detach(move || {
            if shared && cfg!(target_os = "linux") {
                builder.open_shared(&path)
            } else {
                builder.open(&path)
            }
        });
        store.py().map(opened)
    }

    /// A store in memory: nothing survives the process. For tests and single-process tools.
    #[staticmethod]
    #[pyo3(signature = (*, lease_ttl = 30.0, record_ttl = 86_400.0, rate_counters_redis = None, clock = None))]
    fn in_memory(
        py: Python<'_>,
        lease_ttl: f64,
        record_ttl: f64,
        rate_counters_redis: Option<String>,
        clock: Option<Py<ManualClock>>,
    ) -> PyResult<Self> {
        let builder = Common {
            lease_ttl,
            record_ttl,
            rate_counters_redis,
            clock,
        }
        .builder()?;
        py.detach(move || builder.open_in_memory()).py().map(opened)
    }

    /// Opens a store on PostgreSQL (``conninfo``: a URL or ``key=value`` string), its tables in
    /// ``schema``, shared by every node. ``node_id`` names this node (one live store per name):
    /// a restarted node frees its earlier leases at once; without one, only expiry frees them.
    ///
    /// Raises ``Unavailable``, ``AlreadyOpen``, ``IncompatibleFormat``, ``InvalidArgument``.
    #[staticmethod]
    #[pyo3(signature = (conninfo, node_id = None, schema = "tollgate", *, lease_ttl = 30.0, record_ttl = 86_400.0, rate_counters_redis = None, clock = None))]
    #[allow(clippy::too_many_arguments)]
    fn open_postgres(
        py: Python<'_>,
        conninfo: &str,
        node_id: Option<&str>,
        schema: &str,
        lease_ttl: f64,
        record_ttl: f64,
        rate_counters_redis: Option<String>,
        clock: Option<Py<ManualClock>>,
    ) -> PyResult<Self> {
        let mut builder = Common {
            lease_ttl,
            record_ttl,
            rate_counters_redis,
            clock,
        }
        .builder()?
        .postgres_schema(schema);
        if let Some(node_id) = node_id {
            builder = builder.node_id(node_id);
        }
        py.detach(move || builder.open_postgres(conninfo))
            .py()
            .map(opened)
    }

    /// Closes the store: waits for its writes, then releases the file or connections. Closing
    /// twice is harmless; later calls raise ``Closed``.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.inner.write().take();
        match store {
            Some(store) if self.opened_here() => py.detach(move || store.close()).py(),
            // A fork's copy: its threads are the parent's; forget it without joining them.
            Some(store) => {
                std::mem::forget(store);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().is_none()
    }

    /// The engine: ``"embedded"``, ``"shared"`` (a client of another process's file),
    /// ``"postgres"``, ``"memory"``...
    #[getter]
    fn engine(&self) -> PyResult<&'static str> {
        Ok(self.store()?.engine_name())
    }

    /// The store's lease TTL in seconds.
    #[getter]
    fn lease_ttl(&self) -> PyResult<f64> {
        Ok(seconds::float(self.store()?.lease_ttl()))
    }

    /// The largest response (status, headers and body) a lease may store, in bytes.
    #[getter]
    fn max_response_bytes(&self) -> PyResult<usize> {
        Ok(self.store()?.max_response_bytes())
    }

    /// Counts of the records in the store.
    fn stats(&self, py: Python<'_>) -> PyResult<Stats> {
        let store = self.store()?;
        let stats = py.detach(move || store.stats()).py()?;
        Ok(Stats {
            running: stats.running,
            completed: stats.completed,
            failed: stats.failed,
            rate_states: stats.rate_states,
            file_bytes: stats.file_bytes,
        })
    }

    /// ``"ready"``, ``"degraded"`` (reads only: a disk full or read-only), ``"failed"``,
    /// ``"unreachable"`` (the database or Redis cannot be reached) or ``"closed"``.
    fn health(&self, py: Python<'_>) -> &'static str {
        let Ok(store) = self.store() else {
            return "closed";
        };
        match py.detach(move || store.health()) {
            Health::Ready => "ready",
            Health::Degraded { .. } => "degraded",
            Health::Unreachable { .. } => "unreachable",
            Health::Closed => "closed",
            _ => "failed",
        }
    }

    /// Makes every change so far durable (Batched rate counters included).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store()?;
        py.detach(move || store.flush()).py()
    }

    /// Starts (or replays, or refuses) the request ``key`` of ``scope`` whose fingerprint is
    /// ``fingerprint`` (32 bytes from ``tollgate.fingerprint``). Answers ``Acquired`` (execute it,
    /// then resolve the lease), ``Replay``, ``InFlight`` or ``Mismatch``. With ``wait`` (seconds),
    /// waits that long for a request in flight to finish.
    #[pyo3(signature = (scope, key, fingerprint, wait = None))]
    fn begin(
        &self,
        py: Python<'_>,
        scope: &str,
        key: &str,
        fingerprint: &[u8],
        wait: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let store = self.store()?;
        let (key, fingerprint) = (self::key(scope, key)?, fingerprint_arg(fingerprint)?);
        let options = begin_options(wait)?;
        let begun = py
            .detach(move || store.begin_with(&key, &fingerprint, &options))
            .py()?;
        to_python(py, begun)
    }

    /// ``begin`` if memory can answer it (a finished record in the replay cache), without
    /// waiting for any I/O: the answer, or ``None`` when the answer needs the disk or the network.
    /// Never writes. For event loops: answer on the loop when this says so, else ``begin`` in a
    /// worker thread.
    #[pyo3(signature = (scope, key, fingerprint))]
    fn try_begin(
        &self,
        py: Python<'_>,
        scope: &str,
        key: &str,
        fingerprint: &[u8],
    ) -> PyResult<Option<Py<PyAny>>> {
        let store = self.store()?;
        let (key, fingerprint) = (self::key(scope, key)?, fingerprint_arg(fingerprint)?);
        match store
            .try_begin(&key, &fingerprint, &BeginOptions::default())
            .py()?
        {
            Some(begun) => to_python(py, begun).map(Some),
            None => Ok(None),
        }
    }

    /// Charges ``cost`` to ``subject``'s counter of ``limit``; the decision says whether it was
    /// allowed (a denied check charges nothing).
    #[pyo3(signature = (limit, subject, cost = 1))]
    fn check(
        &self,
        py: Python<'_>,
        limit: Py<Limit>,
        subject: &str,
        cost: u32,
    ) -> PyResult<Decision> {
        let store = self.store()?;
        let inner = py
            .detach(move || store.check_n(&limit.get().inner, subject, cost))
            .py()?;
        Ok(Decision { inner })
    }

    /// Charges ``cost`` to every ``(limit, subject)`` pair, all or nothing: allowed only if every
    /// limit allows it, and then charged to all; the decision is the tightest limit's.
    #[pyo3(signature = (checks, cost = 1))]
    fn check_all(&self, py: Python<'_>, checks: Checks, cost: u32) -> PyResult<Decision> {
        let store = self.store()?;
        let inner = py
            .detach(move || with_checks(&checks, |pairs| store.check_all(pairs, cost)))
            .py()?;
        Ok(Decision { inner })
    }

    /// ``check_all`` if memory can decide it (Batched counters in the cache), without waiting
    /// for any I/O: the decision, or ``None`` when it needs the disk or the network.
    #[pyo3(signature = (checks, cost = 1))]
    fn try_check_all(&self, checks: Checks, cost: u32) -> PyResult<Option<Decision>> {
        let store = self.store()?;
        let decided = with_checks(&checks, |pairs| store.try_check_all(pairs, cost)).py()?;
        Ok(decided.map(|inner| Decision { inner }))
    }

    /// What a check of cost 1 would decide, without charging.
    fn peek(&self, py: Python<'_>, limit: Py<Limit>, subject: &str) -> PyResult<Decision> {
        let store = self.store()?;
        let inner = py
            .detach(move || store.peek(&limit.get().inner, subject))
            .py()?;
        Ok(Decision { inner })
    }

    /// Gives ``amount`` back to ``subject``'s counter (a request that turned out not to count).
    fn refund(
        &self,
        py: Python<'_>,
        limit: Py<Limit>,
        subject: &str,
        amount: u32,
    ) -> PyResult<Decision> {
        let store = self.store()?;
        let inner = py
            .detach(move || store.refund(&limit.get().inner, subject, amount))
            .py()?;
        Ok(Decision { inner })
    }

    /// Forgets ``subject``'s counter of ``limit``: it starts whole.
    fn reset(&self, py: Python<'_>, limit: Py<Limit>, subject: &str) -> PyResult<()> {
        let store = self.store()?;
        py.detach(move || store.reset(&limit.get().inner, subject))
            .py()
    }

    fn __repr__(&self) -> String {
        match self.inner.read().as_ref() {
            Some(store) => format!("Store(engine={:?})", store.engine_name()),
            None => "Store(closed)".to_owned(),
        }
    }
}

/// Counts of a store's records and counters.
#[pyclass(frozen, module = "tollgate", get_all)]
pub struct Stats {
    /// Records in flight.
    running: u64,
    /// Records completed.
    completed: u64,
    /// Records failed.
    failed: u64,
    /// Rate counters stored.
    rate_states: u64,
    /// The file's size in bytes (0 for stores without one).
    file_bytes: u64,
}

#[pymethods]
impl Stats {
    fn __repr__(&self) -> String {
        format!(
            "Stats(running={}, completed={}, failed={}, rate_states={}, file_bytes={})",
            self.running, self.completed, self.failed, self.rate_states, self.file_bytes
        )
    }
}
