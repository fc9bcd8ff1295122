//! The redb backend: the only file that names redb's types.
//!
//! The tables (layout in `codec` and `docs/FORMAT.md`):
//! - `tollgate_records`: digest → encoded finished [`Record`];
//! - `tollgate_running`: digest → encoded RUNNING [`Record`] (a digest is in one of the two);
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
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{
    Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle,
};

use super::Location;
use super::tables::{RecordCounts, Tables};
use crate::engine::codec::{self, EXPIRY_KEY_LEN, StoredRate};
use crate::error::{Error, IoKind};
use crate::idempotency::{Digest, Record};
use crate::ratelimit::CounterKeys;

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
const FORMAT_WITHOUT_LOG: u64 = 2;

const META_FORMAT: &str = "format_version";
const META_EPOCH: &str = "epoch";
pub(super) const META_NEXT_TOKEN: &str = "next_token";
pub(super) const META_CLOCK: &str = "clock_high_water";
/// Records on disk by state: running, completed, failed.
pub(super) const RECORD_COUNT_KEYS: [&str; 3] =
    ["records_running", "records_completed", "records_failed"];
/// 1 when the last session left no batched rate decision unflushed; 0 while a batched session runs.
pub(super) const META_RATE_CLEAN: &str = "rate_clean";
/// The latest time a store was reopened after an unclean batched session (0: never).
const META_RATE_RECOVERY: &str = "rate_recovery_at";
/// The two halves of the secret that keys rate counters (drawn when the file is created).
const META_RATE_SECRET: [&str; 2] = ["rate_key_secret_0", "rate_key_secret_1"];
/// The two halves of the key of the log's frame MACs (drawn when the store first uses the log).
const META_LOG_KEY: [&str; 2] = ["log_key_0", "log_key_1"];
/// Mixed into the clock reading the log key is drawn from, so that it differs from the rate secret
/// drawn in the same instant (the bytes of `log_key`).
const LOG_KEY_SALT: u64 = 0x006c_6f67_5f6b_6579;
/// The log position up to which redb holds every change.
pub(super) const META_LOG_APPLIED: &str = "log_applied";
/// The epoch of the session that last moved the applied position (0: the log file is not
/// created yet).
pub(super) const META_LOG_FLOOR: &str = "log_floor";

pub(crate) fn storage<E>(error: E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    Error::storage(error)
}

/// What the first I/O error under `error` says about the storage (redb wraps it in its own
/// errors, which name no source).
pub(crate) fn io_kind(error: &Error) -> IoKind {
    match error {
        Error::StorageFull { .. } => IoKind::Full,
        Error::ReadOnly { .. } => IoKind::ReadOnly,
        Error::Storage(storage) => {
            let inner = storage.inner();
            let redb = inner
                .downcast_ref::<redb::StorageError>()
                .or_else(|| match inner.downcast_ref::<redb::CommitError>() {
                    Some(redb::CommitError::Storage(error)) => Some(error),
                    _ => None,
                })
                .or_else(|| match inner.downcast_ref::<redb::TransactionError>() {
                    Some(redb::TransactionError::Storage(error)) => Some(error),
                    _ => None,
                })
                .or_else(|| match inner.downcast_ref::<redb::TableError>() {
                    Some(redb::TableError::Storage(error)) => Some(error),
                    _ => None,
                })
                .or_else(|| match inner.downcast_ref::<DatabaseError>() {
                    Some(DatabaseError::Storage(error)) => Some(error),
                    _ => None,
                });
            match redb {
                Some(redb::StorageError::Io(io)) => IoKind::of(io),
                Some(_) => IoKind::Other,
                None => inner
                    .downcast_ref::<std::io::Error>()
                    .map_or(IoKind::Other, IoKind::of),
            }
        }
        _ => IoKind::Other,
    }
}

