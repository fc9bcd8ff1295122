//! The redb backend: the only file that names redb's types.
//!
//! Three tables (layout in `codec` and `docs/FORMAT.md`):
//! - `tollgate_records`: digest → encoded [`Record`];
//! - `tollgate_expiry`: (`expires_at`, kind, id) → (), one entry per record, so expired records are
//!   found by a range scan from the start instead of a full scan;
//! - `tollgate_meta`: format version, boot epoch, next lease token, clock high-water mark.
//!
//! Writes happen only inside [`Backend::write`], which runs a closure over one write transaction
//! with every table open once, then commits with `Durability::Immediate` (one fsync).
//!
//! Error rule: anything redb reports becomes [`Error::Storage`], which the writer treats as fatal
//! (poison); a value that does not decode is [`Error::Corrupted`], which fails only the operation
//! that read it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, TableHandle,
};

use super::codec::{self, EXPIRY_KEY_LEN, KIND_RATE, KIND_RECORD, StoredRate};
use crate::error::{Error, StorageError};
use crate::idempotency::{Digest, Record};
use crate::ratelimit::CounterKeys;

const RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tollgate_records");
const EXPIRY: TableDefinition<&[u8; EXPIRY_KEY_LEN], ()> = TableDefinition::new("tollgate_expiry");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("tollgate_meta");
const RATES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("tollgate_rates");

/// The on-disk format this build writes and the newest it reads.
pub(crate) const FORMAT_VERSION: u64 = 1;

const META_FORMAT: &str = "format_version";
const META_EPOCH: &str = "epoch";
const META_NEXT_TOKEN: &str = "next_token";
const META_CLOCK: &str = "clock_high_water";
/// 1 when the last session left no batched rate decision unflushed; 0 while a batched session runs.
const META_RATE_CLEAN: &str = "rate_clean";
/// The latest time a store was reopened after an unclean batched session (0: never).
const META_RATE_RECOVERY: &str = "rate_recovery_at";
/// The two halves of the secret that keys rate counters (drawn when the file is created).
const META_RATE_SECRET: [&str; 2] = ["rate_key_secret_0", "rate_key_secret_1"];

fn storage<E>(error: E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    Error::Storage(StorageError::new(error))
}

/// Settings that apply when the file is opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenOptions {
    pub cache_size: usize,
    /// The clock's reading at open, in nanoseconds (clamped to the persisted high-water mark).
    pub now: u64,
    /// Whether this session keeps rate decisions in memory before flushing them.
    pub batched_rates: bool,
}

/// The persisted counters, as found (and bumped) at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counters {
    /// This open's boot epoch (already incremented and durable).
    pub epoch: u64,
    /// The next lease token to hand out.
    pub next_token: u64,
    /// The latest time the store has used, in nanoseconds since the Unix epoch.
    pub clock_high_water: u64,
    /// The latest reopen after a batched session ended uncleanly, if any.
    pub rate_recovery_at: Option<u64>,
    /// The secret that keys rate counters.
    pub rate_secret: (u64, u64),
}

/// An open store file.
pub(crate) struct Backend {
    db: Database,
}

