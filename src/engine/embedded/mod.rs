//! The embedded engine: one redb file, one writer at a time, group commit.
//!
//! Reads (replays, `get`, peeks in Immediate mode) run in a read transaction on the caller's
//! thread and never wait for the writer. Changes are [`Command`]s, group-committed by one writer at
//! a time: the caller itself when the store is idle, otherwise the writer thread (`writer.rs`);
//! what each command does inside the transaction is `sequencer.rs`. Batched rate counters live in
//! memory (`rate_cache.rs`) and are flushed by the writer. `storage/` is the only code that names
//! redb's types.
//!
//! `close` stops the compactor, then the writer (after it applied everything queued before),
//! joins both and releases the file; any call afterwards gets [`Error::Closed`].

mod applier;
mod command;
mod counters;
mod failure;
pub(crate) mod log;
mod options;
mod rate_cache;
mod records;
mod sequencer;
pub(crate) mod storage;
mod txn;
mod wal_commit;
mod writer;
mod writer_core;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use super::Swept;
use crate::clock::{Clock, StoreTime, system_time_to_nanos};
use crate::engine::compactor::Compactor;
use crate::engine::notify::Notifier;
use crate::engine::write_counters::Counters;
use crate::error::{Error, IoKind, Result};
use crate::ratelimit::crash_policy::Recovery;
use crate::ratelimit::{CounterKeys, CrashPolicy};
use crate::status::Stats;
use applier::{Applier, RedbSide};
pub(crate) use command::Command;
use command::Pending;
use failure::{Cause, Failure};
use log::overlay::Overlay;
use log::{Geometry, LogFile};
pub(crate) use options::Options;
use rate_cache::RateCache;
use sequencer::Sequencer;
pub(crate) use storage::Location;
use storage::{Backend, OpenOptions, io_kind};
use writer::Writer;
use writer_core::{Core, WalCore};

/// How often a store that cannot write tries to reopen its file for writing, at most (on the
/// store's clock, at its next write).
pub(crate) const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// An open store file and its writer.
pub(crate) struct Embedded {
    /// `None` once closed.
    running: RwLock<Option<Running>>,
    time: Arc<StoreTime>,
    /// The current writer's failure flag (a fresh one for each writer).
    failure: RwLock<Arc<Failure>>,
    /// Raised by the current writer's failure, lowered once settled: read on every operation.
    alarm: Arc<AtomicBool>,
    /// Set while the store cannot write (so that operations know to try to reopen, cheaply).
    degraded: AtomicBool,
    counters: Arc<Counters>,
    /// This open's epoch; a reopen for writing after a failure bumps it.
    epoch: AtomicU64,
    /// Present in Batched rate mode.
    rate_cache: Option<Arc<RateCache>>,
    recovery: Recovery,
    rate_keys: CounterKeys,
    location: Location,
    /// What opening the file again takes.
    reopen: Reopen,
}

/// What the engine needs to open its file again (after a write failure).
struct Reopen {
    options: OpenOptions,
    clock: Arc<dyn Clock>,
    max_records: Option<u64>,
    compaction_batch: usize,
    rate_flush_every: Option<Duration>,
    compaction_interval: Option<Duration>,
    notifier: Arc<Notifier>,
    /// Whether this session writes through the log, and the log's shape and memory cap.
    log: LogSettings,
    /// Opened with `open_read_only`: never opened for writing.
    read_only: bool,
}

/// How the engine uses the write-ahead log.
#[derive(Debug, Clone, Copy)]
struct LogSettings {
    enabled: bool,
    geometry: Geometry,
    memory: usize,
}

/// What exists only while the store is open.
struct Running {
    /// `None` if the file could not be opened even for reads (every read fails with `cause`).
    backend: Option<Arc<Backend>>,
    /// `None` while the store cannot write: every write is refused with the cause's error.
    writer: Option<WriterParts>,
    /// Why the store cannot write, since when, and when it last tried to reopen for writing.
    degraded: Option<Degraded>,
    /// What the log acknowledged and redb may not hold yet (reads look here first).
    overlay: Option<Arc<Overlay>>,
}