/// Settings that apply when the file is opened.
#[derive(Debug, Clone, Copy)]
// Independent switches, each read in one place: an enum of modes would not say more.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct OpenOptions {
    pub cache_size: usize,
    /// The clock's reading at open, in nanoseconds (clamped to the persisted high-water mark).
    pub now: u64,
    /// Whether this session keeps rate decisions in memory before flushing them.
    pub batched_rates: bool,
    /// Whether every commit also writes redb's allocator state (a second fsync), so that an open
    /// after a crash needs no repair walk.
    pub quick_repair: bool,
    /// Whether the open verifies every page's checksum (redb's integrity check).
    pub verify: bool,
    /// The rate-counter secret for a file that has none yet (`None`: draw one at random). Fixed
    /// only by test support, so that a test image is the same in every process.
    pub secret_if_new: Option<(u64, u64)>,
    /// The open continues this process's session after a write failure (the engine reopening
    /// its own file): its unclean batched session is not a crash to recover rates from, since
    /// memory still holds every counter it changed.
    pub same_session: bool,
    /// Whether this session writes through the write-ahead log (the file becomes format 3).
    pub write_ahead_log: bool,
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
    /// Records on disk by state.
    pub record_counts: RecordCounts,
    /// The write-ahead log's state: `None` for a store that never used one.
    pub log: Option<LogState>,
}

/// An open store file.
/// redb's in-memory backend behind an `Arc`, so that the store can still read its size.
#[derive(Debug)]
struct SharedMemory(std::sync::Arc<redb::backends::InMemoryBackend>);

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

pub(crate) struct Backend {
    db: Db,
    quick_repair: bool,
}

/// The redb handle: writable, or opened read-only (a file or filesystem that cannot be written).
enum Db {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, Error> {
        match self {
            Db::Writable(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
        }
        .map_err(storage)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, Error> {
        match self {
            Db::Writable(db) => db.begin_write().map_err(storage),
            Db::ReadOnly(_) => Err(storage(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                "the store was opened read-only",
            ))),
        }
    }

    fn close(self) -> Result<(), Error> {
        match self {
            Db::Writable(db) => db.close().map_err(storage),
            Db::ReadOnly(db) => db.close().map_err(open_error),
        }
    }
}

impl Backend {
    /// Opens (or creates) the file, checks that it is a tollgate store of a readable format, and
    /// durably bumps the boot epoch.
    pub(crate) fn open(
        location: &Location,
        options: OpenOptions,
    ) -> Result<(Self, Counters), Error> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(options.cache_size);
        builder.set_check_integrity_on_open(options.verify);
        let db = match location {
            Location::File(path) if !path.exists() => {
                return Self::create_atomically(&builder, path, options);
            }
            Location::File(path) => create(&builder, path)?,
            Location::Memory(memory) => guarded(|| {
                builder.create_with_backend(SharedMemory(std::sync::Arc::clone(memory)))
            })?,
            #[cfg(any(test, feature = "test-support"))]
            Location::Simulated(disk) => guarded(|| builder.create_with_backend(disk.clone()))?,
        };
        let counters = match contained(|| Self::initialize(&db, options)) {
            Ok(counters) => counters,
            Err(error) => {
                discard(db);
                return Err(error);
            }
        };
        Ok((
            Self {
                db: Db::Writable(db),
                quick_repair: options.quick_repair,
            },
            counters,
        ))
    }

