//! One connection to PostgreSQL for reads and maintenance, reconnected on demand, and what errors
//! mean to tollgate (for the writer's connection too, `pipe.rs`).
//!
//! Every connection is opened with the store's connect timeout and the server's
//! `statement_timeout` set for it; a transaction also sets it with `SET LOCAL`, so that it holds
//! behind PgBouncer's transaction mode, where session settings do not stick. Statements on these
//! connections are sent with their parameter types (`query_typed`): parsed, bound and run in one
//! round trip, nothing prepared. (The writers prepare theirs: `pipe.rs`.)
//!
//! Errors are sorted into three kinds:
//! - the server could not be reached, went away, or timed out: [`Error::Unavailable`] (the
//!   connection is dropped and reopened on the next use), or [`Error::InDoubt`] if it happened
//!   while a commit was on its way;
//! - deadlock, serialization failure, or a row created under a batch (a unique conflict): the
//!   transaction is retried;
//! - anything else (a schema changed under tollgate, a permission): [`Error::Storage`].

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sql::Sql;
use crate::error::{Error, Result};

/// Connect timeout when the connection string sets none.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server cancels any statement running longer (`statement_timeout`).
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server ends a session idle inside a transaction this long (a client that died mid-batch
/// must not hold row locks).
pub(crate) const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15);