struct WriterParts {
    commands: Sender<Command>,
    /// The queue's receiving end, for callers that lead a batch themselves.
    queue: Receiver<Command>,
    core: Arc<Mutex<Core>>,
    writer: JoinHandle<()>,
    compactor: Option<Compactor>,
    applier: Option<Applier>,
}

struct Degraded {
    cause: Cause,
    /// When the last reopen for writing was tried, on the store's clock.
    tried: SystemTime,
}

impl WriterParts {
    /// Stops the compactor, then the writer (after it applied everything queued before) and
    /// joins both. Returns whether the writer thread ended normally.
    fn stop(self) -> bool {
        if let Some(compactor) = self.compactor {
            compactor.stop();
        }
        // A held applier (test support) is released: the writer's last commit waits for it.
        #[cfg(any(test, feature = "test-support"))]
        if let Some(applier) = &self.applier {
            applier.release();
        }
        // If the writer is already gone the send fails; joining still reports how it ended.
        let _ = self.commands.send(Command::Shutdown);
        let joined = self.writer.join();
        drop(self.core);
        // After the writer: its last batches are published, and the applier writes them.
        let applied = self.applier.is_none_or(Applier::stop);
        joined.is_ok() && applied
    }
}

impl Running {
    /// Stops the writer and closes the file.
    fn shut_down(self) -> Result<()> {
        let joined = self.writer.is_none_or(WriterParts::stop);
        let closed = match self.backend.map(Arc::try_unwrap) {
            Some(Ok(backend)) => backend.close(),
            // Unreachable: only the writer's core (now dropped) and this engine hold the backend.
            Some(Err(_)) | None => Ok(()),
        };
        if !joined {
            return Err(Error::Poisoned);
        }
        closed
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            // Drop cannot report; `Store::close` is the way to see errors.
            let _ = running.shut_down();
        }
    }
}

impl Embedded {
    /// Opens (or creates) the store at `location`. A file that exists but cannot be written (no
    /// space left, a read-only file or filesystem) opens for reads only: the store serves reads
    /// and refuses writes, and tries to open for writing again at its next write.
    pub(crate) fn open(
        options: &Options,
        location: Location,
        notifier: Arc<Notifier>,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let rate_flush_every = options.rate_flush_every;
        let log = LogSettings {
            // In-memory stores have no log file (nothing of theirs outlives the process); the
            // simulated disk has one when a test asks for it.
            enabled: match location {
                Location::File(_) => options.write_ahead_log.unwrap_or(true),
                Location::Memory(_) => false,
                #[cfg(any(test, feature = "test-support"))]
                Location::Simulated(_) => options.write_ahead_log.unwrap_or(false),
            },
            geometry: log_geometry(options)?,
            memory: options.log_memory,
        };
        let open = OpenOptions {
            cache_size: options.cache_size,
            now: system_time_to_nanos(options.clock.now()),
            batched_rates: rate_flush_every.is_some(),
            quick_repair: options.quick_repair,
            verify: options.verify_on_open,
            secret_if_new: options.rate_secret,
            same_session: false,
            write_ahead_log: log.enabled,
        };
        let (backend, mut persisted, degraded, mut created) = if options.read_only {
            open_read_view(&location, open)?
        } else {
            open_backend(&location, open)?
        };
        // Whatever the log holds goes into redb before anything reads the counters.
        let (session_log, read_overlay) = if degraded.is_some() {
            (None, read_only_overlay(&location, &persisted)?)
        } else {
            (recover_log(&backend, &location, log, &mut persisted)?, None)
        };
        counters.set_records(persisted.record_counts.as_array());
        let recovery = Recovery::new(options.crash_policy, persisted.rate_recovery_at);
        let rate_keys = CounterKeys::new(persisted.rate_secret);
        let reservations = options.crash_policy == CrashPolicy::BoundedLoss;
        let rate_cache =
            rate_flush_every.map(|_| Arc::new(RateCache::new(rate_keys, reservations)));
        let time = Arc::new(StoreTime::new(
            Arc::clone(&options.clock),
            persisted.clock_high_water,
        ));
        let alarm = Arc::new(AtomicBool::new(false));
        let engine = Self {
            running: RwLock::new(None),
            time,
            failure: RwLock::new(Arc::new(Failure::new(Arc::clone(&alarm)))),
            alarm,
            degraded: AtomicBool::new(degraded.is_some()),
            counters,
            epoch: AtomicU64::new(persisted.epoch),
            rate_cache,
            recovery,
            rate_keys,
            location,
            reopen: Reopen {
                options: OpenOptions {
                    same_session: true,
                    ..open
                },
                clock: Arc::clone(&options.clock),
                max_records: options.max_records,
                compaction_batch: options.compaction_batch,
                rate_flush_every,
                compaction_interval: options.compaction_interval,
                notifier,
                log,
                read_only: options.read_only,
            },
        };
        let backend = Arc::new(backend);
        let running = match degraded {
            None => engine.start_writer(backend, persisted, session_log)?,
            Some(cause) => Running {
                backend: Some(backend),
                writer: None,
                degraded: Some(Degraded {
                    cause,
                    tried: engine.reopen.clock.now(),
                }),
                overlay: read_overlay,
            },
        };
        *engine.running.write() = Some(running);
        created.0 = None;
        Ok(engine)
    }

