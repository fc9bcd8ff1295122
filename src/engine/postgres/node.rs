//! Opening a schema as a node: migration, the shared counter-key secret, the node's epoch.
//!
//! - **Migration.** In one transaction holding `pg_advisory_xact_lock` on the schema's name, the
//!   format is read from `meta`; a newer format is refused, an absent one means the tables are
//!   created (`sql/schema.sql`, idempotent) and the format recorded. Nodes opening at once wait
//!   on the lock instead of racing the DDL.
//! - **Secret.** The counter-key secret is inserted once (`ON CONFLICT DO NOTHING`) and read back,
//!   so every node keys counters the same way.
//! - **Epoch.** A node with an id takes a session-level advisory lock on (schema, id) on a
//!   connection it keeps for its life: a second live store with the same id is refused. Then it
//!   bumps its row in `nodes` (autocommit, durable): the new epoch makes every RUNNING record left
//!   by its earlier runs stale at once, for every node. A node without an id gets a random one
//!   and no row: only lease expiry frees its leases.
//! - A process that died holds its lock until the server sees its connection close: at once
//!   for a killed process on a live host (the kernel closes the socket), only after the server's
//!   TCP keepalives for a host that vanished (or `pg_terminate_backend`). An open waits
//!   [`NODE_LOCK_WAIT`] for a held lock before it answers [`Error::AlreadyOpen`].

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{RecvTimeoutError, Sender};
use postgres::Client;
use postgres::types::Type;

use super::session::{Connector, classify};
use super::sql::Sql;
use crate::engine::codec;
use crate::error::{Error, Result};

/// The schema format this build writes and reads.
pub(crate) const FORMAT: u64 = 1;

/// How long an open waits for a node id's lock that another session holds, before it refuses.
pub(crate) const NODE_LOCK_WAIT: Duration = Duration::from_secs(3);

/// Longest node id.
const MAX_NODE_ID_LEN: usize = 64;

/// Who this store is on the schema.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub id: String,
    /// This open's epoch (1 for a node without an id).
    pub epoch: u64,
    /// The epoch `records` report for this node's own leases: `epoch`, or 0 for a node without
    /// an id (it has no row in `nodes`).
    pub owner_epoch: u64,
}

/// Checks a node id: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`.
pub(crate) fn check_node_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "node_id {id:?} must be 1 to {MAX_NODE_ID_LEN} characters of A-Z, a-z, 0-9, '.', '_', \
             ':' and '-'"
        )))
    }
}

/// A stable 64-bit key for an advisory lock on `parts`.
fn lock_key(parts: &[&str]) -> i64 {
    // A fixed-key SipHash: the same on every node and every build.
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0x746f_6c6c_6761_7465, 1);
    for part in parts {
        hasher.write(part.as_bytes());
        hasher.write_u8(0);
    }
    i64::from_be_bytes(hasher.finish().to_be_bytes())
}

fn storage(what: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    move |error| classify(&error, what)
}

/// What an open learned on the node's connection.
pub(crate) struct Registered {
    pub node: NodeInfo,
    pub rate_secret: (u64, u64),
    /// The database clock at open.
    pub clock_reading: u64,
}

/// The thread that keeps the node's connection (and so its lock) for the store's life.
///
/// Every use of a `postgres` client happens on tollgate's own threads: the client drives its
/// connection with a runtime of its own, which must not start on an async runtime's thread, so
/// a store opened or closed from async code must not touch one itself.
pub(crate) struct Holder {
    release: Sender<()>,
    thread: JoinHandle<()>,
}

impl Holder {
    /// Closes the connection (releasing the lock) and joins the thread.
    pub(crate) fn release(self) {
        let _ = self.release.send(());
        let _ = self.thread.join();
    }
}

