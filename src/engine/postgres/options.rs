//! What the PostgreSQL engine is opened with: the store builder's settings that concern it, in
//! the engine's own terms. The façade (`store/builder.rs`) makes one; the engine never reads the
//! builder.

use std::time::Duration;

/// The PostgreSQL engine's options.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // independent settings, each as the builder has it
pub(crate) struct Options {
    /// The schema (`None`: [`DEFAULT_SCHEMA`](super::DEFAULT_SCHEMA)).
    pub schema: Option<String>,
    /// Whether the open may create (or upgrade) its schema.
    pub create_schema: bool,
    /// This node's stable name (`None`: a random one per open).
    pub node_id: Option<String>,
    /// Connections (worker threads) of the store (`None`: the default).
    pub pool_size: Option<usize>,
    /// How many of them write (`None`: the default for the pool's size).
    pub writers: Option<usize>,
    /// The rate-counter secret of a newly created schema (test support only; `None`: random).
    pub rate_secret: Option<(u64, u64)>,
    /// Batched rate durability was asked for (which this engine refuses).
    pub batched_rates: bool,
    /// A bound on the records was asked for (which this engine refuses).
    pub max_records: bool,
    /// The background sweep's period (`None`: no background compaction).
    pub compaction_interval: Option<Duration>,
    /// The most removals in one compaction step.
    pub compaction_batch: usize,
    /// Whether a lone caller's change goes in one round trip (`batch/lone.rs`).
    pub one_round_trip: bool,
}
