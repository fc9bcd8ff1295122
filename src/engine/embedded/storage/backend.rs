//! The open redb file: reads of the latest committed state (never blocking the writer), the
//! write transaction every change runs in ([`Backend::write`]: a closure over every table open
//! once, committed with `Durability::Immediate`, one fsync), counts, listing, and the offline
//! operations on a closed file (integrity check, reclaiming space).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTableMetadata};

use super::containment::{contained, count_contained_panic, guarded, open_error, storage};
use super::schema::{RATES, RECORDS, RUNNING, require_tollgate_tables};
use super::tables::Tables;
use crate::engine::codec::{self, StoredRate};
use crate::error::Error;
use crate::idempotency::{Digest, Record};

/// redb's in-memory backend behind an `Arc`, so that the store can still read its size.
#[derive(Debug)]
pub(super) struct SharedMemory(pub(super) std::sync::Arc<redb::backends::InMemoryBackend>);

impl redb::StorageBackend for SharedMemory {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

/// An open store file.
pub(crate) struct Backend {
    pub(super) db: Db,
    pub(super) quick_repair: bool,
}

/// The redb handle: writable, or opened read-only (a file or filesystem that cannot be written).
pub(super) enum Db {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

impl Db {
    pub(super) fn begin_read(&self) -> Result<redb::ReadTransaction, Error> {
        match self {
            Db::Writable(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
        .map_err(storage)
    }

    pub(super) fn begin_write(&self) -> Result<redb::WriteTransaction, Error> {
        match self {
            Db::Writable(db) => db.begin_write().map_err(storage),
            Db::ReadOnly(_) => Err(storage(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                "the store was opened read-only",
            ))),
        }
    }

    pub(super) fn close(self) -> Result<(), Error> {
        match self {
            Db::Writable(db) => db.close().map_err(storage),
            Db::ReadOnly(db) => db.close().map_err(open_error),
        }
    }
}

/// A record as listed: its digest, and the record or why it does not decode.
pub(crate) type ListedRecord = (Digest, Result<Record, Error>);

impl Backend {
    /// Reads one record from the latest committed state, without the writer.
    pub(crate) fn read_record(&self, digest: &Digest) -> Result<Option<Record>, Error> {
        contained(|| {
            // Finished records first: replays are what reads are for.
            let txn = self.db.begin_read()?;
            for definition in [RECORDS, RUNNING] {
                let table = txn.open_table(definition).map_err(storage)?;
                if let Some(bytes) = table.get(digest.as_bytes()).map_err(storage)? {
                    return codec::decode_record(bytes.value()).map(Some);
                }
            }
            Ok(None)
        })
    }

    /// Reads one rate counter from the latest committed state.
    pub(crate) fn read_rate(&self, key: &[u8; 16]) -> Result<Option<StoredRate>, Error> {
        contained(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(RATES).map_err(storage)?;
            let value = table.get(key).map_err(storage)?;
            value
                .map(|bytes| codec::decode_rate(bytes.value()))
                .transpose()
        })
    }

    /// Runs `work` in one write transaction and commits it durably, if it wrote anything (a batch
    /// that only read costs no fsync). If `work` fails, or rolled the transaction back
    /// ([`Tables::roll_back`]), nothing is committed. A panic inside redb
    /// (which it documents for damaged files) becomes [`Error::Storage`], which poisons the store.
    pub(crate) fn write<R>(
        &self,
        work: impl FnOnce(&mut Tables<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        catch_unwind(AssertUnwindSafe(|| self.write_unguarded(work))).unwrap_or_else(|_| {
            count_contained_panic();
            Err(storage(std::io::Error::other(
                "the storage engine panicked while writing: the file is damaged",
            )))
        })
    }

    /// [`Backend::write`] without the panic guard.
    pub(super) fn write_unguarded<R>(
        &self,
        work: impl FnOnce(&mut Tables<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut txn = self.db.begin_write()?;
        if self.quick_repair {
            txn.set_quick_repair(true);
        }
        let (result, dirty) = {
            let mut tables = Tables::new(&txn);
            let result = work(&mut tables);
            (result, tables.is_dirty() && !tables.rolled_back)
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

    /// Records on disk, expired or not. O(1).
    pub(crate) fn record_count(&self) -> Result<u64, Error> {
        contained(|| {
            let txn = self.db.begin_read()?;
            let mut total = 0u64;
            for definition in [RECORDS, RUNNING] {
                let table = txn.open_table(definition).map_err(storage)?;
                total = total.saturating_add(table.len().map_err(storage)?);
            }
            Ok(total)
        })
    }

    /// Rate counters on disk. O(1).
    pub(crate) fn rate_count(&self) -> Result<u64, Error> {
        contained(|| {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(RATES).map_err(storage)?;
            table.len().map_err(storage)
        })
    }

    /// Rewrites the file of a closed store so that it holds only live pages, and truncates it.
    /// Returns the file's size before and after.
    pub(crate) fn reclaim(path: &Path) -> Result<(u64, u64), Error> {
        let size = |path: &Path| {
            std::fs::metadata(path)
                .map(|meta| meta.len())
                .map_err(storage)
        };
        let before = size(path)?;
        let mut db = guarded(|| Database::open(path))?;
        require_tollgate_tables(&db)?;
        // compact() moves pages towards the start in steps; repeat until it finds nothing to do.
        while contained(|| db.compact().map_err(storage))? {}
        db.close().map_err(storage)?;
        Ok((before, size(path)?))
    }

    /// Runs redb's integrity check on the file of a closed store.
    pub(crate) fn check_integrity(path: &Path) -> Result<bool, Error> {
        if !path.exists() {
            return Err(storage(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            )));
        }
        let mut db = guarded(|| Database::open(path))?;
        require_tollgate_tables(&db)?;
        let intact = contained(|| db.check_integrity().map_err(open_error))?;
        contained(|| db.close().map_err(storage))?;
        Ok(intact)
    }

    /// Up to `limit` records in digest order, starting after `after`.
    pub(crate) fn list_records(
        &self,
        after: Option<&Digest>,
        limit: usize,
    ) -> Result<Vec<ListedRecord>, Error> {
        contained(|| {
            // Up to `limit` from each table, merged in digest order (a digest is in one of them).
            let txn = self.db.begin_read()?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for definition in [RECORDS, RUNNING] {
                let table = txn.open_table(definition).map_err(storage)?;
                let range = match after {
                    Some(after) => table.range::<&[u8; 32]>((
                        std::ops::Bound::Excluded(after.as_bytes()),
                        std::ops::Bound::Unbounded,
                    )),
                    None => table.range::<&[u8; 32]>(..),
                }
                .map_err(storage)?;
                for entry in range.take(limit) {
                    let (key, value) = entry.map_err(storage)?;
                    out.push((Digest(*key.value()), codec::decode_record(value.value())));
                }
            }
            out.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.truncate(limit);
            Ok(out)
        })
    }

    /// Closes the file, reporting what dropping it would ignore.
    pub(crate) fn close(self) -> Result<(), Error> {
        contained(|| self.db.close())
    }
}