/// On a thread of its own: connects, migrates the schema, registers the node (taking its lock)
/// and reads the clock; then keeps the connection until [`Holder::release`].
///
/// With `secret_if_new` `None`, a schema without tollgate's tables (or one that needs an upgrade)
/// is an error naming it: nothing is created.
pub(crate) fn hold(
    connector: Connector,
    sql: Arc<Sql>,
    node_id: Option<String>,
    secret_if_new: Option<(u64, u64)>,
) -> Result<(Registered, Holder)> {
    let (ready, registered) = crossbeam_channel::bounded(1);
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name("tollgate-pg-node".into())
        .spawn(move || {
            let opened = (|| -> Result<(Client, Registered)> {
                let mut client = connector.connect()?;
                let rate_secret = migrate(&mut client, &sql, secret_if_new)?;
                let node = register(&mut client, &sql, node_id.as_deref())?;
                let reading: i64 = client
                    .query_typed_one(&sql.jobs.now, &[])
                    .and_then(|row| row.try_get(0))
                    .map_err(storage("cannot read the database clock"))?;
                Ok((
                    client,
                    Registered {
                        node,
                        rate_secret,
                        clock_reading: u64::try_from(reading).unwrap_or(0),
                    },
                ))
            })();
            match opened {
                Ok((mut client, registered)) => {
                    let node = registered.node.clone();
                    let anonymous = node.owner_epoch == 0;
                    if ready.send(Ok(registered)).is_err() {
                        return;
                    }
                    // Keep the lock: if its connection breaks (the server restarted), take it
                    // again on a new one, so that a second store with this id is refused again.
                    // If another store took it meanwhile, this one is superseded; its writer
                    // finds that out from the epoch.
                    while let Err(RecvTimeoutError::Timeout) = released.recv_timeout(LOCK_CHECK) {
                        if anonymous || client.is_valid(LOCK_CHECK).is_ok() {
                            continue;
                        }
                        if let Ok(mut fresh) = connector.connect() {
                            if retake(&mut fresh, &sql, &node.id).is_ok() {
                                client = fresh;
                            }
                        }
                    }
                    if anonymous {
                        // Best effort: a node that failed to fold leaves rows that still sum
                        // right.
                        let _ = fold_counts(&mut client, &sql, &node.id);
                    }
                    drop(client);
                }
                Err(error) => drop(ready.send(Err(error))),
            }
        })
        .map_err(Error::storage)?;
    let registered = registered
        .recv()
        .map_err(|_| Error::Unavailable("the node's connection thread ended".into()))??;
    Ok((registered, Holder { release, thread }))
}

/// How often the node's connection is checked, and the lock taken again if it was lost.
const LOCK_CHECK: Duration = Duration::from_secs(1);

/// Takes the node's lock again on `client` (after its connection was lost), without a new epoch:
/// this is the same run of the node.
fn retake(client: &mut Client, sql: &Sql, id: &str) -> Result<()> {
    if try_lock(client, sql, id)? {
        Ok(())
    } else {
        Err(Error::Superseded)
    }
}

/// Tries once to take the session-level advisory lock of node `id` on `client`.
fn try_lock(client: &mut Client, sql: &Sql, id: &str) -> Result<bool> {
    let key = lock_key(&["tollgate-node", &sql.schema_name, id]);
    client
        .query_typed_one(&sql.node.try_node_lock, &[(&key, Type::INT8)])
        .map_err(storage("cannot take the node's lock"))?
        .try_get(0)
        .map_err(storage("bad lock answer"))
}

/// Moves the count rows of a node without an id into the shared `retired` row, in one
/// transaction, so that a schema whose servers run without ids does not gain rows at every open.
/// (A named node reuses its rows at its next open.) The sums do not change; a node that wrote
/// nothing (a tool that only read) changes no row.
fn fold_counts(client: &mut Client, sql: &Sql, node: &str) -> Result<()> {
    let mut txn = client
        .transaction()
        .map_err(storage("cannot fold the node's counts"))?;
    let prefix = format!("{node}/%");
    txn.query_typed(&sql.node.fold_counts, &[(&prefix, Type::TEXT)])
        .map_err(storage("cannot fold the node's counts"))?;
    txn.commit()
        .map_err(storage("cannot fold the node's counts"))
}

/// Adds the clock's stop column to a schema made before it (with `may_change`; without, such a
/// schema is an error naming it).
fn add_clock_stop(txn: &mut postgres::Transaction<'_>, sql: &Sql, may_change: bool) -> Result<()> {
    let has_clock_stop = txn
        .query_typed(&sql.node.has_clock_stop, &[(&sql.schema_name, Type::TEXT)])
        .map_err(storage("cannot look at the schema's clock"))?;
    if has_clock_stop.is_empty() {
        if !may_change {
            return Err(Error::InvalidArgument(format!(
                "the PostgreSQL schema {} needs an upgrade that only an open which may create \
                 the schema makes",
                sql.schema_name
            )));
        }
        txn.batch_execute(&sql.clock_stop)
            .map_err(storage("cannot add to the schema's clock"))?;
    }
    Ok(())
}

