//! The builder's settings and open of the PostgreSQL engine (feature `postgres`): the schema,
//! the node's id, the pool.

#[cfg(feature = "postgres")]
use super::Settings;
use super::StoreBuilder;
#[cfg(feature = "postgres")]
use crate::error::Result;
#[cfg(feature = "postgres")]
use crate::ratelimit::RateDurability;
#[cfg(feature = "postgres")]
use crate::store::Store;

impl StoreBuilder {
    /// Opens a store on PostgreSQL: records and counters in tables of one schema, shared by
    /// every store (every *node*) opened on it. `conn` is a libpq connection string or URL
    /// (`host=db user=app dbname=orders sslmode=verify-full sslrootcert=/etc/ca.pem`, or
    /// `postgresql://app@db/orders?sslmode=require`); `connect_timeout` defaults to 5 s, TCP
    /// keepalives to `keepalives_idle=5 keepalives_interval=2 keepalives_retries=3` and
    /// `tcp_user_timeout` to 10 s (so that a connection to a vanished host fails within seconds),
    /// each unless the string sets it. The server is asked for the same on its side of each
    /// session, so that it ends the sessions of a node whose host vanished within seconds too
    /// (and the node, restarted elsewhere under its id, is not refused as `AlreadyOpen` for the
    /// kernel's two hours): PostgreSQL 12 or newer.
    ///
    /// The schema is created, or checked and migrated, at open. Decisions are taken on the
    /// database server's clock: a `clock` set on this builder does not decide here. Rate counters
    /// are always [`RateDurability::Immediate`](crate::ratelimit::RateDurability::Immediate).
    /// Calls block on the network: in async code, call them from `spawn_blocking` (the tower
    /// layers do).
    ///
    /// # Errors
    /// - [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a bad connection string, schema name or node id, for
    ///   `RateDurability::Batched` or `max_records` (not available on PostgreSQL), and for the
    ///   settings [`StoreBuilder::open`] refuses.
    /// - [`Error::Unavailable`](crate::Error::Unavailable) if the server cannot be reached within the connect timeout.
    /// - [`Error::AlreadyOpen`](crate::Error::AlreadyOpen) if a live store already runs with this `node_id` on the schema.
    /// - [`Error::IncompatibleFormat`](crate::Error::IncompatibleFormat) if a newer tollgate created the schema.
    /// - [`Error::Storage`](crate::Error::Storage) for anything else the server refuses (a permission, say).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn open_postgres(self, conn: &str) -> Result<Store> {
        Store::open_postgres(&self, conn)
    }

    /// The PostgreSQL schema for tollgate's tables (see [`StoreBuilder::open_postgres`]): 1 to
    /// 63 characters of `a-z`, `0-9` and `_`. Stores on different schemas never see each other's
    /// data. Default = `tollgate`.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_schema(mut self, name: &str) -> Self {
        self.postgres_schema = Some(name.to_string());
        self
    }

    /// Whether [`StoreBuilder::open_postgres`] creates its schema and tables when they do not
    /// exist (and upgrades an older schema). With `false`, such a schema is an error that names
    /// it, and nothing is created: for tools that look at a schema (the `tollgate` CLI), where a
    /// mistyped name must not become a new schema. Default = `true`.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_create_schema(mut self, create: bool) -> Self {
        self.postgres_create_schema = create;
        self
    }

    /// A stable name for this node on PostgreSQL (1 to 64 characters of `A-Z a-z 0-9 . _ : -`).
    /// Each open of a name starts a new epoch: RUNNING records left by its earlier runs are
    /// taken over at once by whoever meets them. Only one live store may use a name on a schema.
    /// Default = a random name per open (then only lease expiry frees its leases).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn node_id(mut self, id: &str) -> Self {
        self.node_id = Some(id.to_string());
        self
    }

    /// How many connections (each with its worker thread) a PostgreSQL store keeps: its writers
    /// ([`postgres_writers`](Self::postgres_writers)), which put the changes of the moment into
    /// one transaction each, and the others for reads and maintenance (plus one more, held for
    /// the node's lock). At least 2; default 4 (two writers, two for reads).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_pool_size(mut self, connections: usize) -> Self {
        self.postgres_pool_size = Some(connections);
        self
    }

    /// How many of a PostgreSQL store's connections are writers. Each writer gathers the changes
    /// queued while it is free (begins, resolutions, rate changes) into one transaction, so with
    /// two, one batch's commit waits for its flush while the next batch is locked and decided
    /// on another connection. Default 2 (1 if the pool has only 2 connections); it must leave
    /// at least one connection of [`postgres_pool_size`](Self::postgres_pool_size) for reads.
    /// A server further away (round trips of milliseconds) gains from more.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_writers(mut self, writers: usize) -> Self {
        self.postgres_writers = Some(writers);
        self
    }

    /// Whether a change that finds its writer idle (a lone caller) goes to PostgreSQL in one round
    /// trip instead of two. Default `true`.
    ///
    /// The writer decides the change with the same rules, on the row as this node last wrote or
    /// read it, and sends one statement, its own transaction, that writes the row only if it is
    /// still exactly as the decision read it, the decision's time (the server's clock as last
    /// read, plus the time since, less a margin) is no later than the server's clock and at most
    /// 100 ms behind, and this node's epoch is its own. Otherwise nothing is written and the
    /// change takes the two round trips (lock, then write and commit) a batch of many takes. So a
    /// lone caller's begin of a new key, the completion of a lease this node granted and a rate
    /// check of a subject this node charged last usually cost one round trip.
    ///
    /// What it changes for a caller: a connection that fails while the change is on its way
    /// gives [`Error::InDoubt`](crate::Error::InDoubt) where the two round trips could often say
    /// [`Error::Unavailable`](crate::Error::Unavailable) (their first carries no write); and a
    /// decision may be taken at a time up to 100 ms before the server's reading (a lease a
    /// little shorter, never a lease taken over early, never a rate quota larger). `false`
    /// keeps every change on two round trips.
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres_one_round_trip(mut self, one_round_trip: bool) -> Self {
        self.postgres_one_round_trip = one_round_trip;
        self
    }

    /// The PostgreSQL engine's options, from this builder and its checked `settings`.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres_options(&self, settings: &Settings) -> crate::engine::postgres::Options {
        crate::engine::postgres::Options {
            schema: self.postgres_schema.clone(),
            create_schema: self.postgres_create_schema,
            node_id: self.node_id.clone(),
            pool_size: self.postgres_pool_size,
            writers: self.postgres_writers,
            rate_secret: self.rate_secret,
            batched_rates: matches!(self.rate_durability, Some(RateDurability::Batched { .. })),
            max_records: settings.max_records.is_some(),
            compaction_interval: self.compaction_interval,
            compaction_batch: settings.compaction_batch,
            one_round_trip: self.postgres_one_round_trip,
        }
    }
}