    /// Starts a writer (and the compactor, and with `log` the applier) on `backend`, opened for
    /// writing with `persisted`.
    fn start_writer(
        &self,
        backend: Arc<Backend>,
        persisted: storage::Counters,
        log: Option<log::Log>,
    ) -> Result<Running> {
        let failure = Arc::new(Failure::new(Arc::clone(&self.alarm)));
        let (wal, applier) = match log {
            Some(log) => {
                let overlay = Arc::new(Overlay::new(
                    self.reopen.log.memory,
                    log.end(),
                    persisted.next_token,
                    persisted.clock_high_water,
                ));
                let redb = Arc::new(Mutex::new(RedbSide {
                    counts: persisted.record_counts,
                }));
                let applier = Applier::start(
                    Arc::clone(&backend),
                    Arc::clone(&overlay),
                    Arc::clone(&redb),
                    Arc::clone(&failure),
                    persisted.epoch,
                    self.location.path(),
                )?;
                let records = backend.record_count()?;
                let wal = WalCore {
                    log,
                    overlay,
                    redb,
                    records,
                };
                (Some(wal), Some(applier))
            }
            None => (None, None),
        };
        let overlay = wal.as_ref().map(|wal| Arc::clone(&wal.overlay));
        let (commands, receiver) = crossbeam_channel::unbounded();
        let core = Arc::new(Mutex::new(Core {
            backend: Arc::clone(&backend),
            failure: Arc::clone(&failure),
            path: self.location.path(),
            notifier: Arc::clone(&self.reopen.notifier),
            counters: Arc::clone(&self.counters),
            sequencer: Sequencer {
                time: Arc::clone(&self.time),
                epoch: persisted.epoch,
                next_token: persisted.next_token,
                max_records: self.reopen.max_records,
                recovery: self.recovery,
                record_counts: persisted.record_counts,
            },
            rate_flush: self
                .rate_cache
                .as_ref()
                .zip(self.reopen.rate_flush_every)
                .map(|(cache, every)| (Arc::clone(cache), every)),
            last_foreground: Instant::now(),
            stopped: false,
            wal,
        }));
        let writer = Writer {
            core: Arc::clone(&core),
            commands: receiver.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("tollgate-writer".into())
            .spawn(move || writer.run())
            .map_err(Error::storage)?;
        let queue = commands.clone();
        let compactor = Compactor::start(
            self.reopen.compaction_interval,
            self.reopen.compaction_batch,
            &self.counters,
            move |limit| {
                let (reply, answer) = Pending::channel();
                queue
                    .send(Command::Compact { limit, reply })
                    .map_err(|_| Error::Closed)?;
                answer.recv().map_err(|_| Error::Closed)?
            },
        )?;
        self.epoch.store(persisted.epoch, Ordering::Release);
        *self.failure.write() = failure;
        Ok(Running {
            backend: Some(backend),
            writer: Some(WriterParts {
                commands,
                queue: receiver,
                core,
                writer,
                compactor,
                applier,
            }),
            degraded: None,
            overlay,
        })
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// `Ok` while the store can serve reads (after a write failure, once its file is open again
    /// for reads).
    pub(crate) fn check_usable(&self) -> Result<()> {
        self.settle()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.running.read().is_none()
    }

    pub(crate) fn health(&self) -> crate::Health {
        if self.settle().is_err() && self.is_closed() {
            return crate::Health::Closed;
        }
        let running = self.running.read();
        match running.as_ref() {
            None => crate::Health::Closed,
            Some(Running { degraded: None, .. }) => crate::Health::Ready,
            Some(Running {
                backend: Some(_),
                degraded: Some(degraded),
                ..
            }) => crate::Health::Degraded {
                reason: degraded.cause.reason(),
            },
            Some(Running {
                backend: None,
                degraded: Some(degraded),
                ..
            }) => crate::Health::Failed {
                reason: degraded.cause.reason(),
            },
        }
    }

    pub(crate) fn close(&self) -> Result<()> {
        // Batched checks take no store-wide lock; stop them first, so that the final flush covers
        // every change they made.
        if let Some(cache) = &self.rate_cache {
            cache.close();
        }
        let running = self.running.write().take();
        match running {
            // A read-only view had nothing to write.
            Some(running) if self.reopen.read_only => running.shut_down(),
            // What could not be written (the clock's mark, Batched counters) is lost with this
            // close: say so (a crash-like end, which the next open treats as one).
            Some(Running {
                degraded: Some(degraded),
                backend,
                writer,
                overlay,
            }) => {
                let _ = Running {
                    backend,
                    writer,
                    degraded: None,
                    overlay,
                }
                .shut_down();
                Err(degraded.cause.error())
            }
            Some(running) => running.shut_down(),
            None => Ok(()),
        }
    }

    pub(crate) fn compact_step(&self, limit: usize) -> Result<Swept> {
        self.send(|reply| Command::Compact { limit, reply })
    }

    pub(crate) fn stats(&self) -> Result<Stats> {
        self.settle()?;
        let mut stats = self.counters.snapshot();
        {
            let running = self.running.read();
            let running = running.as_ref().ok_or(Error::Closed)?;
            stats.degraded = running
                .degraded
                .as_ref()
                .map(|degraded| degraded.cause.kind());
            let backend = running
                .backend
                .as_ref()
                .ok_or_else(|| unreadable(running))?;
            // Counted in redb: once it holds what the log acknowledged.
            if let (Some(overlay), Some(_)) = (&running.overlay, &running.writer) {
                overlay.wait_applied()?;
            }
            stats.rate_states = backend.rate_count()?;
        }
        stats.file_bytes = self.location.len()?;
        if let Some(cache) = &self.rate_cache {
            stats.rate_counters_in_memory = cache.len() as u64;
        }
        Ok(stats)
    }

    /// A view of the writer's command queue that outlives `close` (test support). `None` once
    /// closed, or while the store cannot write.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn command_queue(&self) -> Option<Receiver<Command>> {
        let running = self.running.read();
        running
            .as_ref()?
            .writer
            .as_ref()
            .map(|writer| writer.queue.clone())
    }

    /// Holds or releases the log applier (test support); whether the store writes a log.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn hold_applier(&self, hold: bool) -> bool {
        let running = self.running.read();
        match running
            .as_ref()
            .and_then(|running| running.overlay.as_ref())
        {
            Some(overlay) => {
                overlay.hold(hold);
                true
            }
            None => false,
        }
    }