/// Creates or checks the schema and returns the counter-key secret.
pub(crate) fn migrate(
    client: &mut Client,
    sql: &Sql,
    secret_if_new: Option<(u64, u64)>,
) -> Result<(u64, u64)> {
    let mut txn = client
        .transaction()
        .map_err(storage("cannot begin the migration"))?;
    txn.query_typed(
        &sql.node.lock_schema,
        &[(
            &lock_key(&["tollgate-schema", &sql.schema_name]),
            Type::INT8,
        )],
    )
    .map_err(storage("cannot lock the schema for its migration"))?;
    let exists = txn
        .query_typed(&sql.node.has_schema, &[(&sql.schema_name, Type::TEXT)])
        .map_err(storage("cannot look for the schema"))?;
    let found = if exists.is_empty() {
        None
    } else {
        let rows = txn
            .query_typed(&sql.node.read_format, &[])
            .map_err(storage("cannot read the schema's format"))?;
        match rows.first() {
            Some(row) => {
                let bytes: Vec<u8> = row.try_get(0).map_err(storage("bad format value"))?;
                Some(codec::decode_meta("format", &bytes)?)
            }
            None => None,
        }
    };
    match found {
        Some(format) if format > FORMAT => {
            return Err(Error::IncompatibleFormat {
                found: u8::try_from(format).unwrap_or(u8::MAX),
                supported: u8::try_from(FORMAT).unwrap_or(u8::MAX),
            });
        }
        Some(_) => add_clock_stop(&mut txn, sql, secret_if_new.is_some())?,
        None if secret_if_new.is_none() => {
            return Err(Error::InvalidArgument(format!(
                "the PostgreSQL schema {} has no tollgate tables (nothing was created)",
                sql.schema_name
            )));
        }
        None => {
            txn.batch_execute(&sql.create)
                .map_err(storage("cannot create tollgate's tables"))?;
            txn.batch_execute(&sql.clock_stop)
                .map_err(storage("cannot create tollgate's clock"))?;
            txn.query_typed(
                &sql.node.write_format,
                &[(&codec::encode_meta(FORMAT).to_vec(), Type::BYTEA)],
            )
            .map_err(storage("cannot record the schema's format"))?;
        }
    }
    if let Some(secret_if_new) = secret_if_new {
        let mut secret = Vec::with_capacity(16);
        secret.extend_from_slice(&secret_if_new.0.to_be_bytes());
        secret.extend_from_slice(&secret_if_new.1.to_be_bytes());
        txn.query_typed(&sql.node.put_secret, &[(&secret, Type::BYTEA)])
            .map_err(storage("cannot store the counter-key secret"))?;
    }
    let row = txn
        .query_typed_one(&sql.node.read_secret, &[])
        .map_err(storage("cannot read the counter-key secret"))?;
    let stored: Vec<u8> = row.try_get(0).map_err(storage("bad secret value"))?;
    let halves: Option<([u8; 8], [u8; 8])> = stored
        .get(..8)
        .zip(stored.get(8..16))
        .and_then(|(low, high)| low.try_into().ok().zip(high.try_into().ok()));
    let (low, high) = halves.ok_or_else(|| {
        Error::Corrupted(format!(
            "the counter-key secret is {} bytes, not 16",
            stored.len()
        ))
    })?;
    txn.commit()
        .map_err(storage("cannot commit the migration"))?;
    Ok((u64::from_be_bytes(low), u64::from_be_bytes(high)))
}

/// Registers this open: takes the node's advisory lock on `client` (kept for the store's life)
/// and bumps its epoch; without an id, draws a random one.
pub(crate) fn register(client: &mut Client, sql: &Sql, node_id: Option<&str>) -> Result<NodeInfo> {
    let Some(id) = node_id else {
        let random = std::hash::RandomState::new().hash_one(std::time::SystemTime::now());
        return Ok(NodeInfo {
            id: format!("anonymous-{random:016x}"),
            epoch: 1,
            owner_epoch: 0,
        });
    };
    check_node_id(id)?;
    // A process that just died may still hold the lock for a moment, until the server sees its
    // connection close: a restart retries briefly before it refuses.
    let deadline = Instant::now() + NODE_LOCK_WAIT;
    loop {
        if try_lock(client, sql, id)? {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::AlreadyOpen);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let epoch: i64 = client
        .query_typed_one(&sql.node.bump_epoch, &[(&id, Type::TEXT)])
        .map_err(storage("cannot bump the node's epoch"))?
        .try_get(0)
        .map_err(storage("bad epoch"))?;
    let epoch = u64::try_from(epoch).unwrap_or(0);
    Ok(NodeInfo {
        id: id.to_string(),
        epoch,
        owner_epoch: epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        for good in ["web-1", "eu.west:3", "N_2"] {
            assert!(check_node_id(good).is_ok());
        }
        for bad in ["", "a b", "x'y", "é", &"a".repeat(65)] {
            assert!(
                matches!(check_node_id(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn lock_keys_depend_on_every_part() {
        let a = lock_key(&["tollgate-node", "s", "n1"]);
        assert_eq!(a, lock_key(&["tollgate-node", "s", "n1"]));
        assert_ne!(a, lock_key(&["tollgate-node", "s", "n2"]));
        assert_ne!(lock_key(&["ab", "c"]), lock_key(&["a", "bc"]));
    }
}
