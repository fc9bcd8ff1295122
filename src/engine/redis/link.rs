//! One Redis server (a standalone server, or one cluster master) as the store sees it: a named
//! I/O thread with one connection, which pipelines whatever operations are waiting, and a
//! circuit breaker.
//!
//! **Pipelining.** Callers queue jobs; the thread takes every job waiting (up to
//! [`MAX_JOBS`]), groups their operations by cluster slot into script calls of up to
//! [`MAX_OPS_PER_CALL`], writes every call in one pipeline and reads the replies. So concurrent
//! checks share both the round trip and the script invocation, and the busier the store the
//! larger the batches. A caller never waits longer than its timeout for an answer.
//!
//! **Timeouts and the breaker.** Connecting, writing and reading are bounded by the store's
//! Redis timeout. When a call fails for want of the server (no connection, an I/O error, no
//! answer in time), the breaker opens: every job is refused at once, without I/O, as
//! [`Failure::NotSent`], while the thread probes the server (connect, load the script)
//! every [`PROBE_INTERVAL`]; the first probe that succeeds closes it. So while Redis is down, at
//! most the calls in flight when it went pay the timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use parking_lot::Mutex;

use super::script::{self, Op, Reply, ScriptTime};
use crate::engine::oneshot;

/// The most jobs one pipeline carries.
pub(crate) const MAX_JOBS: usize = 256;
/// The most operations one script call runs (Redis runs nothing else meanwhile).
pub(crate) const MAX_OPS_PER_CALL: usize = 64;
/// Connections (each with its I/O thread) per server, taking turns at the queue: while Redis
/// runs one's pipeline, another gathers the next.
pub(crate) const CONNECTIONS: usize = 3;
/// How often an open breaker probes the server.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Why a job got no replies.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The job was never sent: nothing changed.
    NotSent(String),
    /// The job was sent, and no answer came: it may or may not have run.
    InDoubt(String),
    /// Redis refused the call (`MOVED`, `ASK`, `CLUSTERDOWN`, …): it did not run.
    Refused {
        code: Option<String>,
        message: String,
    },
}

/// Operations for one call, and where their replies go.
pub(crate) struct Job {
    pub ops: Vec<Op>,
    /// The cluster slot of every key of `ops` (0 on a standalone server).
    pub slot: u16,
    pub deadline: Instant,
    pub reply: oneshot::Reply<Result<Vec<Reply>, Failure>>,
}

enum Message {
    Job(Job),
    Close,
}

/// What the I/O thread needs besides its jobs.
#[derive(Clone)]
pub(crate) struct LinkConfig {
    pub info: redis::ConnectionInfo,
    pub timeout: Duration,
    /// The time a call passes to the script.
    pub now: Arc<dyn Fn() -> ScriptTime + Send + Sync>,
    pub drain: bool,
}

/// State the callers read without the thread.
#[derive(Default)]
struct Shared {
    open: AtomicBool,
    /// Why the breaker opened.
    reason: Mutex<String>,
    /// Script calls and pipelines sent (for stats and tests).
    calls: AtomicU64,
    pipelines: AtomicU64,
    /// Bumped each time a connection finds the server gone: the other threads' connections
    /// predate that and are opened again before their next call, so that a server restart
    /// costs the calls in flight, not one more failed call per connection.
    lost: AtomicU64,
}

