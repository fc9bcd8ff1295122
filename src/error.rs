//! The crate's error type.
//!
//! One `#[non_exhaustive]` enum for everything a store operation can report. Every message says what
//! happened and, where there is something to do, what to do. Storage failures keep their cause
//! reachable through [`std::error::Error::source`] without exposing the engine's types.
//!
//! An error either shows a cause in its message or returns it as its `source`, never both, so a
//! reporter that walks the chain (`anyhow`'s `{:#}`, `tracing`'s error fields) prints each message
//! once.

use std::fmt;

use crate::idempotency::Lease;

/// A `Result` with tollgate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a tollgate operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lease no longer owns its record: another request took the record over (its lease had
    /// expired, or its process had restarted), or the record was removed. The work this lease did
    /// must not be published; the new owner decides the outcome.
    #[error("the lease was lost: another owner took over the record, or it was removed")]
    LeaseLost,

    /// A response (or checkpoint) is larger than the store's `max_response_bytes`. Nothing was
    /// written and the record is still RUNNING; when this came from [`Lease::complete`] or
    /// [`Lease::fail`], the lease is handed back in `lease` (take it with [`Error::into_lease`]) so
    /// it can still be resolved, for example with a smaller error response or a release.
    #[error(
        "the response is {size} bytes, over the store's limit of {limit} bytes; nothing was written"
    )]
    ResponseTooLarge {
        /// Size of the refused response, as counted by [`StoredResponse::size`](crate::idempotency::StoredResponse::size).
        size: usize,
        /// The configured `max_response_bytes`.
        limit: usize,
        /// The lease, given back so that the record can still be resolved.
        lease: Option<Box<Lease>>,
    },

    /// The store holds `max_records` records and none of them has expired. Nothing is ever evicted
    /// to make room: retry later, or raise the limit.
    #[error(
        "the store is full ({limit} records); nothing is evicted: retry later or raise max_records"
    )]
    CapacityExceeded {
        /// The configured `max_records`.
        limit: u64,
    },

    /// A rate check's cost is larger than the limit's burst (or window limit): it could never be
    /// allowed, so it is refused as a programming error rather than denied forever.
    #[error("a cost of {cost} can never be allowed by a limit of {limit}")]
    CostTooLarge {
        /// The requested cost.
        cost: u32,
        /// The limit's burst or window limit.
        limit: u32,
    },

    /// The idempotency key or its scope is not valid. The reason is in the message (it has no
    /// further `source`).
    #[error("invalid idempotency key: {0}")]
    InvalidKey(KeyError),

    /// A configuration value or argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An earlier write failed with an I/O error (or the thread applying writes panicked), so
    /// the store reads its state back from the file. Writes are refused with this error until
    /// the file opens again for writing, which the embedded store tries by itself at the next
    /// write (at most once a second); reads go on answering from the last committed state while
    /// the file can be read ([`Store::health`](crate::Store::health) says which).
    #[error("the store's writes are refused after an I/O error; it reopens its file by itself")]
    Poisoned,

    /// There is no space left for the store's file (`ENOSPC`, or a disk quota), so the change was
    /// not made. If the disk filled during a commit, the commit's changes may or may not have
    /// reached the file: the store reads its state back from it, and a retry is safe. Reads go on
    /// answering; writes resume by themselves once space is freed (the store tries again at the
    /// next write, at most once a second).
    #[error(
        "no space left for the store at {}: writes are refused until space is freed, reads go on",
        path.display()
    )]
    StorageFull {
        /// The store's file (a description such as `(in memory)` for stores without one).
        path: std::path::PathBuf,
    },

    /// The store's file, or its filesystem, cannot be written (it is read-only, or permissions
    /// forbid writing), so the store opened for reads only: replays and reads answer, every
    /// write is refused with this error. Writes resume by themselves if the file becomes
    /// writable (the store tries again at the next write, at most once a second).
    #[error("the store at {} cannot be written ({reason}): reads go on, writes are refused", path.display())]
    ReadOnly {
        /// The store's file.
        path: std::path::PathBuf,
        /// What the operating system said.
        reason: String,
    },

    /// The store was closed (by [`Store::close`](crate::Store::close)); this handle or lease outlived it.
    #[error("the store is closed")]
    Closed,

    /// The file was written by a newer tollgate whose on-disk format this version cannot read.
    /// Nothing was changed in the file.
    #[error(
        "the store file has format version {found}; this tollgate reads up to version {supported}"
    )]
    IncompatibleFormat {
        /// The version found in the file.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },

    /// The file is a database of some other program, or not a database at all. Nothing was changed.
    #[error("not a tollgate store: {0}")]
    NotAStore(String),

    /// Another process (or another `Store` in this process) has the file open; on PostgreSQL,
    /// a live store already runs with this `node_id` on this schema.
    #[error(
        "the store is already open: another process or Store has the file, or runs with this node_id on this PostgreSQL schema"
    )]
    AlreadyOpen,

    /// Another store opened this store's `node_id` on its PostgreSQL schema since this one
    /// opened (a second process with the same id): this store may not take leases as that node
    /// any more, or the other's restart would free them under it. Close it; give every live
    /// store its own id.
    #[error("another store opened this node_id since this one did: close this store")]
    Superseded,

    /// The database could not be reached, or did not answer in time (it is down, restarting,
    /// failing over, or overloaded). Nothing was changed: retry later. The store reconnects by
    /// itself.
    #[error("the database is unavailable; nothing was changed, retry: {0}")]
    Unavailable(String),

    /// The connection failed while a change's commit was on its way (or, on the embedded
    /// engine, the file's write or sync failed during its commit), so whether it was
    /// committed is unknown. Retrying is safe: a `begin` of the same key answers from whatever
    /// was stored (a replay, the lease in flight until it expires, or a new lease).
    #[error("the change may or may not have been committed (its commit failed half-way): {0}")]
    InDoubt(String),

    /// A value read from disk could not be decoded. The file was damaged outside tollgate, or by a
    /// bug; other records are unaffected.
    #[error("corrupted store data: {0}")]
    Corrupted(String),

    /// An internal rule of tollgate did not hold (for example, a PostgreSQL batch met a row it
    /// had not locked): a bug. The operation was not applied; retrying is safe but may meet the
    /// same bug. Please report it with the message.
    #[error(
        "internal error in tollgate (a bug, please report it); the operation was not applied: {0}"
    )]
    Internal(String),

    /// The storage engine failed. The message includes the engine's own (for example the I/O
    /// error); whatever caused *that* is in [`source`](std::error::Error::source).
    #[error(transparent)]
    Storage(StorageError),
}