    /// Runs `read` on the open backend and the log's overlay (if the store has one).
    fn with_backend<T>(
        &self,
        read: impl FnOnce(&Backend, Option<&Overlay>) -> Result<T>,
    ) -> Result<T> {
        self.settle()?;
        self.read_backend(read)
    }

    /// [`Embedded::with_backend`] for a caller that settled already and may hold a lock of the
    /// rate cache (which the writer's shutdown in `settle` could need).
    fn read_backend<T>(
        &self,
        read: impl FnOnce(&Backend, Option<&Overlay>) -> Result<T>,
    ) -> Result<T> {
        let running = self.running.read();
        let running = running.as_ref().ok_or(Error::Closed)?;
        let backend = running
            .backend
            .as_ref()
            .ok_or_else(|| unreadable(running))?;
        read(backend, running.overlay.as_deref())
    }

    /// Has a command applied and waits for its answer: on this thread if no batch is being
    /// applied (see [`writer::lead`]), otherwise queued for the next batch. While the store
    /// cannot write (and `settle` did not manage to reopen it for writing), the command is
    /// refused with the cause's error.
    fn send<T>(&self, command: impl FnOnce(Pending<T>) -> Command) -> Result<T> {
        self.settle()?;
        let (reply, answer) = Pending::channel();
        let queued = {
            let running = self.running.read();
            let running = running.as_ref().ok_or(Error::Closed)?;
            let Some(writer) = &running.writer else {
                return Err(unreadable(running));
            };
            writer::lead(&writer.core, &writer.queue, command(reply))
                .map(|command| (command, writer.commands.clone()))
        };
        if let Some((command, commands)) = queued {
            commands.send(command).map_err(|_| Error::Closed)?;
        }
        // A dropped reply means the writer exited without answering: closed, or died.
        let failure = Arc::clone(&self.failure.read());
        answer.recv().map_err(|_| {
            if failure.is_failed() {
                failure
                    .cause()
                    .map_or(Error::Poisoned, |cause| cause.error())
            } else {
                Error::Closed
            }
        })?
    }

