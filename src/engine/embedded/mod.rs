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

mod counters;
mod rate_cache;
mod records;
mod recovery;
mod sequencer;
pub(crate) mod storage;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use super::Swept;
use crate::clock::{StoreTime, system_time_to_nanos};
use crate::error::{Error, Result};
use crate::ratelimit::{CounterKeys, RateDurability};
use crate::store::{Compactor, Counters, Notifier, Settings, Stats, StoreBuilder};
use rate_cache::RateCache;
use recovery::Recovery;
use sequencer::Sequencer;
use storage::{Backend, Location, OpenOptions};
pub(crate) use writer::Command;
use writer::{Core, Pending, Writer};

/// An open store file and its writer.
pub(crate) struct Embedded {
    /// `None` once closed.
    running: RwLock<Option<Running>>,
    time: Arc<StoreTime>,
    poisoned: Arc<AtomicBool>,
    counters: Arc<Counters>,
    epoch: u64,
    /// Present in Batched rate mode.
    rate_cache: Option<Arc<RateCache>>,
    recovery: Recovery,
    rate_keys: CounterKeys,
    location: Location,
}

/// What exists only while the store is open.
struct Running {
    backend: Arc<Backend>,
    commands: Sender<Command>,
    /// The queue's receiving end, for callers that lead a batch themselves.
    queue: Receiver<Command>,
    core: Arc<Mutex<Core>>,
    writer: JoinHandle<()>,
    compactor: Option<Compactor>,
}

impl Running {
    /// Stops the compactor, then the writer (after it applied everything queued before), joins
    /// both and closes the file.
    fn shut_down(self) -> Result<()> {
        if let Some(compactor) = self.compactor {
            compactor.stop();
        }
        // If the writer is already gone the send fails; joining still reports how it ended.
        let _ = self.commands.send(Command::Shutdown);
        let joined = self.writer.join();
        drop(self.core);
        let closed = match Arc::try_unwrap(self.backend) {
            Ok(backend) => backend.close(),
            // Unreachable: only the writer's core (now dropped) and this engine hold the backend.
            Err(_) => Ok(()),
        };
        joined.map_err(|_| Error::Poisoned)?;
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
    /// Opens (or creates) the store at `location`.
    pub(crate) fn open(
        builder: &StoreBuilder,
        settings: &Settings,
        location: Location,
        notifier: Arc<Notifier>,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let rate_flush_every = match builder.rate_durability.unwrap_or_default() {
            RateDurability::Batched { max_delay } => Some(max_delay),
            RateDurability::Immediate => None,
        };
        let (backend, persisted) = Backend::open(
            &location,
            OpenOptions {
                cache_size: builder.cache_size,
                now: system_time_to_nanos(builder.clock.now()),
                batched_rates: rate_flush_every.is_some(),
                quick_repair: builder.quick_repair,
                verify: builder.verify_on_open,
                secret_if_new: builder.rate_secret,
            },
        )?;
        counters.set_records(persisted.record_counts);
        let recovery = Recovery::new(builder.crash_policy, persisted.rate_recovery_at);
        let rate_keys = CounterKeys::new(persisted.rate_secret);
        let rate_cache = rate_flush_every.map(|_| Arc::new(RateCache::new(rate_keys)));
        let backend = Arc::new(backend);
        let time = Arc::new(StoreTime::new(
            Arc::clone(&builder.clock),
            persisted.clock_high_water,
        ));
        let poisoned = Arc::new(AtomicBool::new(false));
        let (commands, receiver) = crossbeam_channel::unbounded();
        let core = Arc::new(Mutex::new(Core {
            backend: Arc::clone(&backend),
            poisoned: Arc::clone(&poisoned),
            notifier,
            counters: Arc::clone(&counters),
            sequencer: Sequencer {
                time: Arc::clone(&time),
                epoch: persisted.epoch,
                next_token: persisted.next_token,
                max_records: settings.max_records,
                recovery,
                record_counts: persisted.record_counts,
            },
            rate_flush: rate_cache
                .as_ref()
                .zip(rate_flush_every)
                .map(|(cache, every)| (Arc::clone(cache), every)),
            last_foreground: Instant::now(),
            stopped: false,
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
            builder.compaction_interval,
            settings.compaction_batch,
            &counters,
            move |limit| {
                let (reply, answer) = Pending::channel();
                queue
                    .send(Command::Compact { limit, reply })
                    .map_err(|_| Error::Closed)?;
                answer.recv().map_err(|_| Error::Closed)?
            },
        )?;
        Ok(Self {
            running: RwLock::new(Some(Running {
                backend,
                commands,
                queue: receiver,
                core,
                writer,
                compactor,
            })),
            time,
            poisoned,
            counters,
            epoch: persisted.epoch,
            rate_cache,
            recovery,
            rate_keys,
            location,
        })
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.running.read().is_none()
    }

    pub(crate) fn health(&self) -> crate::Health {
        if self.is_closed() {
            crate::Health::Closed
        } else if let Err(error) = self.check_usable() {
            crate::Health::Failed {
                reason: error.to_string(),
            }
        } else {
            crate::Health::Ready
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
            Some(running) => running.shut_down(),
            None => Ok(()),
        }
    }

    pub(crate) fn compact_step(&self, limit: usize) -> Result<Swept> {
        self.send(|reply| Command::Compact { limit, reply })
    }

    pub(crate) fn stats(&self) -> Result<Stats> {
        let mut stats = self.counters.snapshot();
        {
            let running = self.running.read();
            let running = running.as_ref().ok_or(Error::Closed)?;
            stats.rate_states = running.backend.rate_count()?;
        }
        stats.file_bytes = self.location.len()?;
        if let Some(cache) = &self.rate_cache {
            stats.rate_counters_in_memory = cache.len() as u64;
        }
        Ok(stats)
    }

    /// A view of the writer's command queue that outlives `close` (test support). `None` once
    /// closed.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn command_queue(&self) -> Option<crate::testing::CommandQueue> {
        let running = self.running.read();
        running
            .as_ref()
            .map(|running| crate::testing::CommandQueue(running.queue.clone()))
    }

    /// Runs `read` on the open backend.
    fn with_backend<T>(&self, read: impl FnOnce(&Backend) -> Result<T>) -> Result<T> {
        self.check_usable()?;
        let running = self.running.read();
        let running = running.as_ref().ok_or(Error::Closed)?;
        read(&running.backend)
    }

    /// Has a command applied and waits for its answer: on this thread if no batch is being
    /// applied (see [`writer::lead`]), otherwise queued for the next batch.
    fn send<T>(&self, command: impl FnOnce(Pending<T>) -> Command) -> Result<T> {
        self.check_usable()?;
        let (reply, answer) = Pending::channel();
        let queued = {
            let running = self.running.read();
            let running = running.as_ref().ok_or(Error::Closed)?;
            writer::lead(&running.core, &running.queue, command(reply))
                .map(|command| (command, running.commands.clone()))
        };
        if let Some((command, commands)) = queued {
            commands.send(command).map_err(|_| Error::Closed)?;
        }
        // A dropped reply means the writer exited without answering: closed, or died (poisoned).
        answer.recv().map_err(|_| {
            if self.poisoned.load(Ordering::Acquire) {
                Error::Poisoned
            } else {
                Error::Closed
            }
        })?
    }
}