/// TCP keepalives, unless the connection string sets them: the first probe after this long idle
/// (libpq's `keepalives_idle`; the kernel's default is two hours).
pub(crate) const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(5);
/// Between unanswered keepalive probes (`keepalives_interval`).
pub(crate) const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered probes before the connection is dropped (`keepalives_retries`).
pub(crate) const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;
/// Longest that sent data (or a keepalive probe) may stay unacknowledged before the kernel drops
/// the connection (`tcp_user_timeout`, Linux; the kernel's default is about 15 minutes of
/// retransmissions).
pub(crate) const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Fills in what the connection string left out: the connect timeout, TCP keepalives and the TCP
/// user timeout. With these, a connection to a server whose host vanished (a failover to another
/// address, a partition) fails within about 10–15 s, idle or in the middle of a statement, and is
/// opened again; without them a reader blocked on it would wait for the kernel's hours. (A
/// server that is alive but silent is bounded by `statement_timeout` on its side and by the
/// callers' timeouts on ours.)
pub(crate) fn apply_defaults(
    config: &mut tokio_postgres::Config,
    info: &super::conninfo::ConnInfo,
) {
    if !info.has_connect_timeout {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if !info.has_keepalives_idle {
        config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
    }
    match info.tcp_user_timeout_ms {
        None => {
            config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        // libpq's 0: the kernel's own.
        Some(0) => {}
        Some(ms) => {
            config.tcp_user_timeout(Duration::from_millis(ms));
        }
    }
}

/// How to open a connection.
#[derive(Clone)]
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// What every connection opened with `config` runs once opened.
///
/// Besides the timeouts, it asks the server for the same TCP keepalives and user timeout as
/// this side's (`tcp_keepalives_*`, `tcp_user_timeout`: PostgreSQL 12 or newer), on its own
/// socket of this session. The server's defaults are the kernel's (about two hours), and a
/// session whose client vanished with its host (a partition, a failover, a VM gone: no FIN, no
/// RST) would live that long: holding a node's advisory lock, so that the node restarted
/// elsewhere is refused as `AlreadyOpen` for two hours
/// (`tests/it/partition_node_vanished.rs`). With them the server ends it within about
/// 15 seconds.
pub(crate) fn setup(config: &tokio_postgres::Config) -> String {
    let mut settings = vec![
        "synchronous_commit = on".to_owned(),
        format!("statement_timeout = {}", STATEMENT_TIMEOUT.as_millis()),
        format!(
            "idle_in_transaction_session_timeout = {}",
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        ),
    ];
    if config.get_keepalives() {
        let idle = config.get_keepalives_idle().as_secs().max(1);
        settings.push(format!("tcp_keepalives_idle = {idle}"));
        if let Some(interval) = config.get_keepalives_interval() {
            let interval = interval.as_secs().max(1);
            settings.push(format!("tcp_keepalives_interval = {interval}"));
        }
        if let Some(retries) = config.get_keepalives_retries() {
            settings.push(format!("tcp_keepalives_count = {retries}"));
        }
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        settings.push(format!("tcp_user_timeout = {}", timeout.as_millis()));
    }
    settings
        .iter()
        .map(|setting| format!("SET {setting}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Connector {
    pub(crate) fn new(config: tokio_postgres::Config, tls: MakeRustlsConnect) -> Self {
        Self { config, tls }
    }

    /// The connection settings, for the writer's asynchronous client (`pipe.rs`).
    pub(crate) fn async_config(&self) -> tokio_postgres::Config {
        self.config.clone()
    }

    pub(crate) fn connect(&self) -> Result<Client> {
        let mut client = Config::from(self.config.clone())
            .connect(self.tls.clone())
            .map_err(|error| unavailable("cannot connect", &error))?;
        client
            .batch_execute(&setup(&self.config))
            .map_err(|error| classify(&error, "cannot set up the connection"))?;
        Ok(client)
    }
}

/// A connection that reconnects when it is used after it failed.
pub(crate) struct Session {
    client: Option<Client>,
    connector: Connector,
    pub sql: std::sync::Arc<Sql>,
}

impl Session {
    pub(crate) fn new(connector: Connector, sql: std::sync::Arc<Sql>) -> Self {
        Self {
            client: None,
            connector,
            sql,
        }
    }

    /// The open connection, reconnecting if there is none or it broke.
    pub(crate) fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(self.connector.connect()?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Unavailable("no connection".into()))
    }

    /// Drops the connection after an error that leaves it unusable or in doubt.
    pub(crate) fn reset(&mut self) {
        self.client = None;
    }
}

/// What an error means for the batch that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The server is gone, restarting, or too slow: the connection is dropped.
    Unavailable,
    /// Try the transaction again (deadlock, serialization failure, unique conflict).
    Retry,
    /// Something else; reported as a storage error.
    Other,
}

pub(crate) fn kind(error: &postgres::Error) -> Kind {
    if error.is_closed() {
        return Kind::Unavailable;
    }
    match error.code() {
        Some(code)
            if *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::UNIQUE_VIOLATION =>
        {
            Kind::Retry
        }
        Some(code)
            if code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::QUERY_CANCELED
                || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            Kind::Unavailable
        }
        Some(_) => Kind::Other,
        // No server error: the socket or the protocol failed.
        None => Kind::Unavailable,
    }
}

/// `error` as tollgate reports it, for a step described by `what`.
pub(crate) fn classify(error: &postgres::Error, what: &str) -> Error {
    match kind(error) {
        Kind::Unavailable => unavailable(what, error),
        Kind::Retry | Kind::Other => Error::storage(std::io::Error::other(format!(
            "{what}: {}",
            describe(error)
        ))),
    }
}

pub(crate) fn unavailable(what: &str, error: &postgres::Error) -> Error {
    Error::Unavailable(format!("{what}: {}", describe(error)))
}

/// The server's message, or the client's with its cause.
fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::conninfo::ConnInfo;
    use super::*;

    fn configured(conn: &str) -> tokio_postgres::Config {
        let info = ConnInfo::parse(conn).unwrap();
        let mut config: tokio_postgres::Config = info.rest.parse().unwrap();
        apply_defaults(&mut config, &info);
        config
    }

    #[test]
    fn the_server_is_asked_for_this_sides_keepalives_and_user_timeout() {
        let setup = setup(&configured("host=db user=app"));
        assert!(setup.contains("SET tcp_keepalives_idle = 5"), "{setup}");
        assert!(setup.contains("SET tcp_keepalives_interval = 2"), "{setup}");
        assert!(setup.contains("SET tcp_keepalives_count = 3"), "{setup}");
        assert!(setup.contains("SET tcp_user_timeout = 10000"), "{setup}");
        let setup = self::setup(&configured(
            "host=db keepalives_idle=30 tcp_user_timeout=4000",
        ));
        assert!(setup.contains("SET tcp_keepalives_idle = 30"), "{setup}");
        assert!(setup.contains("SET tcp_user_timeout = 4000"), "{setup}");
        // Keepalives off, the kernel's user timeout: the server keeps its own defaults too.
        let setup = self::setup(&configured("host=db keepalives=0 tcp_user_timeout=0"));
        assert!(!setup.contains("tcp_"), "{setup}");
    }

    #[test]
    fn timeouts_and_keepalives_default_unless_the_string_sets_them() {
        let config = configured("host=db user=app");
        assert_eq!(config.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(
            config.get_keepalives_interval(),
            Some(DEFAULT_KEEPALIVES_INTERVAL)
        );
        assert_eq!(
            config.get_keepalives_retries(),
            Some(DEFAULT_KEEPALIVES_RETRIES)
        );
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&DEFAULT_TCP_USER_TIMEOUT)
        );

        // The string's own values win, in either form, even one equal to the client's default.
        let secs = Duration::from_secs;
        for conn in [
            "host=db connect_timeout=9 keepalives_idle=7200 keepalives_interval=30 \
             keepalives_retries=9 tcp_user_timeout=60000",
            "postgres://db/x?connect_timeout=9&keepalives_idle=7200&keepalives_interval=30&\
             keepalives_retries=9&tcp_user_timeout=60000",
        ] {
            let config = configured(conn);
            assert_eq!(config.get_connect_timeout(), Some(&secs(9)), "{conn}");
            assert_eq!(config.get_keepalives_idle(), secs(7200), "{conn}");
            assert_eq!(config.get_keepalives_interval(), Some(secs(30)), "{conn}");
            assert_eq!(config.get_keepalives_retries(), Some(9), "{conn}");
            assert_eq!(config.get_tcp_user_timeout(), Some(&secs(60)), "{conn}");
        }
        assert!(!configured("host=db keepalives=0").get_keepalives());
        // libpq's milliseconds, and its 0 for the kernel's default.
        assert_eq!(
            configured("host=db tcp_user_timeout=2500").get_tcp_user_timeout(),
            Some(&Duration::from_millis(2500))
        );
        assert_eq!(
            configured("host=db tcp_user_timeout=0").get_tcp_user_timeout(),
            None
        );
    }
}
