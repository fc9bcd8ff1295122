//! The store: an open file, its writer (a thread, or a caller leading a batch), and the operations
//! on it.
//!
//! [`Store`] is a cheap `Arc` handle. Reads (replays, `get`) run in a read transaction on the
//! caller's thread and never wait for the writer. Writes (`begin` that creates or takes over a
//! record, every lease resolution) are group-committed by one writer at a time: the caller itself
//! when the store is idle, otherwise the writer thread (see `writer`). `close` stops the writer, joins it and releases the file; any handle or lease used
//! afterwards gets [`Error::Closed`].

mod builder;
mod bulk;
mod compaction;
mod notify;
mod rate;
mod rate_cache;
mod replay_cache;
mod sequencer;
mod stats;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Mutex, RwLock};

use builder::Settings;
pub use builder::{
    BeginOptions, DEFAULT_CACHE_SIZE, DEFAULT_COMPACTION_BATCH, DEFAULT_COMPACTION_INTERVAL,
    DEFAULT_LEASE_TTL, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RECORD_TTL, DEFAULT_REPLAY_CACHE_SIZE,
    MAX_RESPONSE_BYTES_LIMIT, StoreBuilder,
};
use compaction::Compactor;
pub use compaction::Reclaimed;
use notify::Notifier;
use sequencer::Sequencer;
use stats::Counters;
pub use stats::{CompactionReport, Stats};
pub(crate) use writer::Command;
use writer::{Answer, BeginRequest, Core, Writer};

use crate::clock::StoreTime;
use crate::clock::system_time_to_nanos;
use crate::error::{Error, Result};
use crate::idempotency::machine::{BeginDecision, BeginParams, Resolution, begin as decide};
use crate::idempotency::{Begin, Digest, Fingerprint, IdempotencyKey, Lease, RecordInfo, Replay};
use crate::observe::BeginOutcome;
use crate::ratelimit::{CounterKeys, RateDurability};
use crate::storage::{Backend, Location, OpenOptions};
use rate::Recovery;
use rate_cache::RateCache;
use replay_cache::ReplayCache;