impl Error {
    /// A storage error carrying `cause` (an I/O error, the engine's own, a thread that could not
    /// start).
    pub(crate) fn storage(
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Error {
        Error::Storage(StorageError::new(cause))
    }
}

impl From<KeyError> for Error {
    fn from(error: KeyError) -> Self {
        Error::InvalidKey(error)
    }
}

impl Error {
    /// The lease handed back by a refused [`Lease::complete`] or [`Lease::fail`], if this error
    /// carries one.
    pub fn into_lease(self) -> Option<Lease> {
        match self {
            Error::ResponseTooLarge { lease, .. } => lease.map(|boxed| *boxed),
            _ => None,
        }
    }
}

/// An error of the storage engine, kept opaque so that the engine can change without changing
/// tollgate's API. It displays as `storage error: ` and the engine's message; its `source()` is
/// whatever the engine's error names as its own cause.
pub struct StorageError {
    inner: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl StorageError {
    /// The engine's error, owned.
    pub(crate) fn into_inner(self) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.inner
    }

    /// The engine's error itself.
    pub(crate) fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.inner.as_ref()
    }

    pub(crate) fn new(
        inner: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            inner: inner.into(),
        }
    }
}

impl fmt::Debug for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage error: {}", self.inner)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The engine's error itself is in the message; its cause, if any, comes next.
        self.inner.source()
    }
}

/// What an I/O error says about the storage under a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoKind {
    /// No space left (`ENOSPC`), or over a disk quota (`EDQUOT`).
    Full,
    /// A read-only filesystem (`EROFS`), or writing is not permitted (`EACCES`, `EPERM`).
    ReadOnly,
    /// Any other failure.
    Other,
}

impl IoKind {
    pub(crate) fn of(io: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match io.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => IoKind::Full,
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => IoKind::ReadOnly,
            _ => IoKind::Other,
        }
    }
}

/// Why a key or scope was refused by [`IdempotencyKey::new`](crate::idempotency::IdempotencyKey::new).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is the empty string.
    #[error("the key is empty; it must be 1 to 255 visible ASCII characters")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`](crate::idempotency::MAX_KEY_LEN).
    #[error("the key is {len} bytes long; at most 255 are allowed")]
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The key holds a character outside visible ASCII (`!` to `~`): a space, a control character
    /// or anything non-ASCII.
    #[error("the key has a character that is not visible ASCII at byte {position}")]
    InvalidCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
    /// The scope is longer than [`MAX_SCOPE_LEN`](crate::idempotency::MAX_SCOPE_LEN) bytes.
    #[error("the scope is {len} bytes long; at most 255 are allowed")]
    ScopeTooLong {
        /// Its length in bytes.
        len: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message of `error`'s chain, outermost first.
    fn chain(error: &dyn std::error::Error) -> Vec<String> {
        let mut messages = vec![error.to_string()];
        let mut next = error.source();
        while let Some(cause) = next {
            messages.push(cause.to_string());
            next = cause.source();
        }
        messages
    }

    #[test]
    fn a_storage_error_chain_prints_the_io_message_once() {
        let io = std::io::Error::other("No space left on device");
        let error = Error::Storage(StorageError::new(io));
        let printed = chain(&error).join(": ");
        assert_eq!(printed, "storage error: No space left on device");
    }

    #[test]
    fn a_wrapped_cause_of_the_engine_error_comes_next_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("commit failed")]
        struct Engine(#[source] std::io::Error);
        let error = Error::Storage(StorageError::new(Engine(std::io::Error::other(
            "disk gone",
        ))));
        assert_eq!(chain(&error), ["storage error: commit failed", "disk gone"]);
    }

    #[test]
    fn an_invalid_key_chain_prints_its_reason_once() {
        let error = Error::from(KeyError::Empty);
        let printed = chain(&error).join(": ");
        assert_eq!(printed.matches(&KeyError::Empty.to_string()).count(), 1);
    }
}
