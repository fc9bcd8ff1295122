//! The tables of one write transaction, and every change the writer makes through them.
//!
//! Each method keeps the derived structures in step with the data in the same transaction: the
//! expiry index with records and counters, and the per-state record counts with records. The
//! counts are deltas here; the writer adds them to its totals and saves them with the counters.

use redb::{
    Key, ReadableTable, ReadableTableMetadata, Table, TableDefinition, Value, WriteTransaction,
};

use super::containment::storage;
use super::schema::{
    EXPIRY, META, META_CLOCK, META_LOG_APPLIED, META_LOG_FLOOR, META_NEXT_TOKEN, META_RATE_CLEAN,
    RATES, RECORD_COUNT_KEYS, RECORDS, RUNNING,
};
use crate::engine::Swept;
use crate::engine::codec::{self, EXPIRY_KEY_LEN, KIND_RATE, KIND_RECORD, StoredRate};
use crate::error::Error;
use crate::idempotency::{Digest, Record, RecordBody};

/// Records on disk by state, expired or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecordCounts {
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
}

impl RecordCounts {
    pub(crate) fn as_array(self) -> [u64; 3] {
        [self.running, self.completed, self.failed]
    }

    pub(crate) fn from_array([running, completed, failed]: [u64; 3]) -> Self {
        Self {
            running,
            completed,
            failed,
        }
    }

    /// `self` changed by `deltas` (saturating: counts are statistics, never trusted for safety).
    pub(crate) fn plus(self, deltas: [i64; 3]) -> Self {
        let mut counts = self.as_array();
        for (count, delta) in counts.iter_mut().zip(deltas) {
            *count = count.saturating_add_signed(delta);
        }
        Self::from_array(counts)
    }

    /// Which slot a record counts in.
    pub(crate) fn slot(record: &Record) -> usize {
        match record.body {
            RecordBody::Running { .. } => 0,
            RecordBody::Completed(_) => 1,
            RecordBody::Failed(_) => 2,
        }
    }
}

/// The expiry-index time of `record` (see [`codec::record_index_at`]).
fn index_at(record: &Record) -> u64 {
    codec::record_index_at(record.expires_at, record.record_ttl, record.created_at)
}

/// Whether an index entry at `at` is the one of the record with `head`: at its index time, or at
/// its exact expiry (how files written before the granule index their records).
fn indexed_by(head: &codec::RecordHead, at: u64) -> bool {
    at == codec::record_index_at(head.expires_at, head.record_ttl, head.created_at)
        || at == head.expires_at
}

type RecordTable<'txn> = Table<'txn, &'static [u8; 32], &'static [u8]>;
type ExpiryTable<'txn> = Table<'txn, &'static [u8; EXPIRY_KEY_LEN], ()>;
type MetaTable<'txn> = Table<'txn, &'static str, &'static [u8]>;
type RateTable<'txn> = Table<'txn, &'static [u8; 16], &'static [u8]>;

/// The tables of one write transaction, each opened on first use: redb rewrites the root of every
/// table a transaction opened at its commit, used or not, so a begin that never touches the rate
/// table, or a completion that never touches the index, should not open them (one table fewer
/// per commit was worth 2–7% of a 1-thread begin+complete cycle, see BENCHMARKS).
pub(crate) struct Tables<'txn> {
    txn: &'txn WriteTransaction,
    /// Finished records (and RUNNING ones written before format 2).
    records: Option<RecordTable<'txn>>,
    /// RUNNING records: few at any time, so this tree stays a leaf or two, and a begin writes
    /// there instead of into a random leaf of the big tree.
    running: Option<RecordTable<'txn>>,
    expiry: Option<ExpiryTable<'txn>>,
    meta: Option<MetaTable<'txn>>,
    rates: Option<RateTable<'txn>>,
    /// Writes so far in this transaction (each put, delete or removal counts one).
    pub(super) writes: u64,
    /// Set by [`Tables::roll_back`]: the transaction is aborted instead of committed.
    pub(super) rolled_back: bool,
    pub(super) count_deltas: [i64; 3],
}

