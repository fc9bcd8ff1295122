//! What the embedded writer applies batches with ([`Core`], one lock around it: whoever holds it
//! is the only writer), and its side of the write-ahead log ([`WalCore`]). The batching and
//! commits are `writer.rs`'s, the commit through the log `wal_commit.rs`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::applier::RedbSide;
use super::failure::Failure;
use super::log::Log;
use super::log::overlay::Overlay;
use super::rate_cache::RateCache;
use super::sequencer::Sequencer;
use super::storage::Backend;
use crate::engine::notify::Notifier;
use crate::engine::write_counters::Counters;

/// The writer's side of the write-ahead log.
pub(crate) struct WalCore {
    pub log: Log,
    pub overlay: Arc<Overlay>,
    /// What redb holds; locked by whoever writes redb (the applier, or a direct commit).
    pub redb: Arc<Mutex<RedbSide>>,
    /// Records stored in the latest acknowledged state (redb under the overlay).
    pub records: u64,
}

/// Everything a batch is applied with. One [`Mutex`] guards it: whoever holds the lock is the
/// only writer, whether that is the writer thread or a caller leading its own batch.
pub(crate) struct Core {
    pub backend: Arc<Backend>,
    pub failure: Arc<Failure>,
    /// The file's path, for errors.
    pub path: PathBuf,
    pub notifier: Arc<Notifier>,
    pub counters: Arc<Counters>,
    pub sequencer: Sequencer,
    /// Batched rate counters to flush, and how often.
    pub rate_flush: Option<(Arc<RateCache>, Duration)>,
    /// When the last foreground batch was applied (compaction steps shrink while it is recent).
    pub last_foreground: Instant,
    /// Set once [`Command::Shutdown`](super::command::Command::Shutdown) was applied: every later command is answered `Closed`.
    pub stopped: bool,
    /// Present when changes are acknowledged at the write-ahead log.
    pub wal: Option<WalCore>,
}
