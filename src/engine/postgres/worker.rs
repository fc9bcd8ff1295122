//! The worker threads of a PostgreSQL store, each owning one connection.
//!
//! Changes (begins, resolutions, rate changes) go to the *writers* (two by default), each of
//! which gathers every change queued while it was busy into one transaction (`batch/`) on its
//! own pipelined connection (`pipe.rs`). Two keep the server busy: while one batch's `COMMIT`
//! waits for its flush on one connection, the next is locked and decided on the other (a backend
//! does nothing else while its commit flushes). More than two split the same callers into
//! batches too small for the transaction's fixed cost (measured, `docs/BENCHMARKS.md`). Two
//! writers of one node are to each other what two nodes are: their batches lock rows in the
//! same order and a row created under one starts the other's batch over (`batch/`).
//! Reads and maintenance (`get`, `list_records`, peeks, `stats`, compaction steps, bulk loads)
//! are *jobs* for the other connections, so they never wait behind a batch.
//!
//! After a batch of many, the writer waits a moment (at most a quarter of that batch's duration)
//! for the callers it just answered to come back, so that the next batch is as large; a lone
//! caller never waits.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::CALL_TIMEOUT;
use super::batch::{self, Change, Hints};
use super::clock::ServerClock;
use super::node::NodeInfo;
use super::pipe::Pipe;
use super::session::{Connector, Session};
use super::sql::Sql;
use crate::engine::notify::Notifier;
use crate::engine::oneshot::{self, NoAnswer, Reply};
use crate::engine::write_counters::Counters;
use crate::error::{Error, Result};

/// A read or a maintenance step: runs alone on a connection and sends its own answer.
pub(crate) type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// A handle that queues work and waits for its answer.
#[derive(Clone)]
pub(crate) struct Queue {
    changes: Sender<Change>,
    jobs: Sender<Job>,
}

impl Queue {
    /// Runs `job` (a read) on a worker and waits (at most [`CALL_TIMEOUT`]) for its result; past
    /// that, `Unavailable`.
    pub(crate) fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run(job, false)
    }

    /// [`Queue::call`] for a job that writes (a bulk load, a compaction step): past
    /// [`CALL_TIMEOUT`] it may still commit, so the caller gets `InDoubt`.
    pub(crate) fn call_writing<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.run(job, true)
    }

    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Session) -> Result<T> + Send + 'static,
        writes: bool,
    ) -> Result<T> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.jobs
            .send(Box::new(move |session| {
                let _ = reply.send(job(session));
            }))
            .map_err(|_| Error::Closed)?;
        wait(&answer, writes, CALL_TIMEOUT)
    }

    /// Queues a change for the writer and waits (at most [`CALL_TIMEOUT`]) for its answer.
    pub(crate) fn change<T>(&self, make: impl FnOnce(Reply<Result<T>>) -> Change) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.changes.send(make(reply)).map_err(|_| Error::Closed)?;
        wait_for_change(&answer, CALL_TIMEOUT)
    }
}

/// A change's caller past `timeout` stops waiting: the writer may still commit its change, so it
/// is `InDoubt`, never `Unavailable` (which promises that nothing changed); a writer gone is
/// `Closed`.
fn wait_for_change<T>(answer: &oneshot::Answer<Result<T>>, timeout: Duration) -> Result<T> {
    match answer.wait(timeout) {
        Ok(result) => result,
        Err(NoAnswer::TimedOut) => Err(Error::InDoubt(format!(
            "no answer from the database within {} s",
            timeout.as_secs()
        ))),
        Err(NoAnswer::Dropped) => Err(Error::Closed),
    }
}

/// A caller past `timeout` stops waiting: a read is `Unavailable`; a write may still be
/// committed by its worker, so it is `InDoubt`.
fn wait<T>(answer: &Receiver<Result<T>>, writes: bool, timeout: Duration) -> Result<T> {
    let late = || format!("no answer from the database within {} s", timeout.as_secs());
    match answer.recv_timeout(timeout) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) if writes => Err(Error::InDoubt(late())),
        Err(RecvTimeoutError::Timeout) => Err(Error::Unavailable(late())),
        Err(RecvTimeoutError::Disconnected) => Err(Error::Closed),
    }
}

/// What the workers are started with.
pub(crate) struct Pool<'a> {
    /// Connections in all: the writers', and `size - writers` for jobs (at least one).
    pub size: usize,
    /// Writers, each with its connection, taking changes from one queue.
    pub writers: usize,
    pub connector: &'a Connector,
    pub sql: &'a Arc<Sql>,
    pub node: &'a NodeInfo,
    pub clock: &'a Arc<ServerClock>,
    pub counters: &'a Arc<Counters>,
    pub notifier: &'a Arc<Notifier>,
    /// Whether a lone caller's change goes in one round trip (`batch/lone.rs`).
    pub one_round_trip: bool,
}