    fn time_to_reopen(&self, degraded: &Degraded) -> bool {
        !self.reopen.read_only
            && self
                .reopen
                .clock
                .now()
                .duration_since(degraded.tried)
                .map_or(true, |since| since >= REOPEN_INTERVAL)
    }

    /// After a write failure: stops the failed writer, closes the file (redb refuses every
    /// operation on a handle after an I/O error) and opens it again, for writing if it can, else
    /// for reads. `Ok` once the store can serve reads; `Closed` if it was closed.
    fn settle(&self) -> Result<()> {
        if !self.alarm.load(Ordering::Acquire) {
            if self.degraded.load(Ordering::Acquire) {
                self.try_reopen();
            }
            return Ok(());
        }
        let mut running = self.running.write();
        let failure = Arc::clone(&self.failure.read());
        if !failure.is_failed() {
            return Ok(()); // another caller settled it
        }
        let Some(current) = running.take() else {
            return Err(Error::Closed);
        };
        let cause = failure.cause().unwrap_or(Cause::Failed {
            reason: "a write failed".into(),
        });
        crate::observe::degraded(&cause.reason());
        let _ = current.shut_down();
        // Settled: the failed writer is gone; a new writer gets a flag of its own.
        *self.failure.write() = Arc::new(Failure::new(Arc::clone(&self.alarm)));
        self.alarm.store(false, Ordering::Release);
        *running = Some(self.reopened(cause));
        Ok(())
    }

    /// Tries to open the file for writing again (the store could not write), if the last try
    /// is [`REOPEN_INTERVAL`] old.
    fn try_reopen(&self) {
        let due = self.running.read().as_ref().is_some_and(|running| {
            running
                .degraded
                .as_ref()
                .is_some_and(|degraded| self.time_to_reopen(degraded))
        });
        if !due {
            return;
        }
        let mut running = self.running.write();
        let Some(current) = running.take() else {
            return;
        };
        // Checked again under the lock: another caller may have reopened it meanwhile.
        let due = current
            .degraded
            .as_ref()
            .is_some_and(|degraded| self.time_to_reopen(degraded));
        if !due {
            *running = Some(current);
            return;
        }
        let cause = current
            .degraded
            .as_ref()
            .map(|degraded| degraded.cause.clone());
        let _ = current.shut_down();
        *running = Some(self.reopened(cause.unwrap_or(Cause::Failed {
            reason: "a write failed".into(),
        })));
    }

