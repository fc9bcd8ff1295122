//! What the embedded engine is opened with: the store builder's settings that concern it, in the
//! engine's own terms. The façade (`store/builder.rs`) makes one; the engine never reads the
//! builder.

use std::sync::Arc;
use std::time::Duration;

use super::log::{self, Geometry};
use crate::clock::Clock;
use crate::error::Error;
use crate::ratelimit::CrashPolicy;

/// The embedded engine's options.
#[derive(Clone)]
// Independent switches of the open, each read in one place: not a state machine.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct Options {
    pub clock: Arc<dyn Clock>,
    /// Batched rate counters flushed at least this often; `None`: Immediate, or the counters
    /// live on another engine (then this one keeps no cache for them).
    pub rate_flush_every: Option<Duration>,
    pub crash_policy: CrashPolicy,
    /// Whether changes go through the write-ahead log (`None`: on for files, off for simulated
    /// disks; in-memory stores never have one).
    pub write_ahead_log: Option<bool>,
    /// The most bytes of acknowledged changes not yet in redb (the overlay's cap).
    pub log_memory: usize,
    /// The log's segment size; its segments follow from `log_memory`.
    pub log_segment_bytes: u32,
    /// redb's page cache, in bytes.
    pub cache_size: usize,
    pub quick_repair: bool,
    pub verify_on_open: bool,
    /// The rate-counter secret of a newly created file (`None`: random).
    pub rate_secret: Option<(u64, u64)>,
    /// Nothing is written, ever (`StoreBuilder::open_read_only`).
    pub read_only: bool,
    /// The background sweep's period (`None`: no background compaction).
    pub compaction_interval: Option<Duration>,
    /// The most removals in one compaction step.
    pub compaction_batch: usize,
    /// The most records the file may hold (`None`: no bound).
    pub max_records: Option<u64>,
    /// How far each open for writing moves the stored epoch: 1, or a shared store owner's
    /// block of process epochs (`engine::processes`).
    pub epoch_block: u64,
}

impl Options {
    /// The log's shape: its segment size, and enough segments for its memory cap.
    pub(crate) fn log_geometry(&self) -> Result<Geometry, Error> {
        let segment = self.log_segment_bytes;
        let segments = self
            .log_memory
            .div_ceil(segment.max(1) as usize)
            .clamp(log::MIN_SEGMENTS as usize, 1 << 16);
        Geometry::new(segment, u32::try_from(segments).unwrap_or(u32::MAX))
    }
}
