//! Everything a worker runs besides change batches: reads, peeks, listing, bulk loads,
//! compaction steps and the counts for `stats`.
//!
//! Reads run outside any transaction (autocommit, one round trip each) and return the
//! database clock's reading with their rows, which keeps the node's clock estimate fresh.
//! Compaction steps and bulk loads are transactions of their own; a step removes at most
//! `compaction_batch` records and counters, skipping rows that traffic holds. A connection lost
//! once such a transaction's `COMMIT` was sent (or a caller that stopped waiting for it) is
//! [`Error::InDoubt`], as for the writer's batches.

use std::sync::Arc;

use postgres::types::Type;

use super::Queue;
use super::clock::ServerClock;
use super::session::{Kind, Session, classify, kind};
use crate::engine::{BulkRecords, Swept, codec};
use crate::error::{Error, Result};
use crate::idempotency::{Digest, Record, RecordBody};
use crate::ratelimit::charge::{self, OpKind, RateOutcome, Target};

/// Records written per statement by a bulk load.
const BULK_CHUNK: u64 = 500;

/// Runs `work` against the session's connection, dropping the connection if the error says it is
/// gone.
fn with_client<T>(
    session: &mut Session,
    what: &str,
    work: impl FnOnce(&mut postgres::Client, &super::sql::Sql) -> Result<T, postgres::Error>,
) -> Result<T> {
    let sql = Arc::clone(&session.sql);
    let client = session.client()?;
    match work(client, &sql) {
        Ok(value) => Ok(value),
        Err(error) => {
            if kind(&error) == Kind::Unavailable {
                session.reset();
            }
            Err(classify(&error, what))
        }
    }
}

/// Whether a write job's `COMMIT` has been sent: from then on, a lost connection leaves the
/// transaction's outcome unknown.
#[derive(Default)]
struct Commit {
    sent: bool,
}

impl Commit {
    /// Commits `txn`, noting that the `COMMIT` is on its way first.
    fn send(&mut self, txn: postgres::Transaction<'_>) -> Result<(), postgres::Error> {
        self.sent = true;
        txn.commit()
    }
}

/// [`with_client`] for work that writes and ends by committing through its [`Commit`]: a
/// connection that fails once the `COMMIT` was sent is [`Error::InDoubt`] (the server may have
/// committed), never `Unavailable`, which promises that nothing was changed.
fn with_client_writing<T>(
    session: &mut Session,
    what: &str,
    work: impl FnOnce(
        &mut postgres::Client,
        &super::sql::Sql,
        &mut Commit,
    ) -> Result<T, postgres::Error>,
) -> Result<T> {
    let mut commit = Commit::default();
    let result = with_client(session, what, |client, sql| work(client, sql, &mut commit));
    in_doubt_once_sent(result, commit.sent)
}

/// `result`, with an `Unavailable` that came after the `COMMIT` was sent made `InDoubt`.
fn in_doubt_once_sent<T>(result: Result<T>, sent: bool) -> Result<T> {
    match result {
        Err(Error::Unavailable(message)) if sent => Err(Error::InDoubt(format!(
            "{message} (after the COMMIT was sent: it may have been committed)"
        ))),
        other => other,
    }
}

