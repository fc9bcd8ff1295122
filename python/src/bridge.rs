//! The event-loop bridge: store calls that may wait (a begin that writes, a lease's resolution,
//! a rate check that needs the disk or a server) run on tollgate's own worker threads, and their
//! results reach the event loop through a socket it watches (`loop.add_reader`).
//!
//! Why not a Python thread pool: a Python worker thread must take the GIL to start each call and
//! again to hand its result back, and the loop thread pays for scheduling both hops; measured
//! through the ASGI middleware, that capped idempotent POSTs below a fifth of what the store
//! does from plain threads. Here a worker never touches the GIL: the loop thread converts the
//! arguments when it submits (`begin`, `complete`, ... return a call id at once), a worker runs
//! the call and queues its Rust result, writes one byte to wake the loop if the queue was empty,
//! and the loop thread takes every finished call in one `take()`, converting each result to a
//! Python object or exception there.
//!
//! Workers are started as calls need them (at most `MAX_WORKERS`; a call waits in the channel
//! when all are busy) and leave after `IDLE_EXIT` without work.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use pyo3::prelude::*;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::ratelimit::{Decision, Limit as RateLimit};
use tollgate::{BeginOptions, Error};

use crate::errors::to_py;
use crate::idempotency::{Failure, HeaderValue, Lease, fingerprint_arg, response, to_python};
use crate::ratelimit::Limit;
use crate::store::{Store, begin_options, key};

/// The most worker threads a bridge runs at once.
const MAX_WORKERS: usize = 256;

/// A worker without work for this long leaves.
const IDLE_EXIT: Duration = Duration::from_secs(30);

enum Job {
    Begin {
        store: tollgate::Store,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        options: BeginOptions,
    },
    Resolve {
        lease: Py<Lease>,
        how: How,
    },
    Check {
        store: tollgate::Store,
        checks: Vec<(RateLimit, String)>,
        cost: u32,
    },
}

enum How {
    Complete(StoredResponse),
    Release,
}

enum Done {
    Begun(tollgate::Result<Begin>),
    Resolved(Result<(), Failure>),
    Checked(tollgate::Result<Decision>),
}

struct Shared {
    jobs: Receiver<(u64, Job)>,
    done: Mutex<Vec<(u64, Done)>>,
    waker: UnixStream,
    workers: AtomicUsize,
    idle: AtomicUsize,
}

/// The bridge between one event loop and tollgate's worker threads (see the module's docs).
#[pyclass(frozen, module = "tollgate")]
pub struct Bridge {
    shared: Arc<Shared>,
    sender: Sender<(u64, Job)>,
    reader: UnixStream,
    next: AtomicU64,
}

fn run(job: Job) -> Done {
    match job {
        Job::Begin {
            store,
            key,
            fingerprint,
            options,
        } => Done::Begun(store.begin_with(&key, &fingerprint, &options)),
        Job::Resolve { lease, how } => Done::Resolved(lease.get().resolve_now(|lease| match how {
            How::Complete(response) => lease.complete(response),
            How::Release => lease.release(),
        })),
        Job::Check {
            store,
            checks,
            cost,
        } => {
            let pairs: Vec<(&RateLimit, &str)> = checks
                .iter()
                .map(|(limit, subject)| (limit, subject.as_str()))
                .collect();
            Done::Checked(store.check_all(&pairs, cost))
        }
    }
}

fn work(shared: &Shared) {
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let received = shared.jobs.recv_timeout(IDLE_EXIT);
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        let (id, job) = match received {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                shared.workers.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        let done = run(job);
        let was_empty = {
            let mut queue = shared.done.lock();
            queue.push((id, done));
            queue.len() == 1
        };
        if was_empty {
            // Non-blocking: a full socket already holds a wake-up the loop has not read.
            let _ = (&shared.waker).write(&[1]);
        }
    }
}

impl Bridge {
    fn submit(&self, job: Job) -> PyResult<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let shared = &self.shared;
        if shared.idle.load(Ordering::SeqCst) == 0
            && shared.workers.load(Ordering::SeqCst) < MAX_WORKERS
        {
            shared.workers.fetch_add(1, Ordering::SeqCst);
            let worker = Arc::clone(shared);
            let spawned = std::thread::Builder::new()
                .name("tollgate-py-worker".into())
                .spawn(move || work(&worker));
            if let Err(error) = spawned {
                shared.workers.fetch_sub(1, Ordering::SeqCst);
                if shared.workers.load(Ordering::SeqCst) == 0 {
                    return Err(to_py(&Error::Unavailable(format!(
                        "no worker thread could be started: {error}"
                    ))));
                }
            }
        }
        self.sender
            .send((id, job))
            .map_err(|_| to_py(&Error::Closed))?;
        Ok(id)
    }

    fn resolve(&self, lease: Py<Lease>, how: How) -> PyResult<u64> {
        self.submit(Job::Resolve { lease, how })
    }
}

