//! The builder's settings and opens of the embedded engine: a file (or memory, or a simulated
//! disk), its write-ahead log, redb's cache and checks.

use std::path::Path;
use std::sync::Arc;

use super::{Settings, StoreBuilder};
use crate::engine::embedded::Location;
use crate::error::Result;
use crate::ratelimit::RateDurability;
use crate::store::Store;

impl StoreBuilder {
    /// redb's quick-repair: every commit also writes the allocator state, so that opening after a
    /// crash needs no repair walk over the whole file (which takes time proportional to the file).
    /// The price is a second fsync per commit, roughly halving the durable commit rate. Default =
    /// off: crashes are rare and repair runs once, commits run all the time. See
    /// `docs/BENCHMARKS.md` for measured open times.
    pub fn quick_repair(mut self, enabled: bool) -> Self {
        self.quick_repair = enabled;
        self
    }

    /// Acknowledge each change once it is in the write-ahead log (`<file>.log`, beside the
    /// store's file) and write it into redb later, in large transactions on a thread of their
    /// own. Every change is still durable before it is acknowledged (the log is synced first);
    /// what moves off the caller's path is redb's copy-on-write B-tree work, and a request begun
    /// and completed between two applications is written to the B-tree once. Reads see the
    /// acknowledged state at once (an in-memory overlay holds what redb has not yet). Default =
    /// on. A store that was opened with the log keeps one (its file is format 3): turning it off
    /// later still replays and applies it at open, then writes redb directly. In-memory stores
    /// ignore it (they have no log file); on the test-support simulated disk it is off unless
    /// set. See `docs/DESIGN.md`, "The write-ahead log".
    pub fn write_ahead_log(mut self, enabled: bool) -> Self {
        self.write_ahead_log = Some(enabled);
        self
    }

    /// The most bytes of acknowledged changes that wait in memory for redb (and, rounded up to
    /// whole 4 MiB segments, the size of the log's ring on disk). When the applier falls behind
    /// this, writers wait for it rather than memory growing. Default = 4 MiB (about 13,000
    /// short requests, each charged its response plus 256 bytes: a third of a second of the
    /// engine's fastest writes); the log's ring is at
    /// least 8 MiB (two segments). A larger cap lets the applier lag further behind bursts; it
    /// also bounds what an open after a crash replays (see `docs/BENCHMARKS.md`).
    pub fn log_memory(mut self, bytes: usize) -> Self {
        self.log_memory = bytes;
        self
    }

    /// Test support: the log's segment size (small segments make a small ring, cheap on a
    /// simulated disk). Not a stable API.
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn log_segment_bytes_for_tests(mut self, bytes: u32) -> Self {
        self.log_segment_bytes = bytes;
        self
    }

    /// Verify the checksum of every page when opening, not only after a crash. A file damaged
    /// outside tollgate (a failing disk, a stray write, a bad copy) then fails to open with
    /// [`Error::Corrupted`](crate::Error::Corrupted) instead of being trusted. Without it, redb may panic on such a file:
    /// tollgate turns a panic into [`Error::Corrupted`](crate::Error::Corrupted) or [`Error::Storage`](crate::Error::Storage), but the `open_corrupt`
    /// fuzz target found damage that makes redb abort the process (a panic while unwinding), which
    /// no library can catch. The price is reading the whole file at open (see
    /// `docs/BENCHMARKS.md`). Default = off: crashes and power loss need no verification (redb
    /// detects torn commits by itself); this is for files whose media you do not trust.
    pub fn verify_on_open(mut self, enabled: bool) -> Self {
        self.verify_on_open = enabled;
        self
    }