impl Backend {
    /// Opens (or creates) the file, checks that it is a tollgate store of a readable format, and
    /// durably bumps the boot epoch.
    pub(crate) fn open(path: &Path, options: OpenOptions) -> Result<(Self, Counters), Error> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(options.cache_size);
        // redb documents that opening a file damaged outside redb may panic; a library must not.
        let opened = catch_unwind(AssertUnwindSafe(|| builder.create(path))).map_err(|_| {
            Error::Corrupted("the storage engine panicked while opening the file".into())
        })?;
        let db = opened.map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen => Error::AlreadyOpen,
            // redb reports a wrong magic number as an I/O error of kind InvalidData.
            DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                Error::NotAStore(io.to_string())
            }
            DatabaseError::Storage(redb::StorageError::Io(io)) => storage(io),
            DatabaseError::Storage(other) => Error::NotAStore(other.to_string()),
            DatabaseError::UpgradeRequired(version) => Error::NotAStore(format!(
                "a redb file of format {version}, which redb 4 cannot open"
            )),
            other => storage(other),
        })?;
        let counters = Self::initialize(&db, options)?;
        Ok((Self { db }, counters))
    }

    fn initialize(db: &Database, options: OpenOptions) -> Result<Counters, Error> {
        let txn = db.begin_write().map_err(storage)?;
        let mut names = Vec::new();
        for handle in txn.list_tables().map_err(storage)? {
            names.push(handle.name().to_owned());
        }
        let has_meta = names.iter().any(|name| name == META.name());
        if !has_meta
            && (!names.is_empty()
                || txn
                    .list_multimap_tables()
                    .map_err(storage)?
                    .next()
                    .is_some())
        {
            return Err(Error::NotAStore(
                "a redb database without tollgate's tables".into(),
            ));
        }
        let counters = {
            let mut meta = txn.open_table(META).map_err(storage)?;
            let read = |name: &str| -> Result<Option<u64>, Error> {
                meta.get(name)
                    .map_err(storage)?
                    .map(|value| codec::decode_meta(name, value.value()))
                    .transpose()
            };
            let format = read(META_FORMAT)?;
            match format {
                None if has_meta => {
                    return Err(Error::Corrupted("the format version is missing".into()));
                }
                Some(found) if found > FORMAT_VERSION => {
                    return Err(Error::IncompatibleFormat {
                        found: u8::try_from(found).unwrap_or(u8::MAX),
                        supported: u8::try_from(FORMAT_VERSION).unwrap_or(u8::MAX),
                    });
                }
                _ => {}
            }
            let clock_high_water = read(META_CLOCK)?.unwrap_or(0);
            let mut rate_recovery_at = read(META_RATE_RECOVERY)?.filter(|at| *at > 0);
            if read(META_RATE_CLEAN)? == Some(0) {
                rate_recovery_at = Some(options.now.max(clock_high_water));
            }
            let stored_secret = (read(META_RATE_SECRET[0])?, read(META_RATE_SECRET[1])?);
            let rate_secret = match stored_secret {
                (Some(low), Some(high)) => (low, high),
                _ => CounterKeys::generate_secret(options.now),
            };
            let counters = Counters {
                epoch: read(META_EPOCH)?.unwrap_or(0).saturating_add(1),
                next_token: read(META_NEXT_TOKEN)?.unwrap_or(1),
                clock_high_water,
                rate_recovery_at,
                rate_secret,
            };
            if stored_secret != (Some(rate_secret.0), Some(rate_secret.1)) {
                for (name, half) in META_RATE_SECRET
                    .into_iter()
                    .zip([rate_secret.0, rate_secret.1])
                {
                    meta.insert(name, codec::encode_meta(half).as_slice())
                        .map_err(storage)?;
                }
            }
            if format.is_none() {
                meta.insert(META_FORMAT, codec::encode_meta(FORMAT_VERSION).as_slice())
                    .map_err(storage)?;
            }
            meta.insert(META_EPOCH, codec::encode_meta(counters.epoch).as_slice())
                .map_err(storage)?;
            if let Some(at) = counters.rate_recovery_at {
                meta.insert(META_RATE_RECOVERY, codec::encode_meta(at).as_slice())
                    .map_err(storage)?;
            }
            let clean = u64::from(!options.batched_rates);
            meta.insert(META_RATE_CLEAN, codec::encode_meta(clean).as_slice())
                .map_err(storage)?;
            counters
        };
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(RATES).map_err(storage)?;
        txn.open_table(EXPIRY).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(counters)
    }

    /// Reads one record from the latest committed state, without the writer.
    pub(crate) fn read_record(&self, digest: &Digest) -> Result<Option<Record>, Error> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(RECORDS).map_err(storage)?;
        let value = table.get(digest.as_bytes()).map_err(storage)?;
        value
            .map(|bytes| codec::decode_record(bytes.value()))
            .transpose()
    }

    /// Reads one rate counter from the latest committed state.
    pub(crate) fn read_rate(&self, key: &[u8; 16]) -> Result<Option<StoredRate>, Error> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(RATES).map_err(storage)?;
        let value = table.get(key).map_err(storage)?;
        value
            .map(|bytes| codec::decode_rate(bytes.value()))
            .transpose()
    }

    /// Runs `work` in one write transaction and commits it durably, if it wrote anything (a batch
    /// that only read costs no fsync). If `work` fails, nothing is committed.
    pub(crate) fn write<R>(
        &self,
        work: impl FnOnce(&mut Tables<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let txn = self.db.begin_write().map_err(storage)?;
        let (result, dirty) = {
            let mut tables = Tables {
                records: txn.open_table(RECORDS).map_err(storage)?,
                expiry: txn.open_table(EXPIRY).map_err(storage)?,
                meta: txn.open_table(META).map_err(storage)?,
                rates: txn.open_table(RATES).map_err(storage)?,
                dirty: false,
            };
            (work(&mut tables), tables.dirty)
        };
        match result {
            Ok(value) if dirty => {
                txn.commit().map_err(storage)?;
                Ok(value)
            }
            Ok(value) => {
                txn.abort().map_err(storage)?;
                Ok(value)
            }
            Err(error) => {
                // The abort's own failure adds nothing to the error being reported.
                let _ = txn.abort();
                Err(error)
            }
        }
    }

    /// Closes the file, reporting what dropping it would ignore.
    pub(crate) fn close(self) -> Result<(), Error> {
        self.db.close().map_err(storage)
    }
}

/// The tables of one write transaction.
pub(crate) struct Tables<'txn> {
    records: Table<'txn, &'static [u8; 32], &'static [u8]>,
    expiry: Table<'txn, &'static [u8; EXPIRY_KEY_LEN], ()>,
    meta: Table<'txn, &'static str, &'static [u8]>,
    rates: Table<'txn, &'static [u8; 16], &'static [u8]>,
    dirty: bool,
}