#[pymethods]
impl Bridge {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, waker) = UnixStream::pair().map_err(|e| {
            to_py(&Error::Unavailable(format!(
                "no socket pair for the event loop: {e}"
            )))
        })?;
        for end in [&reader, &waker] {
            end.set_nonblocking(true).map_err(|e| {
                to_py(&Error::Unavailable(format!(
                    "no socket pair for the event loop: {e}"
                )))
            })?;
        }
        let (sender, jobs) = crossbeam_channel::unbounded();
        Ok(Self {
            shared: Arc::new(Shared {
                jobs,
                done: Mutex::new(Vec::new()),
                waker,
                workers: AtomicUsize::new(0),
                idle: AtomicUsize::new(0),
            }),
            sender,
            reader,
            next: AtomicU64::new(1),
        })
    }

    /// The descriptor the event loop watches: readable when results are waiting.
    fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// Submits `store.begin(...)`; returns the call's id.
    #[pyo3(signature = (store, scope, key, fingerprint, wait = None))]
    fn begin(
        &self,
        store: &Store,
        scope: &str,
        key: &str,
        fingerprint: &[u8],
        wait: Option<f64>,
    ) -> PyResult<u64> {
        let job = Job::Begin {
            store: store.store()?,
            key: self::key(scope, key)?,
            fingerprint: fingerprint_arg(fingerprint)?,
            options: begin_options(wait)?,
        };
        self.submit(job)
    }

    /// Submits `lease.complete(...)`.
    #[pyo3(signature = (lease, status, body = b"".as_slice(), headers = Vec::new()))]
    fn complete(
        &self,
        lease: Py<Lease>,
        status: u16,
        body: &[u8],
        headers: Vec<(HeaderValue, HeaderValue)>,
    ) -> PyResult<u64> {
        let response = response(status, body, headers)?;
        self.resolve(lease, How::Complete(response))
    }

    /// Submits `lease.release()`.
    fn release(&self, lease: Py<Lease>) -> PyResult<u64> {
        self.resolve(lease, How::Release)
    }

    /// Submits `store.check_all(checks, cost)`.
    #[pyo3(signature = (store, checks, cost = 1))]
    fn check_all(
        &self,
        store: &Store,
        checks: Vec<(Py<Limit>, String)>,
        cost: u32,
    ) -> PyResult<u64> {
        let job = Job::Check {
            store: store.store()?,
            checks: checks
                .into_iter()
                .map(|(limit, subject)| (limit.get().inner.clone(), subject))
                .collect(),
            cost,
        };
        self.submit(job)
    }

    /// Every finished call since the last `take`, as `(id, ok, value)`: the result when `ok`,
    /// else the exception to raise.
    fn take(&self, py: Python<'_>) -> PyResult<Vec<(u64, bool, Py<PyAny>)>> {
        // The wake-up bytes first, then the results: a result queued after the read writes a
        // byte of its own, so none is left without a wake-up.
        let mut bytes = [0_u8; 256];
        while matches!((&self.reader).read(&mut bytes), Ok(n) if n > 0) {}
        let finished = std::mem::take(&mut *self.shared.done.lock());
        let mut results = Vec::with_capacity(finished.len());
        for (id, done) in finished {
            let answer = match done {
                Done::Begun(Ok(begun)) => to_python(py, begun),
                Done::Begun(Err(error)) => Err(to_py(&error)),
                Done::Resolved(Ok(())) => Ok(py.None()),
                Done::Resolved(Err(failure)) => Err(failure.into_py()),
                Done::Checked(Ok(inner)) => {
                    Py::new(py, crate::ratelimit::Decision { inner }).map(Py::into_any)
                }
                Done::Checked(Err(error)) => Err(to_py(&error)),
            };
            results.push(match answer {
                Ok(value) => (id, true, value),
                Err(error) => (id, false, error.into_value(py).into_any()),
            });
        }
        Ok(results)
    }
}