/// One round trip to the server (`Store::health`).
pub(super) fn ping(session: &mut Session) -> Result<()> {
    with_client(session, "health probe", |client, _| {
        client.simple_query("SELECT 1").map(drop)
    })
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn read_record(
    session: &mut Session,
    clock: &ServerClock,
    digest: &Digest,
) -> Result<Option<Record>> {
    let key = digest.as_bytes().to_vec();
    let (reading, value) = with_client(session, "cannot read a record", |client, sql| {
        let row = client.query_typed_one(&sql.jobs.read_record, &[(&key, Type::BYTEA)])?;
        Ok((
            row.try_get::<_, i64>(0)?,
            row.try_get::<_, Option<Vec<u8>>>(1)?,
        ))
    })?;
    clock.observe(to_u64(reading));
    value.map(|bytes| codec::decode_record(&bytes)).transpose()
}

pub(super) fn list_records(
    session: &mut Session,
    after: Option<Digest>,
    limit: usize,
) -> Result<Vec<(Digest, Result<Record>)>> {
    let after = after.map_or_else(Vec::new, |digest| digest.as_bytes().to_vec());
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = with_client(session, "cannot list records", |client, sql| {
        client.query_typed(
            &sql.jobs.list_records,
            &[(&after, Type::BYTEA), (&limit, Type::INT8)],
        )
    })?;
    let mut listed = Vec::with_capacity(rows.len());
    for row in rows {
        let digest: Vec<u8> = row
            .try_get(0)
            .map_err(|error| classify(&error, "bad listed digest"))?;
        let value: Vec<u8> = row
            .try_get(1)
            .map_err(|error| classify(&error, "bad listed value"))?;
        let digest = <[u8; 32]>::try_from(digest.as_slice()).map_err(|_| {
            Error::Corrupted(format!("a record digest is {} bytes, not 32", digest.len()))
        })?;
        listed.push((Digest(digest), codec::decode_record(&value)));
    }
    Ok(listed)
}

/// A peek: the counters as committed, decided without a lock or a write.
pub(super) fn peek(
    session: &mut Session,
    clock: &ServerClock,
    kind: OpKind,
    targets: &[Target],
) -> Result<RateOutcome> {
    let keys: Vec<Vec<u8>> = targets.iter().map(|target| target.key.0.to_vec()).collect();
    let rows = with_client(session, "cannot read counters", |client, sql| {
        client.query_typed(&sql.jobs.peek_counters, &[(&keys, Type::BYTEA_ARRAY)])
    })?;
    let mut now = 0;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let read = (|| -> Result<(), postgres::Error> {
            now = to_u64(row.try_get::<_, i64>(0)?);
            if let (Some(key), Some(value)) = (
                row.try_get::<_, Option<Vec<u8>>>(1)?,
                row.try_get::<_, Option<Vec<u8>>>(2)?,
            ) {
                found.push((key, value));
            }
            Ok(())
        })();
        read.map_err(|error| classify(&error, "bad counter row"))?;
    }
    clock.observe(now);
    let mut states = Vec::with_capacity(targets.len());
    for target in targets {
        let stored = found
            .iter()
            .find(|(key, _)| key.as_slice() == target.key.0.as_slice())
            .map(|(_, value)| codec::decode_rate(value))
            .transpose()?;
        states.push(stored.map(|stored| stored.state));
    }
    Ok(charge::apply(kind, targets, &mut states, now).0)
}

/// One compaction step, through the workers.
/// `node` names this node's row in `counts` for what its sweeps remove.
pub(super) fn compact_step(
    queue: &Queue,
    clock: &Arc<ServerClock>,
    node: &str,
    limit: usize,
) -> Result<Swept> {
    let clock = Arc::clone(clock);
    let slot = format!("{node}/compactor");
    queue.call_writing(move |session| compact(session, &clock, &slot, limit))
}

fn compact(session: &mut Session, clock: &ServerClock, slot: &str, limit: usize) -> Result<Swept> {
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let result = with_client_writing(session, "cannot compact", |client, sql, commit| {
        let mut txn = client.transaction()?;
        txn.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            super::session::STATEMENT_TIMEOUT.as_millis()
        ))?;
        let now: i64 = txn.query_typed_one(&sql.jobs.now, &[])?.try_get(0)?;
        let rows = txn.query_typed(&sql.compact, &[(&now, Type::INT8), (&limit, Type::INT8)])?;
        let mut removed = [0i64; 4];
        for row in rows {
            let kind: i32 = row.try_get(0)?;
            let count: i64 = row.try_get(1)?;
            if let Some(slot) = usize::try_from(kind).ok().and_then(|k| removed.get_mut(k)) {
                *slot += count;
            }
        }
        if removed.iter().any(|count| *count > 0) {
            txn.query_typed(
                &sql.jobs.count_removed,
                &[
                    (&slot, Type::TEXT),
                    (&removed[0], Type::INT8),
                    (&removed[1], Type::INT8),
                    (&removed[2], Type::INT8),
                    (&removed[3], Type::INT8),
                ],
            )?;
        }
        commit.send(txn)?;
        Ok((now, removed))
    });
    let (now, removed) = result?;
    clock.observe(to_u64(now));
    let records = to_u64(removed[0] + removed[1] + removed[2]);
    let rate_states = to_u64(removed[3]);
    let limit = to_u64(limit);
    Ok(Swept {
        records,
        rate_states,
        more: records >= limit || rate_states >= limit,
    })
}

