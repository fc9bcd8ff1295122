//! The PostgreSQL engine: many nodes, one schema, one truth.
//!
//! Each `Store` opened on a schema is a node. Its operations queue for a small set of worker
//! threads, each owning one connection (the pool is bounded by construction, `worker.rs`). The
//! writer takes every change queued (up to [`batch::MAX_BATCH`]) and runs them in one
//! transaction of two pipelined round trips (`batch/`, `pipe.rs`): the embedded writer's group
//! commit, applied to the client, so that concurrent callers on one node share round trips and a
//! commit while PostgreSQL group-commits across nodes. Reads and maintenance run as jobs on the
//! other workers.
//!
//! - **One clock**: leases, TTLs and rate windows are decided at the server's `clock_timestamp()`
//!   (`clock.rs`); a `clock` set on the builder does not decide here.
//! - **Node epochs** (`node.rs`): each open of a node id bumps its epoch, so RUNNING records its
//!   earlier runs left are taken over at once by any node; other nodes' leases only expire.
//! - **Faults**: every call is answered within [`CALL_TIMEOUT`]: connect and statement timeouts
//!   bound each round trip, and a caller stops waiting after that. A server that is down gives
//!   [`Error::Unavailable`]; a change whose commit may or may not have happened gives
//!   [`Error::InDoubt`]; connections are reopened by themselves. The store is never poisoned.

mod batch;
mod clock;
mod conninfo;
mod maintenance;
mod node;
mod options;
mod pipe;
mod session;
mod sql;
mod tls;
mod worker;

pub(crate) use options::Options;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::RwLock;

use batch::Change;
use clock::ServerClock;
use conninfo::ConnInfo;
use node::NodeInfo;
use session::Connector;
use sql::Sql;
use worker::Queue;

use super::{BeginRequest, BulkRecords, CounterEngine, Early, RecordEngine, Seen, Swept};
use crate::engine::compactor::Compactor;
use crate::engine::notify::Notifier;
use crate::engine::write_counters::Counters;
use crate::error::{Error, Result};
use crate::idempotency::machine::{BeginDecision, Resolution};
use crate::idempotency::{Digest, Record};
use crate::ratelimit::charge::{OpKind, RateOp, RateOutcome};
use crate::ratelimit::{CounterKeys, Limit};
use crate::status::Stats;

/// Default schema for tollgate's tables.
pub const DEFAULT_SCHEMA: &str = "tollgate";
/// Default number of connections (each with a worker thread) per store, besides the one that
/// holds the node's lock: [`DEFAULT_POSTGRES_WRITERS`](crate::DEFAULT_POSTGRES_WRITERS) writers that batch the changes, and two for reads
/// and maintenance.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default number of writers per store (fewer if the pool leaves no connection for reads).
pub const DEFAULT_WRITERS: usize = 2;
/// The longest a call waits for its answer: a connect timeout plus a statement timeout, with
/// room for a retried batch. Past it, a read gets [`Error::Unavailable`] and a change
/// [`Error::InDoubt`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a caller waiting for a key in flight on another node looks again (other nodes'
/// commits wake nobody here).
pub(crate) const WAIT_POLL: Duration = Duration::from_millis(20);

/// What exists only while the store is open.
struct Running {
    queue: Queue,
    workers: Vec<JoinHandle<()>>,
    compactor: Option<Compactor>,
    /// The thread that holds the node's lock on its own connection.
    holder: node::Holder,
}

/// Counts a compaction step's removals as writes of one commit (as the embedded engine does).
fn count_sweep(counters: &Counters, swept: Swept) {
    let removed = swept.records + swept.rate_states;
    if removed > 0 {
        counters.committed_writes(removed);
    }
}