/// A server and its I/O thread.
pub(crate) struct Link {
    /// `host:port`, shared with every [`Pending`] for its messages.
    pub(crate) addr: Arc<str>,
    sender: Sender<Message>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Link {
    /// Starts the I/O thread for the server at `config.info` (it connects on first use).
    ///
    /// # Errors
    /// A message if the thread cannot start.
    pub(crate) fn start(addr: String, config: &LinkConfig) -> Result<Link, String> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::with_capacity(CONNECTIONS);
        for index in 0..CONNECTIONS {
            let (config, shared, receiver) =
                (config.clone(), Arc::clone(&shared), receiver.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tollgate-redis-{index} {addr}"))
                .spawn(move || Io::new(config, shared).run(&receiver))
                .map_err(|e| format!("cannot start the Redis I/O thread: {e}"));
            match thread {
                Ok(thread) => threads.push(thread),
                Err(why) => {
                    for _ in &threads {
                        let _ = sender.send(Message::Close);
                    }
                    for thread in threads {
                        let _ = thread.join();
                    }
                    return Err(why);
                }
            }
        }
        Ok(Link {
            addr: Arc::from(addr),
            sender,
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Why the breaker is open, if it is.
    pub(crate) fn open_reason(&self) -> Option<String> {
        self.shared
            .open
            .load(Ordering::Acquire)
            .then(|| self.shared.reason.lock().clone())
    }

    /// Runs `ops` (keys of one `slot`), waiting at most about `timeout` for the replies.
    pub(crate) fn call(
        &self,
        ops: Vec<Op>,
        slot: u16,
        timeout: Duration,
    ) -> Result<Vec<Reply>, Failure> {
        self.submit(ops, slot, timeout).wait()
    }

    /// Queues `ops` (keys of one `slot`) for the next pipeline; [`Pending::wait`] has the
    /// replies. Submitting several before waiting lets them share a pipeline.
    pub(crate) fn submit(&self, ops: Vec<Op>, slot: u16, timeout: Duration) -> Pending {
        let writes = ops.iter().any(|op| op.code.writes());
        let (reply, answer) = oneshot::channel();
        let pending = |refused: Option<Failure>| Pending {
            answer,
            refused,
            writes,
            timeout,
            addr: Arc::clone(&self.addr),
            shared: Arc::clone(&self.shared),
        };
        if let Some(reason) = self.open_reason() {
            return pending(Some(Failure::NotSent(format!(
                "Redis at {} is unavailable (circuit open): {reason}",
                self.addr
            ))));
        }
        let job = Job {
            ops,
            slot,
            deadline: Instant::now() + timeout,
            reply,
        };
        if self.sender.send(Message::Job(job)).is_err() {
            return pending(Some(Failure::NotSent("the store is closed".into())));
        }
        pending(None)
    }

    #[cfg(any(test, feature = "test-support"))]
    /// Script calls and pipelines sent so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.shared.calls.load(Ordering::Relaxed),
            self.shared.pipelines.load(Ordering::Relaxed),
        )
    }

    /// Stops the thread after the jobs queued before, and joins it. Twice does nothing.
    pub(crate) fn close(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for _ in &threads {
            let _ = self.sender.send(Message::Close);
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

/// A job on its way: [`Pending::wait`] for its replies.
pub(crate) struct Pending {
    answer: oneshot::Answer<Result<Vec<Reply>, Failure>>,
    /// Refused before it was queued.
    refused: Option<Failure>,
    writes: bool,
    timeout: Duration,
    addr: Arc<str>,
    shared: Arc<Shared>,
}

impl Pending {
    /// The replies, or why there are none. Waits at most the timeout and a margin: the thread
    /// answers by the job's deadline, or its read timeout fires soon after.
    pub(crate) fn wait(self) -> Result<Vec<Reply>, Failure> {
        if let Some(failure) = self.refused {
            return Err(failure);
        }
        let timeout = self.timeout;
        match self
            .answer
            .wait(timeout + timeout / 2 + Duration::from_millis(20))
        {
            Ok(result) => result,
            Err(oneshot::NoAnswer::Dropped) => Err(Failure::NotSent("the store is closed".into())),
            Err(oneshot::NoAnswer::TimedOut) => {
                let why = format!("no answer from Redis at {} within {timeout:?}", self.addr);
                // The I/O thread is stuck on this server (a connect or a read that has not timed
                // out yet): open the breaker now, so that the next operation does not wait too.
                // The threads probe and close it once the server answers.
                self.shared.reason.lock().clone_from(&why);
                self.shared.open.store(true, Ordering::Release);
                Err(if self.writes {
                    Failure::InDoubt(why)
                } else {
                    Failure::NotSent(why)
                })
            }
        }
    }
}

/// The I/O thread's state.
struct Io {
    config: LinkConfig,
    shared: Arc<Shared>,
    connection: Option<redis::Connection>,
    /// How this connection calls the script (loaded when it connected).
    script: Option<script::Invoke>,
    /// `Shared::lost` when the connection was opened.
    opened_after: u64,
}

impl Io {
    fn new(config: LinkConfig, shared: Arc<Shared>) -> Io {
        Io {
            config,
            shared,
            connection: None,
            script: None,
            opened_after: 0,
        }
    }

    fn run(mut self, receiver: &Receiver<Message>) {
        loop {
            let first = if self.shared.open.load(Ordering::Acquire) {
                match receiver.recv_timeout(PROBE_INTERVAL) {
                    Ok(message) => message,
                    Err(RecvTimeoutError::Timeout) => {
                        self.probe();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match receiver.recv() {
                    Ok(message) => message,
                    Err(_) => return,
                }
            };
            let Message::Job(first) = first else { return };
            let mut jobs = vec![first];
            let mut closing = false;
            while jobs.len() < MAX_JOBS {
                match receiver.try_recv() {
                    Ok(Message::Job(job)) => jobs.push(job),
                    Ok(Message::Close) => {
                        closing = true;
                        break;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.serve(jobs);
            if closing {
                return;
            }
        }
    }

    /// Connects (if needed) and loads the script; on failure opens the breaker.
    fn ready(&mut self) -> Result<(), String> {
        if self.opened_after != self.shared.lost.load(Ordering::Acquire) {
            // Another connection found the server gone since this one was opened.
            self.connection = None;
        }
        if self.connection.is_some() && self.script.is_some() {
            return Ok(());
        }
        let result = self.connect();
        if let Err(why) = &result {
            self.trip(why);
        }
        result
    }

    fn connect(&mut self) -> Result<(), String> {
        let opened_after = self.shared.lost.load(Ordering::Acquire);
        let timeout = self.config.timeout;
        let client = redis::Client::open(self.config.info.clone()).map_err(|e| e.to_string())?;
        let mut connection = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| format!("cannot connect: {e}"))?;
        connection
            .set_read_timeout(Some(timeout))
            .and_then(|()| connection.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let invoke = script::load(&mut connection)?;
        self.connection = Some(connection);
        self.script = Some(invoke);
        self.opened_after = opened_after;
        Ok(())
    }

    /// Opens the breaker: the connection is dropped, callers are refused until a probe succeeds.
    fn trip(&mut self, why: &str) {
        self.lose_connection();
        *self.shared.reason.lock() = why.to_string();
        self.shared.open.store(true, Ordering::Release);
    }

    /// Drops this thread's connection after it failed, and tells the others theirs predate the
    /// failure.
    fn lose_connection(&mut self) {
        if self.connection.take().is_some() {
            self.shared.lost.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn probe(&mut self) {
        if self.connect().is_ok() {
            self.shared.open.store(false, Ordering::Release);
        }
    }

    fn serve(&mut self, jobs: Vec<Job>) {
        let now = Instant::now();
        let (live, late): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > now);
        for job in late {
            job.reply.send(Err(Failure::NotSent(
                "the operation waited past its timeout for the Redis connection".into(),
            )));
        }
        if live.is_empty() {
            return;
        }
        if let Some(reason) = self.shared.open.load(Ordering::Acquire).then(|| {
            format!(
                "Redis is unavailable (circuit open): {}",
                self.shared.reason.lock()
            )
        }) {
            for job in live {
                job.reply.send(Err(Failure::NotSent(reason.clone())));
            }
            return;
        }
        if let Err(why) = self.ready() {
            for job in live {
                job.reply.send(Err(Failure::NotSent(why.clone())));
            }
            return;
        }
        self.send(live, true);
    }

    /// Sends `jobs` as one pipeline of script calls and answers each. A call refused because
    /// the server no longer has the script (a restart, `SCRIPT FLUSH`, `FUNCTION FLUSH`) did not
    /// run: the script is loaded again and those jobs are sent once more.
    fn send(&mut self, jobs: Vec<Job>, first_try: bool) {
        let calls = plan(&jobs);
        let (Some(connection), Some(invoke)) = (self.connection.as_mut(), self.script.as_ref())
        else {
            return;
        };
        let now = (self.config.now)();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for call in &calls {
            let ops = call.iter().flat_map(|&(job, ops)| {
                jobs.get(job)
                    .map(|job| &job.ops[ops.0..ops.1])
                    .unwrap_or_default()
                    .iter()
            });
            pipe.add_command(script::command(invoke, now, self.config.drain, ops));
        }
        self.shared.pipelines.fetch_add(1, Ordering::Relaxed);
        self.shared
            .calls
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        let results: Result<Vec<redis::RedisResult<redis::Value>>, _> = pipe.query(connection);
        let results = match results {
            Ok(results) if results.len() == calls.len() => results,
            Ok(_) => {
                self.fail_all(
                    jobs,
                    "Redis answered a pipeline with the wrong number of replies",
                );
                return;
            }
            Err(error) => {
                let why = if error.is_timeout() {
                    format!("no answer within {:?}", self.config.timeout)
                } else {
                    error.to_string()
                };
                self.trip(&why);
                self.fail_all(jobs, &why);
                return;
            }
        };
        // Each job's replies, gathered from the calls its operations went into.
        let mut answers: Vec<Result<Vec<Reply>, Failure>> = jobs
            .iter()
            .map(|job| Ok(Vec::with_capacity(job.ops.len())))
            .collect();
        let mut again = Vec::new();
        for (call, result) in calls.iter().zip(results) {
            let count = call.iter().map(|(_, ops)| ops.1 - ops.0).sum();
            let replies = match result {
                Ok(value) => script::decode(&value, count).map_err(|message| Failure::Refused {
                    code: None,
                    message,
                }),
                Err(error) if script::is_missing(&error) && first_try => {
                    again.extend(call.iter().map(|&(job, _)| job));
                    continue;
                }
                Err(error) => Err(Failure::Refused {
                    code: error.code().map(str::to_string),
                    message: error.to_string(),
                }),
            };
            let mut replies = replies.map(Vec::into_iter);
            for &(job, ops) in call {
                let Some(answer) = answers.get_mut(job) else {
                    continue;
                };
                match (&mut replies, answer.as_mut()) {
                    (Ok(replies), Ok(gathered)) => gathered.extend(replies.take(ops.1 - ops.0)),
                    (Err(failure), Ok(_)) => *answer = Err(failure.clone()),
                    (_, Err(_)) => {}
                }
            }
        }
        let mut retry = Vec::new();
        let mut deliveries = Vec::with_capacity(jobs.len());
        for (index, (job, answer)) in jobs.into_iter().zip(answers).enumerate() {
            if again.contains(&index) {
                retry.push(job);
            } else {
                deliveries.push(job.reply.delivery(answer));
            }
        }
        oneshot::deliver(deliveries);
        if !retry.is_empty() {
            self.script = None;
            match self.ready() {
                Ok(()) => self.send(retry, false),
                Err(why) => {
                    for job in retry {
                        job.reply.send(Err(Failure::NotSent(why.clone())));
                    }
                }
            }
        }
    }

    /// Answers every job after the pipeline failed: each may have run.
    fn fail_all(&mut self, jobs: Vec<Job>, why: &str) {
        self.lose_connection();
        for job in jobs {
            let failure = if job.ops.iter().any(|op| op.code.writes()) {
                Failure::InDoubt(why.to_string())
            } else {
                Failure::NotSent(why.to_string())
            };
            job.reply.send(Err(failure));
        }
    }
}

/// A call: (job index, its operations `start..end`) in order.
type Call = Vec<(usize, (usize, usize))>;

/// Groups the jobs' operations into script calls: one slot per call, at most
/// [`MAX_OPS_PER_CALL`] operations each (a job larger than that is split over calls of its
/// slot, in order). Calls run in the order of their first job.
fn plan(jobs: &[Job]) -> Vec<Call> {
    let mut calls: Vec<(u16, usize, Call)> = Vec::new(); // (slot, operations, parts)
    for (index, job) in jobs.iter().enumerate() {
        let mut start = 0;
        while start < job.ops.len() {
            let open = calls
                .iter_mut()
                .rev()
                .find(|(slot, count, _)| *slot == job.slot && *count < MAX_OPS_PER_CALL);
            let (count, parts) = if let Some((_, count, parts)) = open {
                (count, parts)
            } else {
                calls.push((job.slot, 0, Vec::new()));
                let Some((_, count, parts)) = calls.last_mut() else {
                    return Vec::new();
                };
                (count, parts)
            };
            let take = (MAX_OPS_PER_CALL - *count).min(job.ops.len() - start);
            parts.push((index, (start, start + take)));
            *count += take;
            start += take;
        }
    }
    calls.into_iter().map(|(_, _, parts)| parts).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::redis::namespace::MicroSpec;
    use crate::engine::redis::script::{Code, Target};

    fn job(slot: u16, ops: usize) -> Job {
        let op = Op {
            code: Code::Charge,
            amount: 1,
            recover: false,
            secret_id: Arc::from("id"),
            targets: vec![Target {
                counter: "c".into(),
                sentinel: Arc::from("s"),
                spec: MicroSpec {
                    kind: "g",
                    a: 1,
                    b: 1,
                },
            }],
        };
        Job {
            ops: vec![op; ops],
            slot,
            deadline: Instant::now(),
            reply: oneshot::channel().0,
        }
    }

    /// Jobs of one slot share calls of at most `MAX_OPS_PER_CALL` operations; other slots get
    /// calls of their own; every operation is planned exactly once, in order.
    #[test]
    fn calls_group_by_slot_and_stay_bounded() {
        let jobs = [job(1, 1), job(2, 1), job(1, 70), job(1, 1)];
        let calls = plan(&jobs);
        assert_eq!(
            calls,
            vec![
                vec![(0, (0, 1)), (2, (0, 63))],
                vec![(1, (0, 1))],
                vec![(2, (63, 70)), (3, (0, 1))],
            ]
        );
        for call in &calls {
            let count: usize = call.iter().map(|(_, (a, b))| b - a).sum();
            assert!(count <= MAX_OPS_PER_CALL);
        }
    }
}