/// Starts `pool.size` workers: the writer, then the readers. Dropping every clone of the returned
/// queue stops them once the queue is empty.
pub(crate) fn start(pool: &Pool<'_>) -> Result<(Queue, Vec<JoinHandle<()>>)> {
    let (changes, change_queue) = crossbeam_channel::unbounded();
    let (jobs, job_queue) = crossbeam_channel::unbounded::<Job>();
    let session = || Session::new(pool.connector.clone(), Arc::clone(pool.sql));
    let spawn = |name: String, run: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name)
            .spawn(run)
            .map_err(Error::storage)
    };
    let mut workers = Vec::with_capacity(pool.size);
    // Shared by the writers: a lease begun on one is often resolved on another.
    let hints = Arc::new(Hints::new(pool.one_round_trip));
    for index in 0..pool.writers {
        let writer = Writer {
            changes: change_queue.clone(),
            pipe: Pipe::new(pool.connector.clone(), Arc::clone(pool.sql))?,
            node: pool.node.clone(),
            // The first writer's row keeps the name it had when a node had one writer.
            slot: match index {
                0 => format!("{}/writer", pool.node.id),
                _ => format!("{}/writer-{}", pool.node.id, index + 1),
            },
            clock: Arc::clone(pool.clock),
            counters: Arc::clone(pool.counters),
            notifier: Arc::clone(pool.notifier),
            hints: Arc::clone(&hints),
        };
        workers.push(spawn(
            format!("tollgate-pg-writer-{}", index + 1),
            Box::new(move || writer.run()),
        )?);
    }
    for index in pool.writers..pool.size {
        let queue = job_queue.clone();
        let mut session = session();
        workers.push(spawn(
            format!("tollgate-pg-{index}"),
            Box::new(move || {
                while let Ok(job) = queue.recv() {
                    job(&mut session);
                }
            }),
        )?);
    }
    Ok((Queue { changes, jobs }, workers))
}

/// The writer thread and its connection.
struct Writer {
    changes: Receiver<Change>,
    pipe: Pipe,
    node: NodeInfo,
    /// This connection's row in `counts`.
    slot: String,
    clock: Arc<ServerClock>,
    counters: Arc<Counters>,
    notifier: Arc<Notifier>,
    /// The node's hints, which every batch feeds; enabled, a lone change goes in one round trip
    /// on them.
    hints: Arc<Hints>,
}

impl Writer {
    fn run(mut self) {
        // The size and duration of the last batch: the callers it answered come back with their
        // next change within moments, so the next batch waits a little for them.
        let mut last = (0usize, Duration::ZERO);
        loop {
            let Ok(first) = self.changes.recv() else {
                return;
            };
            let changes = self.gather(first, last);
            let started = Instant::now();
            let size = changes.len();
            self.apply(changes);
            last = (size, started.elapsed());
        }
    }

    /// `first` and whatever else is queued, up to [`batch::MAX_BATCH`]; after a batch of many
    /// (`last`), waiting up to a quarter of its duration for as many to be queued.
    fn gather(&self, first: Change, (last_size, last_took): (usize, Duration)) -> Vec<Change> {
        let mut changes = vec![first];
        let target = last_size.min(batch::MAX_BATCH);
        let deadline = Instant::now() + last_took / 4;
        loop {
            while changes.len() < batch::MAX_BATCH {
                match self.changes.try_recv() {
                    Ok(change) => changes.push(change),
                    Err(_) => break,
                }
            }
            if last_size <= 1 || changes.len() >= target || Instant::now() >= deadline {
                return changes;
            }
            // Yielding, not sleeping: a sleep lasts at least the timer slack (50 µs), longer
            // than most callers take to come back.
            std::thread::yield_now();
        }
    }

    fn apply(&mut self, changes: Vec<Change>) {
        let changes = if self.hints.enabled() {
            let mut lone = batch::Lone {
                pipe: &mut self.pipe,
                node: &self.node,
                slot: &self.slot,
                hints: &self.hints,
                clock: &self.clock,
                counters: &self.counters,
            };
            match batch::run_lone(&mut lone, changes) {
                Ok(stats) => {
                    if stats.committed {
                        self.notifier.bump();
                    }
                    return;
                }
                Err(changes) => changes,
            }
        } else {
            changes
        };
        let mut now = None;
        let stats = batch::run(
            &mut self.pipe,
            &self.node,
            &self.slot,
            changes,
            &mut now,
            &self.counters,
            &self.hints,
        );
        if let Some(now) = now {
            self.clock.observe(now);
        }
        if stats.committed {
            self.notifier.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job whose worker has not answered in time: a write may still commit (`InDoubt`), a
    /// read changed nothing (`Unavailable`); a worker gone without answering is `Closed`.
    #[test]
    fn a_late_write_is_in_doubt_and_a_late_read_unavailable() {
        let (reply, answer) = crossbeam_channel::bounded::<Result<()>>(1);
        let short = Duration::from_millis(1);
        assert!(matches!(wait(&answer, true, short), Err(Error::InDoubt(_))));
        assert!(matches!(
            wait(&answer, false, short),
            Err(Error::Unavailable(_))
        ));
        drop(reply);
        assert!(matches!(wait(&answer, true, short), Err(Error::Closed)));
    }

    #[test]
    fn a_change_not_answered_in_time_is_in_doubt() {
        let (reply, answer) = oneshot::channel::<Result<()>>();
        let short = Duration::from_millis(1);
        assert!(matches!(
            wait_for_change(&answer, short),
            Err(Error::InDoubt(_))
        ));
        drop(reply);
        assert!(matches!(
            wait_for_change(&answer, short),
            Err(Error::Closed)
        ));
    }
}