    /// Opens an existing store for reads only, writing nothing of tollgate's: for a disk with
    /// no space left, or a file or filesystem that cannot be written. The counters are as
    /// found: the epoch is not bumped (a store that cannot write takes no lease over, so no
    /// record of an earlier epoch may be taken over on its word). redb may rewrite its header
    /// in place to recover from an interrupted commit; a file that cannot be written at all is
    /// opened read-only, which redb allows only if no recovery is needed.
    pub(crate) fn open_for_reads(
        location: &Location,
        options: OpenOptions,
    ) -> Result<(Self, Counters), Error> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(options.cache_size);
        let db = match location {
            Location::File(path) if !path.exists() => {
                return Err(storage(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} does not exist", path.display()),
                )));
            }
            Location::File(path) => match guarded(|| Database::builder().open(path)) {
                Ok(db) => Db::Writable(db),
                Err(error) if io_kind(&error) == IoKind::ReadOnly => {
                    Db::ReadOnly(guarded_read_only(&builder, path)?.map_err(open_error)?)
                }
                Err(error) => return Err(error),
            },
            Location::Memory(memory) => Db::Writable(guarded(|| {
                builder.create_with_backend(SharedMemory(std::sync::Arc::clone(memory)))
            })?),
            #[cfg(any(test, feature = "test-support"))]
            Location::Simulated(disk) => {
                Db::Writable(guarded(|| builder.create_with_backend(disk.clone()))?)
            }
        };
        let counters = match contained(|| Self::read_counters(&db, options)) {
            Ok(counters) => counters,
            Err(error) => {
                if let Db::Writable(db) = db {
                    discard(db);
                }
                return Err(error);
            }
        };
        Ok((
            Self {
                db,
                quick_repair: options.quick_repair,
            },
            counters,
        ))
    }

    /// What would refuse an open of the existing store file at `path`, read through redb's
    /// read-only open, which never writes: so that an open about to be refused (a file of
    /// another program, a newer format, a damaged header; with the log state returned, a
    /// missing or foreign log) is refused before anything is written. The log state is `None`
    /// too when the file cannot be opened that way because redb must recover it first (after a
    /// crash), or it has no tables yet: the writable open does, and checks again.
    ///
    /// # Errors
    /// The refusal: [`Error::NotAStore`], [`Error::IncompatibleFormat`], [`Error::Corrupted`],
    /// [`Error::AlreadyOpen`], or the I/O error of reading the file.
    pub(crate) fn check_before_writing(path: &Path) -> Result<Option<LogState>, Error> {
        let db = match guarded_read_only(&redb::Builder::new(), path)? {
            Ok(db) => Db::ReadOnly(db),
            // A file redb must repair first, or that it reads only when writable: the writable
            // open decides.
            Err(DatabaseError::RepairAborted | DatabaseError::TransactionInProgress) => {
                return Ok(None);
            }
            Err(error) => return Err(open_error(error)),
        };
        let found = contained(|| match read_meta(&db)? {
            Some(found) => Ok(found.log()),
            // An empty redb file (tollgate's creation was interrupted after redb's): tollgate
            // makes its tables at the writable open.
            None if is_empty(&db)? => Ok(None),
            None => Err(not_tollgate()),
        });
        if let Db::ReadOnly(db) = db {
            // Dropped inside the containment, as every redb handle of a file that may be damaged.
            if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
                count_contained_panic();
            }
        }
        found
    }

    /// Opens the existing store file at `path` through redb's read-only open, which never
    /// writes (and shares the file with other read-only opens): for `open_read_only`.
    ///
    /// # Errors
    /// [`Error::AlreadyOpen`] while a process has the file open for writing; the refusals of an
    /// open; I/O errors.
    pub(crate) fn open_read_view(
        path: &Path,
        options: OpenOptions,
    ) -> Result<(Self, Counters), Error> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(options.cache_size);
        let db = guarded_read_only(&builder, path)?.map_err(|error| match error {
            DatabaseError::RepairAborted => Error::Corrupted(
                "the file needs the recovery a writable open makes (its last writer \
                     stopped mid-commit): it cannot be read without writing"
                    .into(),
            ),
            other => open_error(other),
        })?;
        let db = Db::ReadOnly(db);
        let counters = contained(|| Self::read_counters(&db, options))?;
        Ok((
            Self {
                db,
                quick_repair: options.quick_repair,
            },
            counters,
        ))
    }

    /// The persisted counters, read without writing (for [`Backend::open_for_reads`]).
    fn read_counters(db: &Db, options: OpenOptions) -> Result<Counters, Error> {
        let found = read_meta(db)?.ok_or_else(not_tollgate)?;
        let [Some(low), Some(high)] = found.secret else {
            return Err(Error::Corrupted(
                "the rate-counter secret is missing".into(),
            ));
        };
        let record_counts = match found.counts {
            [Some(running), Some(completed), Some(failed)] => RecordCounts {
                running,
                completed,
                failed,
            },
            _ => RecordCounts::default(),
        };
        let clock_high_water = found.clock.unwrap_or(0);
        Ok(Counters {
            epoch: found.epoch.unwrap_or(0),
            next_token: found.next_token.unwrap_or(1),
            clock_high_water,
            rate_recovery_at: recovery_at(&found, options, clock_high_water),
            rate_secret: (low, high),
            record_counts,
            log: found.log(),
        })
    }

    /// Creates a new store so that a crash at any point leaves either no file at `path` or a
    /// complete store: the file is made and initialized as `<path>.creating`, then linked to
    /// `path` (which fails if another process created `path` meanwhile), and the directory is
    /// synced. A `.creating` file left by a crash is removed when it is not a complete store.
    fn create_atomically(
        builder: &redb::Builder,
        path: &Path,
        options: OpenOptions,
    ) -> Result<(Self, Counters), Error> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".creating");
        let temporary = std::path::PathBuf::from(temporary);
        let created = Self::create_at(builder, path, &temporary, options);
        if created.is_err() {
            // A refused creation (a full disk, say) leaves nothing behind; the temporary file is
            // this open's own (a leftover of a crash was replaced by it).
            let _ = std::fs::remove_file(&temporary);
        }
        created
    }

    /// [`Backend::create_atomically`] through `temporary`.
    fn create_at(
        builder: &redb::Builder,
        path: &Path,
        temporary: &Path,
        options: OpenOptions,
    ) -> Result<(Self, Counters), Error> {
        let db = match create(builder, temporary) {
            Err(Error::NotAStore(_)) => {
                // An interrupted creation: redb writes its magic number last.
                std::fs::remove_file(temporary).map_err(storage)?;
                create(builder, temporary)?
            }
            other => other?,
        };
        let counters = match contained(|| Self::initialize(&db, options)) {
            Ok(counters) => counters,
            Err(error) => {
                discard(db);
                return Err(error);
            }
        };
        match std::fs::hard_link(temporary, path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                // Someone else created the store first: use theirs.
                discard(db);
                std::fs::remove_file(temporary).map_err(storage)?;
                return Self::open(&Location::File(path.to_owned()), options);
            }
            // A file system without hard links: rename (which would replace a store another
            // process created in the same instant; such file systems get no better).
            Err(_) => {
                std::fs::rename(temporary, path).map_err(storage)?;
                sync_directory(path)?;
                return Ok((
                    Self {
                        db: Db::Writable(db),
                        quick_repair: options.quick_repair,
                    },
                    counters,
                ));
            }
        }
        std::fs::remove_file(temporary).map_err(storage)?;
        sync_directory(path)?;
        Ok((
            Self {
                db: Db::Writable(db),
                quick_repair: options.quick_repair,
            },
            counters,
        ))
    }
}

