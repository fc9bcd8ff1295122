//! The calls an open makes outside the pipelined links: a connection with every step bounded,
//! the cluster's slots, a command run on the server that holds its key (following `MOVED`), and
//! the namespace's secret, created by the first store that opens the namespace (`SET NX`).

use std::time::Duration;

use super::{namespace, topology};
use crate::clock::system_time_to_nanos;
use crate::error::{Error, Result};
use crate::ratelimit::CounterKeys;

/// A Redis error while opening: unreachable or timed out is [`Error::Unavailable`], anything
/// the server refused is [`Error::Storage`].
#[allow(clippy::needless_pass_by_value)] // used as `map_err(server_error)`
pub(super) fn server_error(error: redis::RedisError) -> Error {
    if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
        Error::Unavailable(format!("Redis: {error}"))
    } else {
        Error::storage(format!("Redis: {error}"))
    }
}

pub(super) fn addr_of(info: &redis::ConnectionInfo) -> String {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    }
}

/// A connection with every step bounded by `timeout`.
pub(super) fn connect(
    info: &redis::ConnectionInfo,
    timeout: Duration,
) -> Result<redis::Connection> {
    let client = redis::Client::open(info.clone()).map_err(server_error)?;
    let connection = client
        .get_connection_with_timeout(timeout)
        .map_err(server_error)?;
    connection
        .set_read_timeout(Some(timeout))
        .and_then(|()| connection.set_write_timeout(Some(timeout)))
        .map_err(server_error)?;
    Ok(connection)
}

pub(super) fn cluster_slots(
    connection: &mut redis::Connection,
) -> Result<Vec<(u16, u16, String, u16)>> {
    let value: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(connection)
        .map_err(server_error)?;
    topology::parse_slots(&value).map_err(Error::storage)
}

/// Runs `command` on the server that holds `key`, following `MOVED` redirections on a cluster.
pub(super) fn on_key_owner<T: redis::FromRedisValue>(
    info: &redis::ConnectionInfo,
    timeout: Duration,
    command: &redis::Cmd,
) -> Result<T> {
    let mut info = info.clone();
    for _ in 0..3 {
        let mut connection = connect(&info, timeout)?;
        match command.query(&mut connection) {
            Ok(value) => return Ok(value),
            Err(error) => match error.redirect_node() {
                Some((addr, _)) => {
                    let Some((host, port)) = addr.rsplit_once(':') else {
                        return Err(server_error(error));
                    };
                    let port = port
                        .parse::<u16>()
                        .map_err(|_| server_error(error.clone()))?;
                    info = info.set_addr(redis::ConnectionAddr::Tcp(host.to_string(), port));
                }
                None => return Err(server_error(error)),
            },
        }
    }
    Err(Error::Unavailable(
        "Redis Cluster kept redirecting the namespace's secret".into(),
    ))
}

/// The namespace's secret, created if it has none; `true` if this call created it.
pub(super) fn secret(
    info: &redis::ConnectionInfo,
    timeout: Duration,
    namespace: &str,
) -> Result<((u64, u64), bool)> {
    let ours = CounterKeys::generate_secret(system_time_to_nanos(std::time::SystemTime::now()));
    let stored = put_secret(info, timeout, namespace, ours)?;
    Ok((stored, stored == ours))
}

/// Sets the namespace's secret to `secret` unless it has one, and returns the one it has.
pub(super) fn put_secret(
    info: &redis::ConnectionInfo,
    timeout: Duration,
    namespace: &str,
    secret: (u64, u64),
) -> Result<(u64, u64)> {
    let key = namespace::secret_key(namespace);
    let mut set = redis::cmd("SET");
    set.arg(&key)
        .arg(namespace::encode_secret(secret))
        .arg("NX");
    let _: Option<String> = on_key_owner(info, timeout, &set)?;
    let mut get = redis::cmd("GET");
    get.arg(&key);
    let stored: Option<String> = on_key_owner(info, timeout, &get)?;
    match stored {
        Some(stored) => namespace::decode_secret(&stored),
        None => Err(Error::Unavailable(
            "the Redis namespace's secret vanished as it was set".into(),
        )),
    }
}
