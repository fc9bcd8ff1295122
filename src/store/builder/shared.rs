//! The builder's opener for a store file shared by the processes of a host.

use std::path::Path;

use super::StoreBuilder;
use crate::error::Result;
use crate::store::Store;

impl StoreBuilder {
    /// Opens the store at `path` shared by every process of this host that opens it this way:
    /// gunicorn or uvicorn workers, a server run as several processes, the old and the new
    /// process of a rolling restart. They share one store with the same API and the same
    /// semantics as a store in one process: a retry that lands on another worker replays, a key
    /// runs in one process at a time, rate limits count every process's requests, all or
    /// nothing.
    ///
    /// The first process to open the file owns it (redb's file lock decides) and serves the
    /// others on a Unix socket beside it, `<path>.sock` (mode 0600; only processes of the same
    /// user are admitted). Each other process is a client: its operations go to the owner, one
    /// socket round trip each, except replays of finished records it has seen, which its replay
    /// cache answers in-process. Leases belong to processes: a process that exits or dies frees
    /// its leases at once (the next `begin` of such a key is [`Lease::recovered`]); a live
    /// process's leases are never taken over before they expire. When the owner exits or dies,
    /// a client takes the file over at once (recovering it from its log, as any open does) and
    /// the others reconnect to it; a call in flight at that moment is sent again if nothing
    /// happened, or answered with [`Error::InDoubt`](crate::Error::InDoubt) if a change's
    /// outcome is unknown.
    ///
    /// Linux only (the socket's peer is checked with `SO_PEERCRED`). A file opened with
    /// [`StoreBuilder::open`] is not shared: `open_shared` in another process waits for it to
    /// close (up to 10 s) and then gets [`Error::Unavailable`](crate::Error::Unavailable).
    ///
    /// ```
    /// use tollgate::Store;
    /// use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
    ///
    /// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
    /// let path = dir.path().join("shared.tollgate");
    /// let worker_1 = Store::builder().open_shared(&path)?; // owns the file
    /// let worker_2 = Store::builder().open_shared(&path)?; // a client of worker 1
    /// let (key, request) = (IdempotencyKey::new("user:1", "order-1")?, Fingerprint::of(b"pay"));
    /// if let Begin::Acquired(lease) = worker_1.begin(&key, &request)? {
    ///     lease.complete(StoredResponse::new(201, b"paid".to_vec()))?;
    /// }
    /// assert!(matches!(worker_2.begin(&key, &request)?, Begin::Replay(_)));
    /// worker_2.close()?;
    /// worker_1.close()?;
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// [`Lease::recovered`]: crate::idempotency::Lease::recovered
    ///
    /// # Errors
    /// - As for [`StoreBuilder::open`], except [`Error::AlreadyOpen`](crate::Error::AlreadyOpen):
    ///   a file another process owns is joined as its client.
    /// - [`Error::InvalidArgument`](crate::Error::InvalidArgument) if the socket's path would be
    ///   104 bytes or longer (the limit of a Unix socket's name), or off Linux.
    /// - [`Error::Unavailable`](crate::Error::Unavailable) if the file is held by a process that
    ///   does not answer on its socket within 10 s.
    pub fn open_shared(self, path: impl AsRef<Path>) -> Result<Store> {
        Store::open_shared_file(&self, path.as_ref())
    }
}