/// `slot`'s table, opened from `txn` first if it is not open yet.
fn open<'s, 'txn, K: Key + 'static, V: Value + 'static>(
    slot: &'s mut Option<Table<'txn, K, V>>,
    txn: &'txn WriteTransaction,
    definition: TableDefinition<'static, K, V>,
) -> Result<&'s mut Table<'txn, K, V>, Error> {
    if slot.is_none() {
        *slot = Some(txn.open_table(definition).map_err(storage)?);
    }
    slot.as_mut()
        .ok_or_else(|| Error::Corrupted("a table failed to stay open".into()))
}

impl<'txn> Tables<'txn> {
    /// Tables of `txn`, none open yet.
    pub(super) fn new(txn: &'txn WriteTransaction) -> Self {
        Self {
            txn,
            records: None,
            running: None,
            expiry: None,
            meta: None,
            rates: None,
            writes: 0,
            rolled_back: false,
            count_deltas: [0; 3],
        }
    }

    fn records(&mut self) -> Result<&mut RecordTable<'txn>, Error> {
        open(&mut self.records, self.txn, RECORDS)
    }

    fn running(&mut self) -> Result<&mut RecordTable<'txn>, Error> {
        open(&mut self.running, self.txn, RUNNING)
    }

    /// The running table if `running`, else the records table.
    fn record_table(&mut self, running: bool) -> Result<&mut RecordTable<'txn>, Error> {
        if running {
            self.running()
        } else {
            self.records()
        }
    }

    fn expiry(&mut self) -> Result<&mut ExpiryTable<'txn>, Error> {
        open(&mut self.expiry, self.txn, EXPIRY)
    }

    fn meta(&mut self) -> Result<&mut MetaTable<'txn>, Error> {
        open(&mut self.meta, self.txn, META)
    }

    fn rates(&mut self) -> Result<&mut RateTable<'txn>, Error> {
        open(&mut self.rates, self.txn, RATES)
    }
}