    /// Opens the existing store at `path` for reads only, writing nothing, ever: no epoch is
    /// bumped, no table made, no log recovered into the file (the log's frames not yet in the
    /// file are read and shown, as a degraded store shows them). `get`, `list_records`, `stats`,
    /// `peek` and replays answer; every write is refused with [`Error::ReadOnly`](crate::Error::ReadOnly). For tools
    /// that look at a store (the `tollgate` CLI), and for copies of a store that must stay as
    /// they are. A file a process holds with [`StoreBuilder::open_shared`] is read through that
    /// process (on Linux): the same answers, from the live store, and every change refused here
    /// before it is sent; the reader never takes the file over. A file held by a process that
    /// opened it with [`StoreBuilder::open`] is refused with
    /// [`Error::AlreadyOpen`](crate::Error::AlreadyOpen) (redb locks it; read-only opens share it
    /// with each other).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
    /// # let path = dir.path().join("orders.redb");
    /// use tollgate::Store;
    /// use tollgate::idempotency::{Fingerprint, IdempotencyKey};
    ///
    /// let key = IdempotencyKey::new("orders", "o-1")?;
    /// let store = Store::open(&path)?;
    /// let _ = store.begin(&key, &Fingerprint::of(b"POST /orders"))?; // a lease, RUNNING
    /// store.close()?;
    /// # let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| tollgate::Error::InvalidArgument(e.to_string()));
    /// let before = read(&path)?;
    /// let view = Store::builder().open_read_only(&path)?;
    /// assert!(view.get(&key)?.is_some());
    /// assert!(view.begin(&IdempotencyKey::new("orders", "o-2")?, &Fingerprint::of(b"x")).is_err());
    /// view.close()?;
    /// assert!(read(&path)? == before, "a read-only open writes nothing");
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// - [`Error::Storage`](crate::Error::Storage) naming the path if there is no file at `path`.
    /// - [`Error::AlreadyOpen`](crate::Error::AlreadyOpen) if a process has the file open for writing.
    /// - [`Error::NotAStore`](crate::Error::NotAStore), [`Error::IncompatibleFormat`](crate::Error::IncompatibleFormat), [`Error::Corrupted`](crate::Error::Corrupted) (a missing or
    ///   foreign log among them), as for [`StoreBuilder::open`].
    pub fn open_read_only(mut self, path: impl AsRef<Path>) -> Result<Store> {
        self.read_only = true;
        self.compaction_interval = None;
        let path = path.as_ref();
        match Store::open_embedded(&self, Location::File(path.to_owned())) {
            // A process serves the file as a shared store: read through it.
            #[cfg(target_os = "linux")]
            Err(crate::Error::AlreadyOpen) => Store::open_shared_file(&self, path),
            opened => opened,
        }
    }

    /// Opens the store at `path`, creating the file if it does not exist.
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a zero TTL, a zero `max_records`, a `max_response_bytes`
    ///   over 256 MiB, a zero Batched `max_delay`, or a zero compaction interval or batch.
    /// - [`Error::AlreadyOpen`](crate::Error::AlreadyOpen) if another process or `Store` has the file open.
    /// - [`Error::NotAStore`](crate::Error::NotAStore) if the file is not a tollgate store;
    ///   [`Error::IncompatibleFormat`](crate::Error::IncompatibleFormat) if a newer tollgate wrote it. Neither changes the file.
    /// - [`Error::Storage`](crate::Error::Storage) for I/O errors.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Store> {
        Store::open_embedded(&self, Location::File(path.as_ref().to_owned()))
    }

    /// Opens a store that lives in memory only: the embedded engine with the same semantics as
    /// a file (the same writer, decisions, replays and rate counters), on redb's in-memory
    /// backend. **Nothing is durable**: everything is gone when the store is dropped or closed,
    /// and each call makes a new, empty store. For tests of code that uses tollgate, where a
    /// temporary file adds nothing.
    ///
    /// ```
    /// use tollgate::Store;
    /// use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
    ///
    /// let store = Store::builder().open_in_memory()?;
    /// let key = IdempotencyKey::new("user:1", "order-1")?;
    /// let request = Fingerprint::of(b"POST /orders");
    /// if let Begin::Acquired(lease) = store.begin(&key, &request)? {
    ///     lease.complete(StoredResponse::new(201, b"created".to_vec()))?;
    /// }
    /// assert!(matches!(store.begin(&key, &request)?, Begin::Replay(_)));
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for the settings [`StoreBuilder::open`] refuses.
    pub fn open_in_memory(self) -> Result<Store> {
        Store::open_embedded(&self, Location::memory())
    }

    /// Opens the store on a simulated disk (crash and I/O-failure tests only).
    ///
    /// # Errors
    /// As for [`StoreBuilder::open`]; a disk whose power is cut or whose operations fail gives
    /// [`Error::Storage`](crate::Error::Storage).
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn open_simulated(self, disk: &crate::testing::SimDisk) -> Result<Store> {
        Store::open_embedded(&self, Location::Simulated(disk.clone()))
    }

    /// The embedded engine's options, from this builder and its checked `settings`.
    pub(crate) fn embedded_options(&self, settings: &Settings) -> crate::engine::embedded::Options {
        crate::engine::embedded::Options {
            clock: Arc::clone(&self.clock),
            rate_flush_every: match self.rate_durability.unwrap_or_default() {
                // Counters on another engine: this one keeps none (and no cache for them).
                _ if self.counters_elsewhere() => None,
                RateDurability::Batched { max_delay } => Some(max_delay),
                RateDurability::Immediate => None,
            },
            crash_policy: self.crash_policy,
            write_ahead_log: self.write_ahead_log,
            log_memory: self.log_memory,
            log_segment_bytes: self.log_segment_bytes,
            cache_size: self.cache_size,
            quick_repair: self.quick_repair,
            verify_on_open: self.verify_on_open,
            rate_secret: self.rate_secret,
            read_only: self.read_only,
            compaction_interval: self.compaction_interval,
            compaction_batch: settings.compaction_batch,
            max_records: settings.max_records,
            epoch_block: 1,
        }
    }
}