/// Opens or creates the redb file at `path`.
fn create(builder: &redb::Builder, path: &Path) -> Result<Database, Error> {
    guarded(|| builder.create(path))
}

/// Panics inside redb caught so far by [`guarded`], [`contained`] and [`Backend::write`], in this
/// process (test support reads it to show the containment ran).
static CONTAINED_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many panics inside redb this process has caught and turned into errors.
#[cfg(any(test, feature = "test-support"))]
pub(crate) fn contained_panics() -> u64 {
    CONTAINED_PANICS.load(Ordering::Relaxed)
}

fn count_contained_panic() {
    CONTAINED_PANICS.fetch_add(1, Ordering::Relaxed);
}

/// Runs a redb open; redb documents that opening a file damaged outside redb may panic, and a
/// library must not.
fn guarded(open: impl FnOnce() -> Result<Database, DatabaseError>) -> Result<Database, Error> {
    catch_unwind(AssertUnwindSafe(open))
        .map_err(|_| {
            count_contained_panic();
            Error::Corrupted("the storage engine panicked while opening the file".into())
        })?
        .map_err(open_error)
}

/// Drops a database that failed to open. redb's drop commits, and after redb panicked on damage
/// (a poisoned lock inside it) the drop panics too (found by the unverified `open_corrupt` seeds):
/// contain it like any other redb call.
fn discard(db: Database) {
    if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
        count_contained_panic();
    }
}