impl Tables<'_> {
    /// Whether anything was written in this transaction.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The record as written so far in this transaction.
    pub(crate) fn record(&self, digest: &Digest) -> Result<Option<Record>, Error> {
        let value = self.records.get(digest.as_bytes()).map_err(storage)?;
        value
            .map(|bytes| codec::decode_record(bytes.value()))
            .transpose()
    }

    /// Writes `new` in place of `old` (the record as read in this transaction), keeping the expiry
    /// index in step.
    pub(crate) fn put_record(
        &mut self,
        digest: &Digest,
        old: Option<&Record>,
        new: &Record,
    ) -> Result<(), Error> {
        let encoded = codec::encode_record(new)?;
        self.dirty = true;
        if let Some(old) = old {
            self.expiry
                .remove(&codec::expiry_key(
                    old.expires_at,
                    KIND_RECORD,
                    digest.as_bytes(),
                ))
                .map_err(storage)?;
        }
        self.records
            .insert(digest.as_bytes(), encoded.as_slice())
            .map_err(storage)?;
        self.expiry
            .insert(
                &codec::expiry_key(new.expires_at, KIND_RECORD, digest.as_bytes()),
                (),
            )
            .map_err(storage)?;
        Ok(())
    }

    /// Deletes `old` (the record as read in this transaction) and its index entry.
    pub(crate) fn delete_record(&mut self, digest: &Digest, old: &Record) -> Result<(), Error> {
        self.dirty = true;
        self.records.remove(digest.as_bytes()).map_err(storage)?;
        self.expiry
            .remove(&codec::expiry_key(
                old.expires_at,
                KIND_RECORD,
                digest.as_bytes(),
            ))
            .map_err(storage)?;
        Ok(())
    }

    /// Records on disk, expired or not. O(1): redb keeps the length in the tree header.
    pub(crate) fn record_count(&self) -> Result<u64, Error> {
        self.records.len().map_err(storage)
    }

    /// Removes up to `limit` records that expired at or before `now`, oldest first, through the
    /// expiry index. Returns how many were removed.
    pub(crate) fn remove_expired_records(&mut self, now: u64, limit: usize) -> Result<u64, Error> {
        let end = codec::expiry_key(now, u8::MAX, &[u8::MAX; 32]);
        let mut due = Vec::new();
        // Rate-counter entries share the index; look past a bounded number of them.
        let entries = self
            .expiry
            .range::<&[u8; EXPIRY_KEY_LEN]>(..=&end)
            .map_err(storage)?;
        for entry in entries.take(limit.saturating_mul(16)) {
            if due.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(storage)?;
            let key = *key.value();
            if key[8] == KIND_RECORD {
                due.push(key);
            }
        }
        let mut removed = 0;
        self.dirty |= !due.is_empty();
        for key in due {
            let (expires_at, _, id) = codec::decode_expiry_key(&key)?;
            self.expiry.remove(&key).map_err(storage)?;
            let digest = Digest(id);
            // Remove the record only if this index entry is its current one.
            if self
                .record(&digest)?
                .is_some_and(|record| record.expires_at == expires_at)
            {
                self.records.remove(&id).map_err(storage)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The rate counter as written so far in this transaction.
    pub(crate) fn rate(&self, key: &[u8; 16]) -> Result<Option<StoredRate>, Error> {
        let value = self.rates.get(key).map_err(storage)?;
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
        self.dirty = true;
        // The expiry index's id field is 32 bytes: a counter key padded with zeros.
        let mut id = [0; 32];
        id[..16].copy_from_slice(key);
        let old = match self.rates.remove(key).map_err(storage)? {
            Some(bytes) => codec::decode_rate(bytes.value()).ok(),
            None => None,
        };
        if let Some(old) = old {
            self.expiry
                .remove(&codec::expiry_key(old.idle_at, KIND_RATE, &id))
                .map_err(storage)?;
        }
        if let Some(rate) = rate {
            self.rates
                .insert(key, codec::encode_rate(rate).as_slice())
                .map_err(storage)?;
            self.expiry
                .insert(&codec::expiry_key(rate.idle_at, KIND_RATE, &id), ())
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Records that every batched rate decision of this session is on disk.
    pub(crate) fn mark_rates_clean(&mut self) -> Result<(), Error> {
        self.dirty = true;
        self.meta
            .insert(META_RATE_CLEAN, codec::encode_meta(1).as_slice())
            .map_err(storage)?;
        Ok(())
    }

    /// Persists the lease-token counter and the clock's high-water mark.
    pub(crate) fn save_counters(
        &mut self,
        next_token: u64,
        clock_high_water: u64,
    ) -> Result<(), Error> {
        self.dirty = true;
        self.meta
            .insert(META_NEXT_TOKEN, codec::encode_meta(next_token).as_slice())
            .map_err(storage)?;
        self.meta
            .insert(META_CLOCK, codec::encode_meta(clock_high_water).as_slice())
            .map_err(storage)?;
        Ok(())
    }
}