/// An open tollgate store. `Clone + Send + Sync`; clones share one file and one writer thread.
///
/// # Examples
///
/// ```
/// use tollgate::{Store, idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse}};
/// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
/// # let path = dir.path().join("tollgate.redb");
/// let store = Store::open(&path)?;
/// let key = IdempotencyKey::new("user:42", "order-7f3a")?;
/// let request = Fingerprint::of(b"POST /orders {\"sku\":\"A1\"}");
///
/// match store.begin(&key, &request)? {
///     Begin::Acquired(lease) => lease.complete(StoredResponse::new(201, b"order 1".to_vec()))?,
///     _ => unreachable!("first request"),
/// }
/// // The retry is answered from the store.
/// let Begin::Replay(replay) = store.begin(&key, &request)? else { unreachable!() };
/// assert_eq!(replay.response().body, b"order 1");
/// store.close()?;
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` once closed.
    engine: RwLock<Option<Engine>>,
    settings: Settings,
    time: Arc<StoreTime>,
    poisoned: Arc<AtomicBool>,
    notifier: Arc<Notifier>,
    counters: Arc<Counters>,
    epoch: u64,
    /// Present in Batched rate mode.
    rate_cache: Option<Arc<RateCache>>,
    recovery: Recovery,
    rate_keys: CounterKeys,
    location: Location,
    /// Finished records for the replay fast path (`None`: disabled).
    replays: Option<ReplayCache>,
}

struct Engine {
    backend: Arc<Backend>,
    commands: Sender<Command>,
    /// The queue's receiving end, for callers that lead a batch themselves.
    queue: Receiver<Command>,
    core: Arc<Mutex<Core>>,
    writer: JoinHandle<()>,
    compactor: Option<Compactor>,
}

impl Engine {
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

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.get_mut().take() {
            // Drop cannot report; `Store::close` is the way to see errors.
            let _ = engine.shut_down();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("epoch", &self.shared.epoch)
            .field("closed", &self.shared.engine.read().is_none())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `path` with default settings, creating it if needed.
    ///
    /// # Errors
    /// As for [`StoreBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::builder().open(path)
    }

    /// A builder for a store with non-default settings.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    pub(crate) fn open_with(builder: StoreBuilder, location: Location) -> Result<Store> {
        let settings = builder.settings()?;
        let rate_flush_every = match builder.rate_durability {
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
        let recovery = Recovery::new(builder.crash_policy, persisted.rate_recovery_at);
        let rate_keys = CounterKeys::new(persisted.rate_secret);
        let rate_cache = rate_flush_every.map(|_| Arc::new(RateCache::new(rate_keys)));
        let backend = Arc::new(backend);
        let time = Arc::new(StoreTime::new(builder.clock, persisted.clock_high_water));
        let poisoned = Arc::new(AtomicBool::new(false));
        let notifier = Arc::new(Notifier::default());
        let counters = Arc::new(Counters::new(persisted.record_counts));
        let (commands, receiver) = crossbeam_channel::unbounded();
        let core = Arc::new(Mutex::new(Core {
            backend: Arc::clone(&backend),
            poisoned: Arc::clone(&poisoned),
            notifier: Arc::clone(&notifier),
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
            .map_err(|error| Error::Storage(crate::error::StorageError::new(error)))?;
        let compactor = match builder.compaction_interval {
            Some(interval) => Some(
                Compactor::spawn(
                    commands.clone(),
                    interval,
                    settings.compaction_batch,
                    Arc::clone(&counters),
                )
                .map_err(|error| Error::Storage(crate::error::StorageError::new(error)))?,
            ),
            None => None,
        };
        Ok(Store {
            shared: Arc::new(Shared {
                engine: RwLock::new(Some(Engine {
                    backend,
                    commands,
                    queue: receiver,
                    core,
                    writer,
                    compactor,
                })),
                settings,
                time,
                poisoned,
                notifier,
                counters,
                epoch: persisted.epoch,
                rate_cache,
                recovery,
                rate_keys,
                location,
                replays: ReplayCache::new(builder.replay_cache_size),
            }),
        })
    }

    /// Starts (or replays, or refuses) the request identified by `key` with the store's default
    /// TTLs and no waiting. See [`Store::begin_with`].
    ///
    /// # Errors
    /// As for [`Store::begin_with`].
    pub fn begin(&self, key: &IdempotencyKey, fingerprint: &Fingerprint) -> Result<Begin> {
        self.begin_with(key, fingerprint, &BeginOptions::default())
    }

    /// Starts the request identified by `key`:
    /// - no record, or an expired one: [`Begin::Acquired`] with a fresh lease;
    /// - RUNNING under a live lease: [`Begin::InFlight`] (or, with `options.wait`, wait for it);
    /// - RUNNING under an expired lease, or one from before the store was last opened: taken over,
    ///   [`Begin::Acquired`] with [`Lease::recovered`] set;
    /// - COMPLETED or FAILED: [`Begin::Replay`];
    /// - any record whose fingerprint differs: [`Begin::Mismatch`].
    ///
    /// A lease is durable before it is returned. Replays, mismatches and in-flight answers for
    /// committed records are served from a read transaction, without the writer.
    ///
    /// # Errors
    /// - [`Error::CapacityExceeded`] if a new record would exceed `max_records`.
    /// - [`Error::InvalidArgument`] for a zero TTL in `options`.
    /// - [`Error::Corrupted`] if the stored record cannot be decoded.
    /// - [`Error::Closed`], [`Error::Poisoned`], [`Error::Storage`].
    pub fn begin_with(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: &BeginOptions,
    ) -> Result<Begin> {
        let (lease_ttl, record_ttl) = self.shared.settings.ttls(options)?;
        let request = BeginRequest {
            fingerprint: fingerprint.0,
            lease_ttl,
            record_ttl,
        };
        let digest = key.digest();
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        loop {
            let seen = self.shared.notifier.generation();
            let outcome = self.begin_once(digest, request)?;
            match (outcome, deadline) {
                (Begin::InFlight { retry_after }, Some(deadline)) if Instant::now() < deadline => {
                    // Wake at the first of: a commit, the lease's expiry, the caller's deadline.
                    let wake = Instant::now()
                        .checked_add(retry_after)
                        .map_or(deadline, |expiry| expiry.min(deadline));
                    self.shared.notifier.wait_past(seen, wake);
                }
                (outcome, _) => return Ok(outcome),
            }
        }
    }

    fn begin_once(&self, digest: Digest, request: BeginRequest) -> Result<Begin> {
        // Fast path: answers that need no write come from the latest committed state, finished
        // records from the replay cache when it has them.
        let params = |now| BeginParams {
            fingerprint: request.fingerprint,
            now,
            epoch: self.shared.epoch,
            lease_ttl: request.lease_ttl,
            record_ttl: request.record_ttl,
            next_token: 0,
        };
        if let Some(cached) = self.shared.replays.as_ref().and_then(|c| c.get(&digest)) {
            self.check_usable()?;
            match decide(Some(&cached), &params(self.shared.time.now())) {
                BeginDecision::Acquired { .. } => {}
                decision => return Ok(self.to_begin(digest, decision)),
            }
        } else {
            let generation = self.shared.replays.as_ref().map(ReplayCache::generation);
            if let Some(record) = self.read_record(&digest)? {
                let decision = decide(Some(&record), &params(self.shared.time.now()));
                if let (Some(cache), Some(generation)) = (&self.shared.replays, generation) {
                    if matches!(decision, BeginDecision::Replay { .. }) {
                        cache.insert(digest, record, generation);
                    }
                }
                match decision {
                    BeginDecision::Acquired { .. } => {}
                    decision => return Ok(self.to_begin(digest, decision)),
                }
            }
        }
        let answer = self.send(|reply| Command::Begin {
            digest,
            request,
            reply,
        })?;
        match answer {
            Answer::Begin(decision) => Ok(self.to_begin(digest, decision)),
            _ => Err(Error::Corrupted(
                "the writer answered a begin with something else".into(),
            )),
        }
    }

    fn to_begin(&self, digest: Digest, decision: BeginDecision) -> Begin {
        let (outcome, attempt) = match &decision {
            BeginDecision::Acquired { grant, .. } if grant.recovered => {
                (BeginOutcome::Takeover, grant.attempt)
            }
            BeginDecision::Acquired { grant, .. } => (BeginOutcome::Acquired, grant.attempt),
            BeginDecision::Replay { .. } => (BeginOutcome::Replay, 0),
            BeginDecision::InFlight { .. } => (BeginOutcome::InFlight, 0),
            BeginDecision::Mismatch => (BeginOutcome::Mismatch, 0),
        };
        crate::observe::begin(&digest, outcome, attempt);
        match decision {
            BeginDecision::Acquired { grant, .. } => Begin::Acquired(Lease {
                store: self.clone(),
                digest,
                token: grant.token,
                attempt: grant.attempt,
                recovered: grant.recovered,
                checkpoint: grant.checkpoint,
                expires_at: grant.lease_expires_at,
            }),
            BeginDecision::Replay { outcome, response } => {
                Begin::Replay(Replay { outcome, response })
            }
            BeginDecision::InFlight { retry_after } => Begin::InFlight {
                retry_after: Duration::from_nanos(retry_after),
            },
            BeginDecision::Mismatch => Begin::Mismatch,
        }
    }

    /// The state of `key`'s record, or `None` if there is none or it has expired.
    ///
    /// # Errors
    /// [`Error::Corrupted`] if the record cannot be decoded; [`Error::Closed`],
    /// [`Error::Poisoned`], [`Error::Storage`].
    pub fn get(&self, key: &IdempotencyKey) -> Result<Option<RecordInfo>> {
        let now = self.shared.time.now();
        Ok(self
            .read_record(&key.digest())?
            .filter(|record| !record.is_expired(now))
            .map(|record| record.info()))
    }

    /// Up to `limit` records in digest order, starting after the digest `after` (pass the last
    /// digest of one page to get the next), each with its state and times, expired ones included.
    /// Raw keys are not stored, so records are named by their digest. A record that cannot be
    /// decoded is listed with its error.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`], [`Error::Storage`].
    pub fn list_records(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<(Digest, Result<RecordInfo>)>> {
        self.check_usable()?;
        let engine = self.shared.engine.read();
        let engine = engine.as_ref().ok_or_else(|| Error::Closed)?;
        Ok(engine
            .backend
            .list_records(after, limit)?
            .into_iter()
            .map(|(digest, record)| (digest, record.map(|r| r.info())))
            .collect())
    }

    /// Flushes, stops the writer thread, and releases the file, which can be opened again at once.
    /// Every clone of this store and every lease still alive gets [`Error::Closed`] afterwards.
    /// Closing a store that a clone already closed does nothing.
    ///
    /// # Errors
    /// [`Error::Storage`] if closing the file failed; [`Error::Poisoned`] if the writer thread had
    /// panicked.
    pub fn close(self) -> Result<()> {
        // Batched checks take no store-wide lock; stop them first, so that the final flush covers
        // every change they made.
        if let Some(cache) = &self.shared.rate_cache {
            cache.close();
        }
        let engine = self.shared.engine.write().take();
        match engine {
            Some(engine) => engine.shut_down(),
            None => Ok(()),
        }
    }

    /// Writes every batched rate counter changed so far, durably, and drops idle counters from
    /// memory. Batched mode does this by itself at least every `max_delay`; call it for a durable
    /// point of your choosing (before maintenance, at the end of a test). In Immediate mode there is
    /// nothing to flush.
    ///
    /// # Errors
    /// [`Error::Closed`], [`Error::Poisoned`] (including when this flush failed).
    pub fn flush(&self) -> Result<()> {
        self.send(|reply| Command::Flush { reply }).map(drop)
    }

    /// The store's numbers: records by state, rate counters and file size on disk, the writer's
    /// commits and writes since this open (`writes / commits` is the group-commit factor), and the
    /// last compaction sweep. Cheap: maintained counters, no scan.
    ///
    /// # Errors
    /// [`Error::Closed`] after `close`; [`Error::Storage`] if the file cannot be read.
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = self.shared.counters.snapshot();
        {
            let engine = self.shared.engine.read();
            let engine = engine.as_ref().ok_or_else(|| Error::Closed)?;
            stats.rate_states = engine.backend.rate_count()?;
        }
        stats.file_bytes = self.shared.location.len()?;
        if let Some(cache) = &self.shared.rate_cache {
            stats.rate_counters_in_memory = cache.len() as u64;
        }
        Ok(stats)
    }

    /// A view of the writer's command queue that outlives `close` (test support: lets a test see
    /// commands queued behind a held commit). `None` once closed. Drop it once the test has seen
    /// what it waited for: while it lives the queue stays connected, so a command sent after the
    /// writer stopped would wait for an answer instead of getting `Closed`.
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn command_queue_for_tests(&self) -> Option<crate::testing::CommandQueue> {
        let engine = self.shared.engine.read();
        engine
            .as_ref()
            .map(|engine| crate::testing::CommandQueue(engine.queue.clone()))
    }

    /// The boot epoch of this open: one more than the previous open's.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The configured `max_response_bytes`.
    pub fn max_response_bytes(&self) -> usize {
        self.shared.settings.max_response_bytes
    }

    pub(crate) fn resolve(
        &self,
        digest: Digest,
        token: u64,
        resolution: Resolution,
    ) -> Result<Option<u64>> {
        let kind = match &resolution {
            Resolution::Complete(_) => "complete",
            Resolution::Fail(_) => "fail",
            Resolution::Release => "release",
            Resolution::Extend(_) => "extend",
            Resolution::SaveCheckpoint(_) => "checkpoint",
        };
        let answer = self.send(|reply| Command::Resolve {
            digest,
            token,
            resolution,
            reply,
        });
        match answer {
            Ok(Answer::Resolved(expiry)) => {
                crate::observe::resolution(&digest, kind, token, false);
                Ok(expiry)
            }
            Err(Error::LeaseLost) => {
                crate::observe::resolution(&digest, kind, token, true);
                Err(Error::LeaseLost)
            }
            Err(error) => Err(error),
            Ok(_) => Err(Error::Corrupted(
                "the writer answered a resolution with something else".into(),
            )),
        }
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn read_record(&self, digest: &Digest) -> Result<Option<crate::idempotency::Record>> {
        self.check_usable()?;
        let engine = self.shared.engine.read();
        let engine = engine.as_ref().ok_or_else(|| Error::Closed)?;
        engine.backend.read_record(digest)
    }

    /// Has a command applied and waits for its answer: on this thread if no batch is being
    /// applied (see [`writer::lead`]), otherwise queued for the next batch.
    fn send(&self, command: impl FnOnce(writer::Reply) -> Command) -> Result<Answer> {
        self.check_usable()?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let queued = {
            let engine = self.shared.engine.read();
            let engine = engine.as_ref().ok_or_else(|| Error::Closed)?;
            writer::lead(&engine.core, &engine.queue, command(reply))
                .map(|command| (command, engine.commands.clone()))
        };
        if let Some((command, commands)) = queued {
            commands.send(command).map_err(|_| Error::Closed)?;
        }
        // A dropped reply means the writer exited without answering: closed, or died (poisoned).
        answer.recv().map_err(|_| {
            if self.shared.poisoned.load(Ordering::Acquire) {
                Error::Poisoned
            } else {
                Error::Closed
            }
        })?
    }
}