/// Runs a read; a panic inside redb (which it documents for damaged files) becomes
/// [`Error::Corrupted`] for this read only.
fn contained<R>(read: impl FnOnce() -> Result<R, Error>) -> Result<R, Error> {
    catch_unwind(AssertUnwindSafe(read)).unwrap_or_else(|_| {
        count_contained_panic();
        Err(Error::Corrupted(
            "the storage engine panicked while reading: the file is damaged".into(),
        ))
    })
}

/// Runs redb's read-only open of `path` (which never writes), containing a panic on a damaged
/// file as [`guarded`] does; redb's own refusal is left to the caller to map.
fn guarded_read_only(
    builder: &redb::Builder,
    path: &Path,
) -> Result<Result<redb::ReadOnlyDatabase, DatabaseError>, Error> {
    catch_unwind(AssertUnwindSafe(|| builder.open_read_only(path))).map_err(|_| {
        count_contained_panic();
        Error::Corrupted("the storage engine panicked while opening the file".into())
    })
}

/// tollgate's meta values, checked for a format this build reads; `None` without a meta table.
fn read_meta(db: &Db) -> Result<Option<StoredMeta>, Error> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(error) => return Err(storage(error)),
    };
    let found = StoredMeta::read(&meta)?;
    check_format(found.format, true)?;
    Ok(Some(found))
}

/// The refusal of a redb database without tollgate's tables.
fn not_tollgate() -> Error {
    Error::NotAStore("a redb database without tollgate's tables".into())
}

/// Whether a database has no table at all.
fn is_empty(db: &Db) -> Result<bool, Error> {
    let txn = db.begin_read()?;
    let no_tables = txn.list_tables().map_err(storage)?.next().is_none();
    let no_multimap = txn
        .list_multimap_tables()
        .map_err(storage)?
        .next()
        .is_none();
    Ok(no_tables && no_multimap)
}

/// Refuses a redb database that another program made (no tollgate meta table).
fn require_tollgate_tables(db: &Database) -> Result<(), Error> {
    let txn = db.begin_read().map_err(storage)?;
    let mut names = txn.list_tables().map_err(storage)?;
    if names.any(|handle| handle.name() == META.name()) {
        Ok(())
    } else {
        Err(not_tollgate())
    }
}

/// Makes a new directory entry durable.
pub(crate) fn sync_directory(path: &Path) -> Result<(), Error> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    std::fs::File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(storage)?;
    #[cfg(not(unix))]
    let _ = directory;
    Ok(())
}

/// A record as listed: its digest, and the record or why it does not decode.
pub(crate) type ListedRecord = (Digest, Result<Record, Error>);

/// Maps redb's open errors to tollgate's.
fn open_error(error: DatabaseError) -> Error {
    match error {
        DatabaseError::DatabaseAlreadyOpen => Error::AlreadyOpen,
        // redb reports a wrong magic number as an I/O error of kind InvalidData.
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            Error::NotAStore(io.to_string())
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => storage(io),
        DatabaseError::Storage(redb::StorageError::Corrupted(message)) => Error::Corrupted(message),
        DatabaseError::Storage(other) => Error::NotAStore(other.to_string()),
        DatabaseError::UpgradeRequired(version) => Error::NotAStore(format!(
            "a redb file of format {version}, which redb 4 cannot open"
        )),
        other => storage(other),
    }
}