    /// Opens the (closed) file again: for writing, with a new epoch, if it can; else for reads,
    /// remembering `cause` (or the new one) and the attempt.
    fn reopened(&self, cause: Cause) -> Running {
        // The options of the first open, continuing its session (its `now` decides nothing here:
        // a session's own reopen neither starts a rate recovery nor creates a file).
        let options = self.reopen.options;
        // A file that disappeared is not opened again: `open` would create a new, empty store
        // (new epochs and tokens from the start) under the same name.
        let attempt = if location_exists(&self.location) {
            Backend::open(&self.location, options)
        } else {
            Err(Error::storage(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is gone", self.location.path().display()),
            )))
        };
        let attempt = attempt.and_then(|(backend, mut persisted)| {
            let log = recover_log(&backend, &self.location, self.reopen.log, &mut persisted)?;
            let records = persisted.record_counts;
            let running = self.start_writer(Arc::new(backend), persisted, log)?;
            Ok((running, records))
        });
        match attempt {
            Ok((running, records)) => {
                self.counters.set_records(records.as_array());
                // Whatever a failed flush took from the cache is written again.
                if let Some(cache) = &self.rate_cache {
                    cache.mark_all_dirty();
                }
                crate::observe::recovered();
                self.degraded.store(false, Ordering::Release);
                self.reopen.notifier.bump();
                running
            }
            Err(error) => {
                let cause = match io_kind(&error) {
                    IoKind::Other => cause,
                    _ => Cause::of(&error, self.location.path()),
                };
                let opened = Backend::open_for_reads(&self.location, options).ok();
                let overlay = opened
                    .as_ref()
                    .and_then(|(_, persisted)| read_only_overlay(&self.location, persisted).ok())
                    .flatten();
                let backend = opened.map(|(backend, _)| Arc::new(backend));
                self.degraded.store(true, Ordering::Release);
                Running {
                    backend,
                    writer: None,
                    degraded: Some(Degraded {
                        cause,
                        tried: self.reopen.clock.now(),
                    }),
                    overlay,
                }
            }
        }
    }
}

/// The log's shape for `options`: its segment size, and enough segments for its memory cap.
fn log_geometry(options: &Options) -> Result<Geometry> {
    let segment = options.log_segment_bytes;
    let segments = options
        .log_memory
        .div_ceil(segment.max(1) as usize)
        .clamp(log::MIN_SEGMENTS as usize, 1 << 16);
    Geometry::new(segment, u32::try_from(segments).unwrap_or(u32::MAX))
}

/// The path of the log of the store file at `path`: `<path>.log`.
pub(crate) fn log_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    std::path::PathBuf::from(name)
}

/// How a log file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogAccess {
    /// For writes, created if missing.
    Create,
    /// For writes; it must exist.
    Existing,
    /// For reads; it must exist.
    ReadOnly,
}

/// The log's device for the store at `location`.
fn log_device(location: &Location, access: LogAccess) -> Result<Box<dyn storage::Device>> {
    let create = access == LogAccess::Create;
    let path = match location {
        Location::File(path) => path,
        #[cfg(any(test, feature = "test-support"))]
        Location::Simulated(disk) => {
            let log = disk.log_file();
            if !create && !log.has_bytes() {
                return Err(Error::Corrupted(
                    "the simulated disk's write-ahead log is missing".into(),
                ));
            }
            return Ok(Box::new(log));
        }
        Location::Memory(_) => {
            return Err(Error::Corrupted(
                "an in-memory store with a write-ahead log".into(),
            ));
        }
    };
    let log = log_path(path);
    if !create && !log.exists() {
        return Err(Error::Corrupted(format!(
            "the write-ahead log {} is missing: it may hold acknowledged changes",
            log.display()
        )));
    }
    let file =
        LogFile::open(&log, access != LogAccess::ReadOnly, create).map_err(Error::storage)?;
    if create {
        storage::sync_parent(&log)?;
    }
    Ok(Box::new(file))
}

/// Applies what the log of a store opened for writing holds (if the store has a log) and returns
/// the log if this session writes through it.
fn recover_log(
    backend: &Backend,
    location: &Location,
    settings: LogSettings,
    persisted: &mut storage::Counters,
) -> Result<Option<log::Log>> {
    if persisted.log.is_none() {
        return Ok(None);
    }
    let log = applier::recover(
        backend,
        |create| {
            let access = if create {
                LogAccess::Create
            } else {
                LogAccess::Existing
            };
            log_device(location, access)
        },
        settings.geometry,
        persisted,
    )?;
    Ok(settings.enabled.then_some(log))
}

