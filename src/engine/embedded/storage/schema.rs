//! The store file's layout as redb sees it: the tables, the meta keys, the format version, and
//! the checks an open makes of them (a file of another program, a newer format, a missing
//! version). Byte layouts of the values are in `engine::codec` and `docs/FORMAT.md`.
//!
//! The tables:
//! - `tollgate_records`: digest → encoded finished record;
//! - `tollgate_running`: digest → encoded RUNNING record (a digest is in one of the two);
//! - `tollgate_expiry`: (`expires_at`, kind, id) → (), one entry per record, so expired records are
//!   found by a range scan from the start instead of a full scan;
//! - `tollgate_rates`: counter key → encoded rate state;
//! - `tollgate_meta`: format version, boot epoch, next lease token, clock high-water mark, the
//!   secrets, the log's position, record counts.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::containment::storage;
use crate::engine::codec::{self, EXPIRY_KEY_LEN};
use crate::error::Error;

pub(super) const RECORDS: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("tollgate_records");

pub(super) const RUNNING: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("tollgate_running");

pub(super) const EXPIRY: TableDefinition<&[u8; EXPIRY_KEY_LEN], ()> =
    TableDefinition::new("tollgate_expiry");

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("tollgate_meta");

pub(super) const RATES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("tollgate_rates");

/// The on-disk format this build writes and the newest it reads. Format 2 keeps RUNNING records in
/// `tollgate_running`; a build of format 1 would not look there, so opening a format-1 file marks
/// it as format 2 (nothing else changes: its RUNNING records are found where they are and move on
/// their next write). Format 3 has a write-ahead log beside the file (`<file>.log`), which holds
/// acknowledged changes redb may not have yet: a build of format 2 would ignore them, so a store
/// opened with the log becomes format 3 and stays so.
pub(crate) const FORMAT_VERSION: u64 = 3;

/// The format of a store that has never used the log.
pub(super) const FORMAT_WITHOUT_LOG: u64 = 2;

pub(super) const META_FORMAT: &str = "format_version";

pub(super) const META_EPOCH: &str = "epoch";

pub(super) const META_NEXT_TOKEN: &str = "next_token";

pub(super) const META_CLOCK: &str = "clock_high_water";

/// Records on disk by state: running, completed, failed.
pub(super) const RECORD_COUNT_KEYS: [&str; 3] =
    ["records_running", "records_completed", "records_failed"];

/// 1 when the last session left no batched rate decision unflushed; 0 while a batched session runs.
pub(super) const META_RATE_CLEAN: &str = "rate_clean";

/// The latest time a store was reopened after an unclean batched session (0: never).
pub(super) const META_RATE_RECOVERY: &str = "rate_recovery_at";

/// The two halves of the secret that keys rate counters (drawn when the file is created).
pub(super) const META_RATE_SECRET: [&str; 2] = ["rate_key_secret_0", "rate_key_secret_1"];

/// The two halves of the key of the log's frame MACs (drawn when the store first uses the log).
pub(super) const META_LOG_KEY: [&str; 2] = ["log_key_0", "log_key_1"];

/// Mixed into the clock reading the log key is drawn from, so that it differs from the rate secret
/// drawn in the same instant (the bytes of `log_key`).
pub(super) const LOG_KEY_SALT: u64 = 0x006c_6f67_5f6b_6579;

/// The log position up to which redb holds every change.
pub(super) const META_LOG_APPLIED: &str = "log_applied";

/// The epoch of the session that last moved the applied position (0: the log file is not
/// created yet).
pub(super) const META_LOG_FLOOR: &str = "log_floor";

/// The meta values as found at open (`None`: absent).
pub(super) struct StoredMeta {
    pub(super) format: Option<u64>,
    pub(super) epoch: Option<u64>,
    pub(super) next_token: Option<u64>,
    pub(super) clock: Option<u64>,
    pub(super) rate_clean: Option<u64>,
    pub(super) rate_recovery: Option<u64>,
    pub(super) secret: [Option<u64>; 2],
    pub(super) counts: [Option<u64>; 3],
    pub(super) log_key: [Option<u64>; 2],
    pub(super) log_applied: Option<u64>,
    pub(super) log_floor: Option<u64>,
}