/// The record and counter counts (exact: the sums of every connection's deltas) and the bytes
/// the two tables take.
pub(super) fn counts(session: &mut Session) -> Result<([u64; 4], u64)> {
    with_client(session, "cannot read the counts", |client, sql| {
        let row = client.query_typed_one(&sql.jobs.counts, &[])?;
        let mut counts = [0u64; 4];
        for (index, count) in counts.iter_mut().enumerate() {
            *count = to_u64(row.try_get::<_, i64>(index)?);
        }
        Ok((counts, to_u64(row.try_get::<_, i64>(4)?)))
    })
}

fn state_of(record: &Record) -> i16 {
    match record.body {
        RecordBody::Running { .. } => 0,
        RecordBody::Completed(_) => 1,
        RecordBody::Failed(_) => 2,
    }
}

/// Writes every record `records` yields in one transaction: all of them or none.
pub(super) fn bulk_load(
    session: &mut Session,
    clock: &ServerClock,
    node: &str,
    mut records: BulkRecords,
) -> Result<u64> {
    let slot = format!("{node}/bulk");
    let mut encode_error = None;
    let result = with_client_writing(session, "cannot bulk-load", |client, sql, commit| {
        let mut txn = client.transaction()?;
        let now: i64 = txn.query_typed_one(&sql.jobs.now, &[])?.try_get(0)?;
        let mut written = 0u64;
        let mut deltas = [0i64; 3];
        'chunks: loop {
            let mut digests = Vec::new();
            let mut values = Vec::new();
            let mut states = Vec::new();
            let mut expires = Vec::new();
            while (digests.len() as u64) < BULK_CHUNK {
                let Some((digest, record)) = records(written, to_u64(now)) else {
                    break;
                };
                written += 1;
                match codec::encode_record(&record) {
                    Ok(value) => values.push(value),
                    Err(error) => {
                        encode_error = Some(error);
                        break 'chunks;
                    }
                }
                digests.push(digest.as_bytes().to_vec());
                states.push(state_of(&record));
                expires.push(to_i64(record.expires_at));
            }
            if digests.is_empty() {
                break;
            }
            // Replaced records leave their state's count.
            for row in txn.query_typed(&sql.jobs.bulk_lock, &[(&digests, Type::BYTEA_ARRAY)])? {
                let state: i16 = row.try_get(0)?;
                if let Some(delta) = usize::try_from(state).ok().and_then(|s| deltas.get_mut(s)) {
                    *delta -= 1;
                }
            }
            for state in &states {
                if let Some(delta) = usize::try_from(*state).ok().and_then(|s| deltas.get_mut(s)) {
                    *delta += 1;
                }
            }
            txn.query_typed(
                &sql.jobs.bulk_write,
                &[
                    (&digests, Type::BYTEA_ARRAY),
                    (&values, Type::BYTEA_ARRAY),
                    (&states, Type::INT2_ARRAY),
                    (&expires, Type::INT8_ARRAY),
                ],
            )?;
        }
        if encode_error.is_some() {
            // Dropping the transaction rolls it back: nothing of the load is kept.
            return Ok((now, 0));
        }
        txn.query_typed(
            &sql.jobs.bulk_count,
            &[
                (&slot, Type::TEXT),
                (&deltas[0], Type::INT8),
                (&deltas[1], Type::INT8),
                (&deltas[2], Type::INT8),
            ],
        )?;
        commit.send(txn)?;
        Ok((now, written))
    });
    if let Some(error) = encode_error {
        return Err(error);
    }
    let (now, written) = result?;
    clock.observe(to_u64(now));
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_in_doubt_only_once_the_commit_was_sent() {
        let lost = || Err::<(), _>(Error::Unavailable("connection closed".into()));
        assert!(matches!(
            in_doubt_once_sent(lost(), true),
            Err(Error::InDoubt(_))
        ));
        assert!(matches!(
            in_doubt_once_sent(lost(), false),
            Err(Error::Unavailable(_))
        ));
        // A server's refusal is a refusal, sent or not: the server said the commit failed.
        let refused = Err::<(), _>(Error::InvalidArgument("refused".into()));
        assert!(matches!(
            in_doubt_once_sent(refused, true),
            Err(Error::InvalidArgument(_))
        ));
        assert!(in_doubt_once_sent(Ok(()), true).is_ok());
    }
}