/// Opens the existing store file at `location` for reads only, for good: the backend, its
/// counters, and the degraded state that refuses every write (never retried).
fn open_read_view(
    location: &Location,
    options: OpenOptions,
) -> Result<(Backend, storage::Counters, Option<Cause>, CreatedHere)> {
    let Location::File(path) = location else {
        return Err(Error::InvalidArgument(
            "only a store file can be opened read-only".into(),
        ));
    };
    if !path.is_file() {
        return Err(Error::storage(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{}: no such store file", path.display()),
        )));
    }
    let (backend, persisted) = Backend::open_read_view(path, options)?;
    let cause = Cause::ReadOnly {
        path: path.clone(),
        reason: "opened read-only".into(),
    };
    Ok((backend, persisted, Some(cause), CreatedHere(None)))
}

/// Opens the backend for `location`: for writing, or for reads only when the existing file
/// cannot be written (the cause returned). What would refuse the open is found first, without
/// writing anything; a store this open creates is removed again if the open fails after all
/// (disarm the guard returned once it succeeded).
fn open_backend(
    location: &Location,
    options: OpenOptions,
) -> Result<(Backend, storage::Counters, Option<Cause>, CreatedHere)> {
    let existed = location_exists(location);
    if let (Location::File(path), true) = (location, existed) {
        if let Some(log) = Backend::check_before_writing(path)? {
            check_log_before_writing(location, Some(log))?;
        }
    }
    let (backend, persisted, degraded) = match Backend::open(location, options) {
        Ok((backend, persisted)) => (backend, persisted, None),
        Err(error) if io_kind(&error) != IoKind::Other && existed => {
            let cause = Cause::of(&error, location.path());
            let (backend, persisted) =
                Backend::open_for_reads(location, options).map_err(|_| cause.error())?;
            crate::observe::degraded(&cause.reason());
            (backend, persisted, Some(cause))
        }
        // A creation refused by a full disk or a read-only filesystem says so, with its path.
        Err(error) if io_kind(&error) != IoKind::Other => {
            return Err(Cause::of(&error, location.path()).error());
        }
        Err(error) => return Err(error),
    };
    let created = CreatedHere(match location {
        Location::File(path) if !existed => Some(path.clone()),
        _ => None,
    });
    Ok((backend, persisted, degraded, created))
}

/// A store file (and its log) created by an open that has not succeeded yet: removed on drop
/// unless the open disarmed it by taking the path. Unlinking while redb still has the file open
/// is fine on Unix; another process that opens the path meanwhile creates a store of its own.
struct CreatedHere(Option<std::path::PathBuf>);

impl Drop for CreatedHere {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(log_path(&path));
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Refuses a store whose log holds frames (its floor is set) but is missing, or belongs to another
/// store, without writing anything (the writable open's recovery would find the same, after
/// bumping the epoch).
fn check_log_before_writing(location: &Location, log: Option<storage::LogState>) -> Result<()> {
    let Some(state) = log.filter(|state| state.floor > 0) else {
        return Ok(());
    };
    let device = log_device(location, LogAccess::ReadOnly)?;
    log::Log::open(device, log::LogKey(state.key.0, state.key.1)).map(drop)
}

/// For a store opened for reads only: the log's unapplied frames, for reads to see.
fn read_only_overlay(
    location: &Location,
    persisted: &storage::Counters,
) -> Result<Option<Arc<Overlay>>> {
    if persisted.log.is_none_or(|state| state.floor == 0) {
        return Ok(None);
    }
    applier::read_only_overlay(log_device(location, LogAccess::ReadOnly)?, persisted)
}

/// The error of an operation the store cannot serve: the cause of its degraded state.
fn unreadable(running: &Running) -> Error {
    running
        .degraded
        .as_ref()
        .map_or(Error::Poisoned, |degraded| degraded.cause.error())
}

/// Whether the store's bytes exist already (a new file cannot be created for reads).
// The other locations (memory, and the simulated disk with `test-support`) vary by feature.
#[allow(clippy::match_wildcard_for_single_variants)]
fn location_exists(location: &Location) -> bool {
    match location {
        Location::File(path) => path.exists(),
        _ => true,
    }
}

/// Runs redb's integrity check on the file of a closed store (`Store::check_integrity`).
pub(crate) fn check_integrity(path: &std::path::Path) -> Result<bool> {
    Backend::check_integrity(path)
}

/// Rewrites the file of a closed store to hold only live pages (`Store::reclaim_space`): its
/// size before and after.
pub(crate) fn reclaim(path: &std::path::Path) -> Result<(u64, u64)> {
    Backend::reclaim(path)
}