impl StoredMeta {
    /// The log's state, if the store has a log key.
    pub(super) fn log(&self) -> Option<LogState> {
        match self.log_key {
            [Some(low), Some(high)] => Some(LogState {
                key: (low, high),
                applied: self.log_applied.unwrap_or(0),
                floor: self.log_floor.unwrap_or(0),
            }),
            _ => None,
        }
    }
}

impl StoredMeta {
    pub(super) fn read(
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Self, Error> {
        let read = |name: &str| -> Result<Option<u64>, Error> {
            meta.get(name)
                .map_err(storage)?
                .map(|value| codec::decode_meta(name, value.value()))
                .transpose()
        };
        Ok(Self {
            format: read(META_FORMAT)?,
            epoch: read(META_EPOCH)?,
            next_token: read(META_NEXT_TOKEN)?,
            clock: read(META_CLOCK)?,
            rate_clean: read(META_RATE_CLEAN)?,
            rate_recovery: read(META_RATE_RECOVERY)?,
            secret: [read(META_RATE_SECRET[0])?, read(META_RATE_SECRET[1])?],
            counts: [
                read(RECORD_COUNT_KEYS[0])?,
                read(RECORD_COUNT_KEYS[1])?,
                read(RECORD_COUNT_KEYS[2])?,
            ],
            log_key: [read(META_LOG_KEY[0])?, read(META_LOG_KEY[1])?],
            log_applied: read(META_LOG_APPLIED)?,
            log_floor: read(META_LOG_FLOOR)?,
        })
    }
}

/// Refuses a missing format version (in a file with tollgate's tables) or a newer one.
pub(super) fn check_format(format: Option<u64>, has_meta: bool) -> Result<(), Error> {
    match format {
        None if has_meta => Err(Error::Corrupted("the format version is missing".into())),
        Some(found) if found > FORMAT_VERSION => Err(Error::IncompatibleFormat {
            found: u8::try_from(found).unwrap_or(u8::MAX),
            supported: u8::try_from(FORMAT_VERSION).unwrap_or(u8::MAX),
        }),
        _ => Ok(()),
    }
}

/// Whether the file already has tollgate's meta table; refuses a redb database of another program.
pub(super) fn check_tables(txn: &redb::WriteTransaction) -> Result<bool, Error> {
    let mut names = Vec::new();
    for handle in txn.list_tables().map_err(storage)? {
        names.push(handle.name().to_owned());
    }
    let has_meta = names.iter().any(|name| name == META.name());
    let has_multimap = txn
        .list_multimap_tables()
        .map_err(storage)?
        .next()
        .is_some();
    if !has_meta && (!names.is_empty() || has_multimap) {
        return Err(not_tollgate());
    }
    Ok(has_meta)
}

/// The refusal of a redb database without tollgate's tables.
pub(super) fn not_tollgate() -> Error {
    Error::NotAStore("a redb database without tollgate's tables".into())
}

/// Refuses a redb database that another program made (no tollgate meta table).
pub(super) fn require_tollgate_tables(db: &Database) -> Result<(), Error> {
    let txn = db.begin_read().map_err(storage)?;
    let mut names = txn.list_tables().map_err(storage)?;
    if names.any(|handle| handle.name() == META.name()) {
        Ok(())
    } else {
        Err(not_tollgate())
    }
}

/// Where the write-ahead log stands, as the redb file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogState {
    /// The key of the log's frame MACs.
    pub key: (u64, u64),
    /// Every change before this position is in redb.
    pub applied: u64,
    /// The epoch of the session that moved `applied` (0: the log file was never created).
    pub floor: u64,
}
