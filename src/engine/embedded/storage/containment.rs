//! redb's failures as tollgate's: errors mapped to typed ones ([`storage`], [`io_kind`],
//! `open_error`), and panics contained. redb documents that a file damaged outside redb may make
//! it panic; a library must not, so every open and read of a file runs under [`guarded`] or
//! [`contained`] and a panic becomes [`Error::Corrupted`] (counted, for test support).
//!
//! Error rule: anything redb reports becomes [`Error::Storage`], which the writer treats as fatal
//! (poison); a value that does not decode is [`Error::Corrupted`], which fails only the operation
//! that read it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, DatabaseError};

use crate::error::{Error, IoKind};

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

/// Maps redb's open errors to tollgate's.
pub(super) fn open_error(error: DatabaseError) -> Error {
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

/// Panics inside redb caught so far by [`guarded`], [`contained`] and `Backend::write`, in this
/// process (test support reads it to show the containment ran).
pub(super) static CONTAINED_PANICS: AtomicU64 = AtomicU64::new(0);

/// How many panics inside redb this process has caught and turned into errors.
#[cfg(any(test, feature = "test-support"))]
pub(crate) fn contained_panics() -> u64 {
    CONTAINED_PANICS.load(Ordering::Relaxed)
}

pub(super) fn count_contained_panic() {
    CONTAINED_PANICS.fetch_add(1, Ordering::Relaxed);
}

/// Runs a redb open; redb documents that opening a file damaged outside redb may panic, and a
/// library must not.
pub(super) fn guarded(
    open: impl FnOnce() -> Result<Database, DatabaseError>,
) -> Result<Database, Error> {
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
pub(super) fn discard(db: Database) {
    if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
        count_contained_panic();
    }
}

/// Runs a read; a panic inside redb (which it documents for damaged files) becomes
/// [`Error::Corrupted`] for this read only.
pub(super) fn contained<R>(read: impl FnOnce() -> Result<R, Error>) -> Result<R, Error> {
    catch_unwind(AssertUnwindSafe(read)).unwrap_or_else(|_| {
        count_contained_panic();
        Err(Error::Corrupted(
            "the storage engine panicked while reading: the file is damaged".into(),
        ))
    })
}

/// Runs redb's read-only open of `path` (which never writes), containing a panic on a damaged
/// file as [`guarded`] does; redb's own refusal is left to the caller to map.
pub(super) fn guarded_read_only(
    builder: &redb::Builder,
    path: &Path,
) -> Result<Result<redb::ReadOnlyDatabase, DatabaseError>, Error> {
    catch_unwind(AssertUnwindSafe(|| builder.open_read_only(path))).map_err(|_| {
        count_contained_panic();
        Error::Corrupted("the storage engine panicked while opening the file".into())
    })
}
