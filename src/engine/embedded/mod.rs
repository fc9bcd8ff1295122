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
//!
//! The files of this engine, by concern:
//! - this file: the engine's lifecycle (open, start the writer, close) and its dispatch;
//! - `options.rs`: what it is opened with; `files.rs`: opening the store file;
//!   `degraded.rs`: a store that cannot write, and its reopening;
//! - `records.rs`, `counters.rs`: the two halves of the seam (`engine::RecordEngine`,
//!   `engine::CounterEngine`);
//! - `command.rs` (the protocol), `writer.rs` and `writer_core.rs` (group commit),
//!   `sequencer.rs` and `txn.rs` (what a command does), `failure.rs` (the failure model);
//! - `log/` (the write-ahead log, its recovery in `log/recovery.rs`), `wal_commit.rs` (the
//!   commit through it), `applier.rs` (the log into redb);
//! - `rate_cache.rs`: Batched counters in memory; `storage/`: redb.

mod applier;
mod command;
mod counters;
mod degraded;
mod failure;
mod files;
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
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use super::Swept;
use crate::clock::{Clock, StoreTime, system_time_to_nanos};
use crate::engine::compactor::Compactor;
use crate::engine::notify::Notifier;
use crate::engine::processes::Processes;
use crate::engine::write_counters::Counters;
use crate::error::{Error, Result};
use crate::ratelimit::crash_policy::Recovery;
use crate::ratelimit::{CounterKeys, CrashPolicy};
use crate::status::Stats;
use applier::{Applier, RedbSide};
pub(crate) use command::Command;
use command::Pending;
use degraded::{Degraded, unreadable};
use failure::Failure;
use files::Opened;
pub(crate) use files::{check_integrity, reclaim};
use log::Geometry;
use log::overlay::Overlay;
pub(crate) use log::recovery::log_path;
pub(crate) use options::Options;
use rate_cache::RateCache;
use sequencer::Sequencer;
pub(crate) use storage::Location;
use storage::{Backend, OpenOptions};
use writer::Writer;
use writer_core::{Core, WalCore};

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
    /// Whose leases are live: this open's epoch (a reopen for writing after a failure bumps it),
    /// and on a shared store its connected processes'.
    processes: Arc<Processes>,
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
            geometry: options.log_geometry()?,
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
            epoch_block: options.epoch_block,
        };
        let Opened {
            backend,
            persisted,
            degraded,
            mut created,
            session_log,
            read_overlay,
        } = files::open_and_recover(&location, open, options.read_only, log)?;
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
            processes: Arc::new(Processes::single(persisted.epoch)),
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
                processes: Arc::clone(&self.processes),
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
        self.processes.opened(persisted.epoch, persisted.epoch_end);
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
        self.processes.own()
    }

    /// Whose leases are live (a shared store's owner admits its clients' epochs here).
    pub(crate) fn processes(&self) -> &Arc<Processes> {
        &self.processes
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
}
