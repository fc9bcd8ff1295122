//! The writer's connection: `tokio-postgres` on a current-thread runtime the writer owns, so that
//! the messages of one round trip go out together (pipelined) and a batch costs two round trips:
//!
//! ```text
//! BEGIN; SET LOCAL …   +   lock (prepared)            round trip 1
//! write (prepared)     +   COMMIT                      round trip 2
//! ```
//!
//! The statements are prepared once per connection (protocol-level prepared statements, which
//! PgBouncer 1.21 and later keep in transaction mode with `max_prepared_statements`), so a batch
//! neither parses nor plans them; `SET LOCAL enable_seqscan = off` keeps their cached generic
//! plans on the primary keys however small the tables were when they were planned, and
//! `SET LOCAL jit = off` keeps the cost that adds from starting the JIT compiler.
//! `SET LOCAL plan_cache_mode = force_generic_plan` keeps the server from planning them afresh
//! for each batch: with array parameters it judges a custom plan cheaper every time, and planning
//! took 100–180 µs a statement (measured, `docs/BENCHMARKS.md`).
//!
//! A lone caller's change (`batch/lone.rs`) is one prepared statement of `lone.sql` instead, in
//! autocommit: one round trip, no `BEGIN`, `SET LOCAL` or `COMMIT`.
//!
//! Every round trip has a deadline on the client side too ([`ROUND_TRIP_TIMEOUT`]): a server that
//! stops answering (a network partition, a paused VM) costs the batch that long, never more; the
//! connection is then dropped and opened again for the next batch.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::session::{self, Connector, STATEMENT_TIMEOUT};
use super::sql::{Sql, Tables};
use crate::error::{Error, Result};

/// The longest a round trip may take before the writer gives up on the connection: the server's
/// own statement timeout, plus a margin for the answer to arrive.
pub(crate) const ROUND_TRIP_TIMEOUT: Duration =
    Duration::from_secs(STATEMENT_TIMEOUT.as_secs() + 2);

/// What a round trip failed with.
pub(crate) enum Failure {
    /// The server answered with an error, or the connection failed.
    Postgres(tokio_postgres::Error),
    /// No answer within [`ROUND_TRIP_TIMEOUT`] (the connection is dropped).
    TimedOut,
    /// No connection could be opened.
    Connect(Error),
}

/// The writer's prepared statements, one per statement family (and per [`Tables`] version).
struct Prepared {
    /// By [`Tables`].
    lock: Vec<Statement>,
    write: Vec<Statement>,
    /// `lone.sql`'s record statements, then its counter statements, each by way of writing.
    lone: Vec<Statement>,
}

/// A connection for the writer, opened on first use and again after it failed.
pub(crate) struct Pipe {
    runtime: tokio::runtime::Runtime,
    client: Option<(Client, Prepared)>,
    connector: Connector,
    sql: Arc<Sql>,
    opening: String,
}

impl Pipe {
    /// # Errors
    /// A runtime cannot be built (no threads or timers left).
    pub(crate) fn new(connector: Connector, sql: Arc<Sql>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(Error::storage)?;
        Ok(Self {
            runtime,
            client: None,
            connector,
            sql,
            opening: format!(
                "BEGIN; SELECT set_config('statement_timeout', '{}', true), \
                 set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true), \
                 set_config('plan_cache_mode', 'force_generic_plan', true)",
                STATEMENT_TIMEOUT.as_millis()
            ),
        })
    }

    /// Opens the connection if there is none (or it broke), and prepares the statements.
    fn connected(&mut self) -> std::result::Result<(), Failure> {
        if self
            .client
            .as_ref()
            .is_some_and(|(client, _)| !client.is_closed())
        {
            return Ok(());
        }
        self.client = None;
        let config = self.connector.async_config();
        let setup = session::setup(&config);
        let tls = self.connector.tls.clone();
        let sql = Arc::clone(&self.sql);
        // The connect timeout bounds the connection; this bounds the setup after it too.
        let limit = config_timeout(&self.connector) + ROUND_TRIP_TIMEOUT;
        let opened = self.runtime.block_on(async move {
            let connect = async {
                let (client, connection) = config
                    .connect(tls)
                    .await
                    .map_err(|error| session::unavailable("cannot connect", &error))?;
                // The connection's task runs whenever this runtime does: during every round trip.
                tokio::spawn(connection);
                let set_up = async {
                    client.batch_execute(&setup).await?;
                    let (mut lock, mut write) = (Vec::new(), Vec::new());
                    for (locks, writes) in sql.lock.iter().zip(&sql.write) {
                        lock.push(client.prepare_typed(locks, LOCK_TYPES).await?);
                        write.push(client.prepare_typed(writes, WRITE_TYPES).await?);
                    }
                    let mut lone = Vec::new();
                    for record in &sql.lone.record {
                        lone.push(client.prepare_typed(record, LONE_RECORD_TYPES).await?);
                    }
                    for counter in &sql.lone.counter {
                        lone.push(client.prepare_typed(counter, LONE_COUNTER_TYPES).await?);
                    }
                    Ok::<_, tokio_postgres::Error>(Prepared { lock, write, lone })
                };
                match set_up.await {
                    Ok(prepared) => Ok((client, prepared)),
                    Err(error) => Err(session::classify(
                        &error,
                        "cannot prepare the writer's statements",
                    )),
                }
            };
            tokio::time::timeout(limit, connect).await
        });
        match opened {
            Ok(Ok(client)) => {
                self.client = Some(client);
                Ok(())
            }
            Ok(Err(error)) => Err(Failure::Connect(error)),
            Err(_) => Err(Failure::Connect(Error::Unavailable(format!(
                "cannot connect: no answer within {} s",
                limit.as_secs()
            )))),
        }
    }