impl Tables<'_> {
    /// Whether anything was written in this transaction.
    pub(crate) fn is_dirty(&self) -> bool {
        self.writes > 0
    }

    /// Writes so far in this transaction: a command that failed after this moved has written.
    pub(crate) fn writes(&self) -> u64 {
        self.writes
    }

    /// Discards every write of this transaction: it is aborted, not committed.
    pub(crate) fn roll_back(&mut self) {
        self.rolled_back = true;
    }

    /// How the per-state record counts changed in this transaction.
    pub(crate) fn count_deltas(&self) -> [i64; 3] {
        self.count_deltas
    }

    /// The record as written so far in this transaction.
    pub(crate) fn record(&mut self, digest: &Digest) -> Result<Option<Record>, Error> {
        let key = digest.as_bytes();
        if let Some(bytes) = self.running()?.get(key).map_err(storage)? {
            return codec::decode_record(bytes.value()).map(Some);
        }
        let value = self.records()?.get(key).map_err(storage)?;
        value
            .map(|bytes| codec::decode_record(bytes.value()))
            .transpose()
    }

    /// Writes `new` in place of `old` (the record as read in this transaction), keeping the expiry
    /// index and the counts in step. The index entry is left alone when the expiry is unchanged.
    pub(crate) fn put_record(
        &mut self,
        digest: &Digest,
        old: Option<&Record>,
        new: &Record,
    ) -> Result<(), Error> {
        let encoded = codec::encode_record(new)?;
        self.writes += 1;
        let indexed_at = index_at(new);
        let same_expiry = old.is_some_and(|old| index_at(old) == indexed_at);
        if let Some(old) = old {
            self.forget(digest, old, !same_expiry)?;
        }
        // A record lives in exactly one of the two tables: the running one while RUNNING, the
        // records table once finished. The insert reports whether `old` was in the same table; if
        // it was not, it is removed from the other.
        let key = digest.as_bytes();
        let running = matches!(new.body, RecordBody::Running { .. });
        let replaced = self
            .record_table(running)?
            .insert(key, encoded.as_slice())
            .map_err(storage)?
            .is_some();
        if old.is_some() && !replaced {
            self.record_table(!running)?.remove(key).map_err(storage)?;
        }
        if !same_expiry {
            self.expiry()?
                .insert(
                    &codec::expiry_key(indexed_at, KIND_RECORD, digest.as_bytes()),
                    (),
                )
                .map_err(storage)?;
        }
        self.count_deltas[RecordCounts::slot(new)] += 1;
        Ok(())
    }

    /// Deletes `old` (the record as read in this transaction) and its index entry.
    pub(crate) fn delete_record(&mut self, digest: &Digest, old: &Record) -> Result<(), Error> {
        self.writes += 1;
        let key = digest.as_bytes();
        if self.running()?.remove(key).map_err(storage)?.is_none() {
            self.records()?.remove(key).map_err(storage)?;
        }
        self.forget(digest, old, true)
    }

    /// Takes `old` out of the counts and, if `unindex`, out of the expiry index.
    fn forget(&mut self, digest: &Digest, old: &Record, unindex: bool) -> Result<(), Error> {
        if unindex {
            self.expiry()?
                .remove(&codec::expiry_key(
                    index_at(old),
                    KIND_RECORD,
                    digest.as_bytes(),
                ))
                .map_err(storage)?;
        }
        self.count_deltas[RecordCounts::slot(old)] -= 1;
        Ok(())
    }

    /// Records on disk, expired or not. O(1): redb keeps the length in the tree header.
    pub(crate) fn record_count(&mut self) -> Result<u64, Error> {
        let running = self.running()?.len().map_err(storage)?;
        Ok(self
            .records()?
            .len()
            .map_err(storage)?
            .saturating_add(running))
    }

    /// Removes up to `limit` index entries that are due at `now` (oldest first), with the expired
    /// records and idle rate counters they point to. An entry whose record or counter has since
    /// moved (its time changed) is stale and only the entry goes.
    pub(crate) fn sweep(&mut self, now: u64, limit: usize) -> Result<Swept, Error> {
        let end = codec::expiry_key(now, u8::MAX, &[u8::MAX; 32]);
        let mut due = Vec::with_capacity(limit.min(4096));
        for entry in self
            .expiry()?
            .range::<&[u8; EXPIRY_KEY_LEN]>(..=&end)
            .map_err(storage)?
            .take(limit)
        {
            let (key, _) = entry.map_err(storage)?;
            due.push(*key.value());
        }
        let mut swept = Swept {
            more: due.len() >= limit,
            ..Swept::default()
        };
        self.writes += due.len() as u64;
        for key in due {
            let (at, kind, id) = codec::decode_expiry_key(&key)?;
            self.expiry()?.remove(&key).map_err(storage)?;
            match kind {
                KIND_RECORD => {
                    // Remove from whichever table holds it (the running one is a leaf or two), then
                    // check what was removed: one B-tree write in the common case. The index is
                    // kept in step, so the record's index time is the entry's; if the value says
                    // otherwise (damaged, or a stale entry), put it back untouched where it was.
                    let mut found = None;
                    for in_running in [true, false] {
                        let table = self.record_table(in_running)?;
                        let removed = table.remove(&id).map_err(storage)?.map(|value| {
                            match codec::decode_record_head(value.value()) {
                                Ok(head) if indexed_by(&head, at) => Ok(head.state),
                                _ => Err(value.value().to_vec()),
                            }
                        });
                        if let Some(Err(bytes)) = &removed {
                            table.insert(&id, bytes.as_slice()).map_err(storage)?;
                        }
                        if removed.is_some() {
                            found = removed;
                            break;
                        }
                    }
                    if let Some(Ok(state)) = found {
                        let slot = usize::try_from(state).unwrap_or(usize::MAX);
                        if let Some(delta) = self.count_deltas.get_mut(slot) {
                            *delta -= 1;
                        }
                        swept.records += 1;
                    }
                }
                KIND_RATE => {
                    let mut counter = [0; 16];
                    counter.copy_from_slice(&id[..16]);
                    if self.rate(&counter)?.is_some_and(|rate| rate.idle_at == at) {
                        self.rates()?.remove(&counter).map_err(storage)?;
                        swept.rate_states += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(swept)
    }

    /// The rate counter as written so far in this transaction.
    pub(crate) fn rate(&mut self, key: &[u8; 16]) -> Result<Option<StoredRate>, Error> {
        let value = self.rates()?.get(key).map_err(storage)?;
        value
            .map(|bytes| codec::decode_rate(bytes.value()))
            .transpose()
    }

    /// Writes a rate counter (`None`: deletes it), keeping the expiry index in step.
    pub(crate) fn put_rate(
        &mut self,
        key: &[u8; 16],
        rate: Option<&StoredRate>,
    ) -> Result<(), Error> {
        self.writes += 1;
        // The expiry index's id field is 32 bytes: a counter key padded with zeros.
        let mut id = [0; 32];
        id[..16].copy_from_slice(key);
        // One B-tree operation for the row (insert returns what it replaced), and none for the
        // index while the counter's idle time stays in its granule (`ratelimit::idle_at`).
        let old = match rate {
            Some(rate) => self
                .rates()?
                .insert(key, codec::encode_rate(rate).as_slice())
                .map_err(storage)?
                .and_then(|bytes| codec::decode_rate(bytes.value()).ok()),
            None => self
                .rates()?
                .remove(key)
                .map_err(storage)?
                .and_then(|bytes| codec::decode_rate(bytes.value()).ok()),
        };
        let (old_at, new_at) = (old.map(|o| o.idle_at), rate.map(|r| r.idle_at));
        if old_at != new_at {
            if let Some(at) = old_at {
                self.expiry()?
                    .remove(&codec::expiry_key(at, KIND_RATE, &id))
                    .map_err(storage)?;
            }
            if let Some(at) = new_at {
                self.expiry()?
                    .insert(&codec::expiry_key(at, KIND_RATE, &id), ())
                    .map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Records that every batched rate decision of this session is on disk.
    pub(crate) fn mark_rates_clean(&mut self) -> Result<(), Error> {
        self.writes += 1;
        self.meta()?
            .insert(META_RATE_CLEAN, codec::encode_meta(1).as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Records that redb holds every change of the log before `applied`, as of the session of
    /// epoch `floor`.
    pub(crate) fn save_log_position(&mut self, applied: u64, floor: u64) -> Result<(), Error> {
        self.writes += 1;
        let meta = self.meta()?;
        for (name, value) in [(META_LOG_APPLIED, applied), (META_LOG_FLOOR, floor)] {
            meta.insert(name, codec::encode_meta(value).as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Persists the lease-token counter, the clock's high-water mark and the record counts.
    pub(crate) fn save_counters(
        &mut self,
        next_token: u64,
        clock_high_water: u64,
        counts: RecordCounts,
    ) -> Result<(), Error> {
        self.writes += 1;
        let values = [
            (META_NEXT_TOKEN, next_token),
            (META_CLOCK, clock_high_water),
        ]
        .into_iter()
        .chain(RECORD_COUNT_KEYS.into_iter().zip(counts.as_array()));
        let meta = self.meta()?;
        for (name, value) in values {
            meta.insert(name, codec::encode_meta(value).as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::embedded::storage::{Backend, Location, OpenOptions, SimDisk};
    use crate::idempotency::StoredResponse;

    const SECOND: u64 = 1_000_000_000;

    /// A store without a log on a fresh simulated disk (for other modules' tests too).
    pub(crate) fn backend() -> Backend {
        let options = OpenOptions {
            cache_size: 1 << 20,
            now: 1_800_000_000 * SECOND,
            batched_rates: false,
            quick_repair: false,
            verify: false,
            secret_if_new: None,
            same_session: false,
            write_ahead_log: false,
            epoch_block: 1,
        };
        Backend::open(&Location::Simulated(SimDisk::new()), options)
            .map(|(backend, _)| backend)
            .expect("open")
    }

    fn running(created_at: u64) -> Record {
        Record {
            fingerprint: [7; 32],
            created_at,
            expires_at: created_at + 130 * SECOND,
            attempts: 1,
            record_ttl: 100 * SECOND,
            body: RecordBody::Running {
                token: 1,
                epoch: 1,
                lease_expires_at: created_at + 30 * SECOND,
                checkpoint: None,
            },
        }
    }

    fn completed(created_at: u64, at: u64) -> Record {
        Record {
            expires_at: at + 100 * SECOND,
            body: RecordBody::Completed(StoredResponse::new(200, b"ok".to_vec())),
            ..running(created_at)
        }
    }

    /// Which tables hold `digest`: (running, records).
    fn placed(tables: &mut Tables<'_>, digest: &Digest) -> (bool, bool) {
        let key = digest.as_bytes();
        let running = tables.running().expect("open");
        let in_running = running.get(key).expect("get").is_some();
        let records = tables.records().expect("open");
        (in_running, records.get(key).expect("get").is_some())
    }

    #[test]
    fn a_record_lives_in_exactly_one_table_and_moves_with_its_state() {
        let backend = backend();
        let digest = Digest([1; 32]);
        let start = 1_800_000_000 * SECOND;
        backend
            .write(|tables| {
                tables.put_record(&digest, None, &running(start))?;
                assert_eq!(placed(tables, &digest), (true, false));
                let done = completed(start, start + 5 * SECOND);
                tables.put_record(&digest, Some(&running(start)), &done)?;
                assert_eq!(placed(tables, &digest), (false, true));
                assert_eq!(tables.record(&digest)?, Some(done.clone()));
                // Begun again after expiry: back to the running table.
                let again = running(start + 500 * SECOND);
                tables.put_record(&digest, Some(&done), &again)?;
                assert_eq!(placed(tables, &digest), (true, false));
                tables.delete_record(&digest, &again)?;
                assert_eq!(placed(tables, &digest), (false, false));
                assert_eq!(tables.record_count()?, 0);
                Ok(())
            })
            .expect("write");
    }

    #[test]
    fn a_format_1_running_record_in_the_records_table_moves_when_written() {
        let backend = backend();
        let digest = Digest([2; 32]);
        let start = 1_800_000_000 * SECOND;
        let old = running(start);
        backend
            .write(|tables| {
                // As a format-1 file holds it: RUNNING, in the records table, indexed at its
                // exact expiry.
                let encoded = codec::encode_record(&old)?;
                tables
                    .records()?
                    .insert(digest.as_bytes(), encoded.as_slice())
                    .map_err(storage)?;
                tables
                    .expiry()?
                    .insert(
                        &codec::expiry_key(old.expires_at, KIND_RECORD, digest.as_bytes()),
                        (),
                    )
                    .map_err(storage)?;
                tables.writes += 1;
                assert_eq!(tables.record(&digest)?, Some(old.clone()));
                let taken = running(start + 40 * SECOND);
                tables.put_record(&digest, Some(&old), &taken)?;
                assert_eq!(placed(tables, &digest), (true, false));
                Ok(())
            })
            .expect("write");
        // The stale exact-time entry is swept without touching the live record; the record's
        // own entry removes it once due.
        backend
            .write(|tables| {
                let swept = tables.sweep(old.expires_at, usize::MAX)?;
                assert_eq!(swept.records, 0);
                assert_eq!(placed(tables, &digest), (true, false));
                let swept = tables.sweep(start + 1_000 * SECOND, usize::MAX)?;
                assert_eq!(swept.records, 1);
                assert_eq!(placed(tables, &digest), (false, false));
                Ok(())
            })
            .expect("write");
    }
}