/// Whether the file already has tollgate's meta table; refuses a redb database of another program.
fn check_tables(txn: &redb::WriteTransaction) -> Result<bool, Error> {
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

/// The meta values as found at open (`None`: absent).
struct StoredMeta {
    format: Option<u64>,
    epoch: Option<u64>,
    next_token: Option<u64>,
    clock: Option<u64>,
    rate_clean: Option<u64>,
    rate_recovery: Option<u64>,
    secret: [Option<u64>; 2],
    counts: [Option<u64>; 3],
    log_key: [Option<u64>; 2],
    log_applied: Option<u64>,
    log_floor: Option<u64>,
}

impl StoredMeta {
    /// The log's state, if the store has a log key.
    fn log(&self) -> Option<LogState> {
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
    fn read(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Self, Error> {
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
fn check_format(format: Option<u64>, has_meta: bool) -> Result<(), Error> {
    match format {
        None if has_meta => Err(Error::Corrupted("the format version is missing".into())),
        Some(found) if found > FORMAT_VERSION => Err(Error::IncompatibleFormat {
            found: u8::try_from(found).unwrap_or(u8::MAX),
            supported: u8::try_from(FORMAT_VERSION).unwrap_or(u8::MAX),
        }),
        _ => Ok(()),
    }
}

/// The latest reopen after an unclean batched session: now, if the last session was one (and
/// this open does not continue it), else as stored.
fn recovery_at(found: &StoredMeta, options: OpenOptions, clock_high_water: u64) -> Option<u64> {
    if found.rate_clean == Some(0) && !options.same_session {
        Some(options.now.max(clock_high_water))
    } else {
        found.rate_recovery.filter(|at| *at > 0)
    }
}

/// Counts records by state with one scan (for files written before the counts were kept).
fn count_records(txn: &redb::WriteTransaction) -> Result<RecordCounts, Error> {
    let mut counts = [0u64; 3];
    for definition in [RECORDS, RUNNING] {
        let table = txn.open_table(definition).map_err(storage)?;
        for entry in table.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            // An undecodable record is counted nowhere; reading its key reports it.
            if let Ok(record) = codec::decode_record(value.value()) {
                counts[RecordCounts::slot(&record)] += 1;
            }
        }
    }
    Ok(RecordCounts::from_array(counts))
}

impl Backend {
    fn initialize(db: &Database, options: OpenOptions) -> Result<Counters, Error> {
        let txn = db.begin_write().map_err(storage)?;
        let has_meta = check_tables(&txn)?;
        let counters = {
            let mut meta = txn.open_table(META).map_err(storage)?;
            let found = StoredMeta::read(&meta)?;
            check_format(found.format, has_meta)?;
            let clock_high_water = found.clock.unwrap_or(0);
            let rate_recovery_at = recovery_at(&found, options, clock_high_water);
            let rate_secret = match found.secret {
                [Some(low), Some(high)] => (low, high),
                _ => options
                    .secret_if_new
                    .unwrap_or_else(|| CounterKeys::generate_secret(options.now)),
            };
            let record_counts = match found.counts {
                [Some(running), Some(completed), Some(failed)] => RecordCounts {
                    running,
                    completed,
                    failed,
                },
                // The file predates the counts: count once.
                _ => count_records(&txn)?,
            };
            // A store that used the log keeps it (its frames may hold acknowledged changes).
            let log = found.log().or_else(|| {
                options.write_ahead_log.then(|| LogState {
                    key: CounterKeys::generate_secret(options.now ^ LOG_KEY_SALT),
                    applied: 0,
                    floor: 0,
                })
            });
            let counters = Counters {
                epoch: found.epoch.unwrap_or(0).saturating_add(1),
                next_token: found.next_token.unwrap_or(1),
                clock_high_water,
                rate_recovery_at,
                rate_secret,
                record_counts,
                log,
            };
            let format = if log.is_some() {
                FORMAT_VERSION
            } else {
                FORMAT_WITHOUT_LOG
            };
            let mut writes = vec![
                (META_EPOCH, counters.epoch),
                (META_RATE_CLEAN, u64::from(!options.batched_rates)),
                (META_RATE_SECRET[0], rate_secret.0),
                (META_RATE_SECRET[1], rate_secret.1),
                (META_FORMAT, format),
            ];
            if let Some(log) = log {
                writes.extend([
                    (META_LOG_KEY[0], log.key.0),
                    (META_LOG_KEY[1], log.key.1),
                    (META_LOG_APPLIED, log.applied),
                    (META_LOG_FLOOR, log.floor),
                ]);
            }
            writes.extend(RECORD_COUNT_KEYS.into_iter().zip(record_counts.as_array()));
            writes.extend(rate_recovery_at.map(|at| (META_RATE_RECOVERY, at)));
            for (name, value) in writes {
                meta.insert(name, codec::encode_meta(value).as_slice())
                    .map_err(storage)?;
            }
            counters
        };
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(RUNNING).map_err(storage)?;
        txn.open_table(RATES).map_err(storage)?;
        txn.open_table(EXPIRY).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(counters)
    }

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
    fn write_unguarded<R>(
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