    /// Round trip 1: opens the transaction and runs the lock statement's version for `tables`
    /// with `params`.
    pub(crate) fn lock(
        &mut self,
        tables: Tables,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        self.connected()?;
        let Some((client, prepared)) = &self.client else {
            return Err(no_connection());
        };
        let Some(lock) = prepared.lock.get(tables as usize) else {
            return Err(no_connection());
        };
        let opening = &self.opening;
        let answer = self.runtime.block_on(async {
            let both = async {
                let (begun, locked) =
                    tokio::join!(client.batch_execute(opening), client.query(lock, params));
                begun?;
                locked
            };
            tokio::time::timeout(ROUND_TRIP_TIMEOUT, both).await
        });
        self.settle(answer)
    }

    /// Round trip 2: runs the write statement's version for `tables` with `params`, then
    /// `COMMIT` (which, after a failed write, ends the transaction as a rollback). Returns the
    /// write's rows.
    pub(crate) fn write_and_commit(
        &mut self,
        tables: Tables,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, Failure> {
        // Nothing is sent without a connection, so nothing can be in doubt.
        let Some((client, prepared)) = &self.client else {
            return Err(no_connection());
        };
        let Some(write) = prepared.write.get(tables as usize) else {
            return Err(no_connection());
        };
        let answer = self.runtime.block_on(async {
            let both = async {
                let (written, committed) =
                    tokio::join!(client.query(write, params), client.batch_execute("COMMIT"));
                let rows = written?;
                committed?;
                Ok(rows)
            };
            tokio::time::timeout(ROUND_TRIP_TIMEOUT, both).await
        });
        self.settle(answer)
    }

    /// A lone caller's one round trip: `lone.sql`'s record statement for `way` (0 create,
    /// 1 update, 2 delete; or its counter statement, `counter`) with `params`, in autocommit:
    /// the statement is its transaction. Returns the statement's row.
    ///
    /// Before sending, the connection is given a moment to notice a close that already arrived
    /// (a server restarted while this connection was idle): such a connection is opened again
    /// first, since once the statement and its `COMMIT` are sent, a failure leaves them in doubt.
    pub(crate) fn lone(
        &mut self,
        counter: bool,
        way: usize,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, Failure> {
        self.connected()?;
        self.runtime.block_on(async {
            // Each yield lets the runtime poll its I/O driver and run the connection's task,
            // which ends on a close or reset already in its socket.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
        self.connected()?;
        let Some((client, prepared)) = &self.client else {
            return Err(no_connection());
        };
        let Some(statement) = prepared.lone.get(usize::from(counter) * 3 + way) else {
            return Err(no_connection());
        };
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(ROUND_TRIP_TIMEOUT, client.query_one(statement, params)).await
        });
        self.settle(answer)
    }

    /// Ends whatever transaction is open; a connection that cannot is dropped.
    pub(crate) fn roll_back(&mut self) {
        let Some((client, _)) = &self.client else {
            return;
        };
        let rolled_back = self.runtime.block_on(async {
            tokio::time::timeout(ROUND_TRIP_TIMEOUT, client.batch_execute("ROLLBACK")).await
        });
        if !matches!(rolled_back, Ok(Ok(()))) {
            self.client = None;
        }
    }

    /// Drops the connection (after an error that leaves it unusable or in doubt).
    pub(crate) fn reset(&mut self) {
        self.client = None;
    }

    fn settle<T>(
        &mut self,
        answer: std::result::Result<
            std::result::Result<T, tokio_postgres::Error>,
            tokio::time::error::Elapsed,
        >,
    ) -> std::result::Result<T, Failure> {
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failure::Postgres(error)),
            Err(_) => {
                self.client = None;
                Err(Failure::TimedOut)
            }
        }
    }
}

fn no_connection() -> Failure {
    Failure::Connect(Error::Unavailable(
        "the writer's connection was lost; retry".into(),
    ))
}

fn config_timeout(connector: &Connector) -> Duration {
    connector
        .async_config()
        .get_connect_timeout()
        .copied()
        .unwrap_or(session::DEFAULT_CONNECT_TIMEOUT)
}

/// `lone.sql`'s record statement's parameters: the guard's, then the row's (see the file).
const LONE_RECORD_TYPES: &[Type] = &[
    // The guard's: decided_at, bound, node id, node epoch, spares wanted.
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT4,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::INT2,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
];

/// `lone.sql`'s counter statement's parameters: the guard's, then the row's (see the file).
const LONE_COUNTER_TYPES: &[Type] = &[
    // The guard's: decided_at, bound, node id, node epoch, spares wanted.
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::INT4,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
];

/// `lock.sql`'s parameters: record digests, counter keys, tokens wanted, this node's id.
const LOCK_TYPES: &[Type] = &[Type::BYTEA_ARRAY, Type::BYTEA_ARRAY, Type::INT4, Type::TEXT];

/// `write.sql`'s parameters (see the file).
const WRITE_TYPES: &[Type] = &[
    // Records changed, removed, created.
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT2_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT2_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    // Counters changed, removed, created.
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT8_ARRAY,
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT8_ARRAY,
    // The counts: this connection's slot, then the four deltas.
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
];
