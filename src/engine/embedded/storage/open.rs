//! Opening a store file: create it atomically (a `.creating` file renamed into place) or check
//! it, refuse what is not ours without changing a byte, durably bump the boot epoch, and return
//! the persisted counters; the read-only opens (a read view, the reads-only open of a file that
//! cannot be written).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use redb::{Database, DatabaseError, ReadableTable};

use super::Location;
use super::backend::{Backend, Db, SharedMemory};
use super::containment::{
    contained, count_contained_panic, discard, guarded, guarded_read_only, io_kind, open_error,
    storage,
};
use super::schema::{
    EXPIRY, FORMAT_VERSION, FORMAT_WITHOUT_LOG, LOG_KEY_SALT, LogState, META, META_EPOCH,
    META_FORMAT, META_LOG_APPLIED, META_LOG_FLOOR, META_LOG_KEY, META_RATE_CLEAN,
    META_RATE_RECOVERY, META_RATE_SECRET, RATES, RECORD_COUNT_KEYS, RECORDS, RUNNING, StoredMeta,
    check_format, check_tables, not_tollgate,
};
use super::tables::RecordCounts;
use crate::engine::codec;
use crate::error::{Error, IoKind};
use crate::ratelimit::CounterKeys;

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
    /// How far the stored epoch moves at this open: 1, or a shared store owner's block of
    /// process epochs (`engine::processes`). This open's own epoch is the first of the block.
    pub epoch_block: u64,
}

/// The persisted counters, as found (and bumped) at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counters {
    /// This open's boot epoch (already incremented and durable).
    pub epoch: u64,
    /// The end (exclusive) of the epochs this open may hand out to other processes: the stored
    /// epoch, so that the next open's is above them all.
    pub epoch_end: u64,
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
    pub(super) fn read_counters(db: &Db, options: OpenOptions) -> Result<Counters, Error> {
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
            epoch_end: found.epoch.unwrap_or(0),
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
    pub(super) fn create_atomically(
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
    pub(super) fn create_at(
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
pub(super) fn create(builder: &redb::Builder, path: &Path) -> Result<Database, Error> {
    guarded(|| builder.create(path))
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

/// The latest reopen after an unclean batched session: now, if the last session was one (and
/// this open does not continue it), else as stored.
pub(super) fn recovery_at(
    found: &StoredMeta,
    options: OpenOptions,
    clock_high_water: u64,
) -> Option<u64> {
    if found.rate_clean == Some(0) && !options.same_session {
        Some(options.now.max(clock_high_water))
    } else {
        found.rate_recovery.filter(|at| *at > 0)
    }
}

/// Counts records by state with one scan (for files written before the counts were kept).
pub(super) fn count_records(txn: &redb::WriteTransaction) -> Result<RecordCounts, Error> {
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
    pub(super) fn initialize(db: &Database, options: OpenOptions) -> Result<Counters, Error> {
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
            let stored_epoch = found.epoch.unwrap_or(0);
            let counters = Counters {
                epoch: stored_epoch.saturating_add(1),
                epoch_end: stored_epoch.saturating_add(options.epoch_block.max(1)),
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
                (META_EPOCH, counters.epoch_end),
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
}

/// tollgate's meta values, checked for a format this build reads; `None` without a meta table.
pub(super) fn read_meta(db: &Db) -> Result<Option<StoredMeta>, Error> {
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

/// Whether a database has no table at all.
pub(super) fn is_empty(db: &Db) -> Result<bool, Error> {
    let txn = db.begin_read()?;
    let no_tables = txn.list_tables().map_err(storage)?.next().is_none();
    let no_multimap = txn
        .list_multimap_tables()
        .map_err(storage)?
        .next()
        .is_none();
    Ok(no_tables && no_multimap)
}