/// A store on a PostgreSQL schema.
pub(crate) struct Postgres {
    running: RwLock<Option<Running>>,
    /// A clone of the queue for calls (`None` once closed).
    queue: RwLock<Option<Queue>>,
    node: NodeInfo,
    clock: Arc<ServerClock>,
    rate_keys: CounterKeys,
    counters: Arc<Counters>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Postgres {
    /// Connects, migrates the schema, registers the node and starts the workers.
    pub(crate) fn open(
        options: &Options,
        conn: &str,
        notifier: &Arc<Notifier>,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        if options.batched_rates {
            return Err(Error::InvalidArgument(
                "RateDurability::Batched is not available on PostgreSQL: a node's in-memory \
                 counters would let the fleet exceed a quota. Counters on PostgreSQL are always \
                 Immediate (the default there)"
                    .into(),
            ));
        }
        if options.max_records {
            return Err(Error::InvalidArgument(
                "max_records is not available on PostgreSQL: bound the table with the \
                 database's own means"
                    .into(),
            ));
        }
        let (pool_size, writers) = pool_shape(options.pool_size, options.writers)?;
        let schema = options.schema.as_deref().unwrap_or(DEFAULT_SCHEMA);
        let sql = Arc::new(Sql::new(schema)?);
        let info = ConnInfo::parse(conn)?;
        let (tls, ssl_mode) = tls::connector(&info)?;
        let mut config: tokio_postgres::Config = info.rest.parse().map_err(|error| {
            Error::InvalidArgument(format!("bad PostgreSQL connection string: {error}"))
        })?;
        config.ssl_mode(ssl_mode);
        session::apply_defaults(&mut config, &info);
        if config.get_application_name().is_none() {
            config.application_name("tollgate");
        }
        let connector = Connector::new(config, tls);
        let secret = options.rate_secret.unwrap_or_else(|| {
            CounterKeys::generate_secret(crate::clock::system_time_to_nanos(
                std::time::SystemTime::now(),
            ))
        });
        let (registered, holder) = node::hold(
            connector.clone(),
            Arc::clone(&sql),
            options.node_id.clone(),
            options.create_schema.then_some(secret),
        )?;
        let node::Registered {
            node,
            rate_secret,
            clock_reading,
        } = registered;
        let clock = Arc::new(ServerClock::new(clock_reading));
        let (queue, workers) = worker::start(&worker::Pool {
            size: pool_size,
            writers,
            connector: &connector,
            sql: &sql,
            node: &node,
            clock: &clock,
            counters: &counters,
            notifier,
            one_round_trip: options.one_round_trip,
        })?;
        let compactor = {
            let queue = queue.clone();
            let sweep_clock = Arc::clone(&clock);
            let id = node.id.clone();
            let sweep_counters = Arc::clone(&counters);
            Compactor::start(
                options.compaction_interval,
                options.compaction_batch,
                &counters,
                move |limit| {
                    let swept = maintenance::compact_step(&queue, &sweep_clock, &id, limit)?;
                    count_sweep(&sweep_counters, swept);
                    Ok(swept)
                },
            )?
        };
        Ok(Self {
            running: RwLock::new(Some(Running {
                queue: queue.clone(),
                workers,
                compactor,
                holder,
            })),
            queue: RwLock::new(Some(queue)),
            node,
            clock,
            rate_keys: CounterKeys::new(rate_secret),
            counters,
        })
    }

    fn queue(&self) -> Result<Queue> {
        self.queue.read().clone().ok_or(Error::Closed)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.node.epoch
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.queue.read().is_some() {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.queue.read().is_none()
    }

    /// One round trip on a pooled connection (a reconnect, if the last one broke).
    pub(crate) fn health(&self) -> crate::Health {
        let Ok(queue) = self.queue() else {
            return crate::Health::Closed;
        };
        let probe = queue.call(maintenance::ping);
        match probe {
            Ok(()) => crate::Health::Ready,
            Err(Error::Closed) => crate::Health::Closed,
            Err(error @ (Error::Unavailable(_) | Error::InDoubt(_))) => {
                crate::Health::Unreachable {
                    reason: error.to_string(),
                }
            }
            Err(error) => crate::Health::Failed {
                reason: error.to_string(),
            },
        }
    }

    /// Stops the compactor, lets the workers finish what is queued, joins them and releases
    /// the node's lock.
    pub(crate) fn close(&self) -> Result<()> {
        drop(self.queue.write().take());
        let running = self.running.write().take();
        let Some(running) = running else {
            return Ok(());
        };
        if let Some(compactor) = running.compactor {
            compactor.stop();
        }
        drop(running.queue);
        let mut panicked = false;
        for worker in running.workers {
            panicked |= worker.join().is_err();
        }
        // Closing its connection releases the node's advisory lock.
        running.holder.release();
        if panicked {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    pub(crate) fn compact_step(&self, limit: usize) -> Result<Swept> {
        let swept = maintenance::compact_step(&self.queue()?, &self.clock, &self.node.id, limit)?;
        count_sweep(&self.counters, swept);
        Ok(swept)
    }

    pub(crate) fn stats(&self) -> Result<Stats> {
        let mut stats = self.counters.snapshot();
        let (counts, bytes) = self.queue()?.call(maintenance::counts)?;
        stats.running = counts[0];
        stats.completed = counts[1];
        stats.failed = counts[2];
        stats.rate_states = counts[3];
        stats.file_bytes = bytes;
        Ok(stats)
    }

    /// Stops the schema's clock at `at` (nanoseconds) for every node (test support).
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn set_clock(&self, at: u64) -> Result<()> {
        self.change_clock(
            |sql| &sql.jobs.stop_clock,
            i64::try_from(at).unwrap_or(i64::MAX),
        )
    }

    /// Moves the schema's clock forward by `by` for every node (test support).
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn advance_clock(&self, by: Duration) -> Result<()> {
        self.change_clock(
            |sql| &sql.jobs.advance_clock,
            i64::try_from(by.as_nanos()).unwrap_or(i64::MAX),
        )
    }

    /// Runs `statement` (which changes the clock by `value` and returns the new reading), and
    /// follows the reading.
    #[cfg(any(test, feature = "test-support"))]
    fn change_clock(&self, statement: fn(&Sql) -> &String, value: i64) -> Result<()> {
        let clock = Arc::clone(&self.clock);
        self.queue()?.call(move |session| {
            let sql = Arc::clone(&session.sql);
            let client = session.client()?;
            let reading: i64 = client
                .query_typed_one(statement(&sql), &[(&value, postgres::types::Type::INT8)])
                .and_then(|row| row.try_get(0))
                .map_err(|error| session::classify(&error, "cannot change the clock"))?;
            clock.observe(u64::try_from(reading).unwrap_or(0));
            Ok(())
        })
    }
}

impl RecordEngine for Postgres {
    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn read(&self, digest: &Digest) -> Result<Option<Record>> {
        let digest = *digest;
        let clock = Arc::clone(&self.clock);
        self.queue()?
            .call(move |session| maintenance::read_record(session, &clock, &digest))
    }

    fn begin_without_writing(&self, _digest: &Digest, _request: BeginRequest) -> Result<Early> {
        // A begin's batch reads and decides in one transaction; reading first would only add a
        // round trip.
        Ok(Early::Write(Seen::Nothing))
    }

    fn begin(&self, digest: Digest, request: BeginRequest, _seen: Seen) -> Result<BeginDecision> {
        self.queue()?.change(|reply| Change::Begin {
            digest,
            request,
            reply,
        })
    }

    fn resolve(&self, digest: Digest, token: u64, resolution: Resolution) -> Result<Option<u64>> {
        self.queue()?.change(|reply| Change::Resolve {
            digest,
            token,
            resolution,
            reply,
        })
    }

    fn list(&self, after: Option<&Digest>, limit: usize) -> Result<Vec<(Digest, Result<Record>)>> {
        let after = after.copied();
        self.queue()?
            .call(move |session| maintenance::list_records(session, after, limit))
    }

    fn bulk_load(&self, _count: u64, records: BulkRecords) -> Result<u64> {
        // `records` ends itself after `count` records.
        let clock = Arc::clone(&self.clock);
        let node = self.node.id.clone();
        let written = self
            .queue()?
            .call_writing(move |session| maintenance::bulk_load(session, &clock, &node, records))?;
        self.counters.committed_writes(written);
        Ok(written)
    }

    fn wait_poll(&self) -> Option<Duration> {
        Some(WAIT_POLL)
    }
}

impl CounterEngine for Postgres {
    fn run(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
        let targets = crate::ratelimit::charge::targets(&self.rate_keys, checks)?;
        if kind.writes() {
            let op = RateOp { kind, targets };
            return self.queue()?.change(|reply| Change::Rate { op, reply });
        }
        let clock = Arc::clone(&self.clock);
        self.queue()?
            .call(move |session| maintenance::peek(session, &clock, kind, &targets))
    }

    fn flush(&self) -> Result<()> {
        // Counters on PostgreSQL are durable when a check returns.
        self.check_usable()
    }
}

/// The pool's size and how many of its connections write, checked.
fn pool_shape(pool_size: Option<usize>, writers: Option<usize>) -> Result<(usize, usize)> {
    let pool_size = pool_size.unwrap_or(DEFAULT_POOL_SIZE);
    if pool_size < 2 {
        return Err(Error::InvalidArgument(format!(
            "postgres_pool_size must be at least 2 (a writer's connection and one for \
             reads), not {pool_size}"
        )));
    }
    let writers = writers.unwrap_or_else(|| DEFAULT_WRITERS.min(pool_size - 1));
    if writers == 0 || writers >= pool_size {
        return Err(Error::InvalidArgument(format!(
            "postgres_writers must be at least 1 and leave one of the postgres_pool_size \
             connections ({pool_size}) for reads, not {writers}"
        )));
    }
    Ok((pool_size, writers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_a_connection_for_reads_and_writers_default_to_two() {
        let shape = pool_shape;
        assert_eq!(shape(None, None).ok(), Some((4, 2)));
        assert_eq!(shape(Some(2), None).ok(), Some((2, 1)));
        assert_eq!(shape(Some(3), None).ok(), Some((3, 2)));
        assert_eq!(shape(Some(8), Some(5)).ok(), Some((8, 5)));
        for (pool, writers) in [
            (Some(1), None),
            (None, Some(0)),
            (None, Some(4)),
            (Some(3), Some(3)),
        ] {
            assert!(
                matches!(shape(pool, writers), Err(Error::InvalidArgument(_))),
                "pool {pool:?}, writers {writers:?}"
            );
        }
    }
}
