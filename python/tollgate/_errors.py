"""tollgate's exceptions: one class per kind of failure, all under :class:`TollgateError`.

The native module raises these (it imports this module once); the middlewares catch them to
answer HTTP clients without internals.
"""

from __future__ import annotations


class TollgateError(Exception):
    """Base class of every error tollgate raises."""

    #: Whether a retry later can succeed (the database or Redis comes back, the disk gets space).
    #: The middlewares answer these 503 with ``Retry-After``; the others 500.
    temporary = False


class InvalidArgument(TollgateError, ValueError):
    """An argument is out of range: a bad idempotency key, an empty limit name, a zero quota,
    a cost larger than a limit allows, a response too large to store."""


class ResponseTooLarge(InvalidArgument):
    """A response or checkpoint is over the store's ``max_response_bytes``. Nothing was written;
    the lease is still held and can be resolved another way (``release()``, a smaller ``fail``)."""


class CostTooLarge(InvalidArgument):
    """A rate check's cost is larger than the limit's burst: it could never be allowed."""


class Closed(TollgateError):
    """The store was closed (``store.close()``, or the ``with`` block ended)."""


class LeaseLost(TollgateError):
    """The lease no longer owns its record: another request took it over after the lease expired
    or its process ended. The work done under it must not be published."""


class AlreadyOpen(TollgateError):
    """Another store holds this file (opened with ``shared=False``), or another live store uses
    this PostgreSQL node id. Open the file with ``Store.open(path)`` (shared, the default) in
    every process, or give each node its own ``node_id``."""


class Superseded(AlreadyOpen):
    """Another store opened this store's PostgreSQL ``node_id`` since it opened: close this one."""


class Unavailable(TollgateError):
    """The database, Redis or the store's owner process could not be reached; nothing changed.
    Retry later."""

    temporary = True


class InDoubt(TollgateError):
    """A change was sent but its outcome is unknown (the connection broke during the commit).
    Retrying is safe: the store's rules make a repeated change harmless."""

    temporary = True


class StorageFull(TollgateError):
    """No space is left for the store's file: writes are refused until space is freed (reads go
    on)."""

    temporary = True


class CapacityExceeded(TollgateError):
    """The store holds ``max_records`` records, none expired; nothing is evicted. Retry later."""

    temporary = True


class ReadOnly(TollgateError):
    """The store's file cannot be written (read-only file system or permissions), or the store
    was opened read-only: replays and reads answer, writes are refused."""

    temporary = True


class StorageError(TollgateError):
    """An I/O error on the store's file, or writes refused after one until the store reopens its
    file by itself."""

    temporary = True


class Corrupted(TollgateError):
    """Stored data cannot be decoded, or the file is not a tollgate store."""


class IncompatibleFormat(TollgateError):
    """The file or schema was written by a newer tollgate."""


class InternalError(TollgateError):
    """A broken internal rule: a bug in tollgate, to be reported."""


__all__ = [
    "TollgateError",
    "InvalidArgument",
    "ResponseTooLarge",
    "CostTooLarge",
    "Closed",
    "LeaseLost",
    "AlreadyOpen",
    "Superseded",
    "Unavailable",
    "InDoubt",
    "StorageFull",
    "CapacityExceeded",
    "ReadOnly",
    "StorageError",
    "Corrupted",
    "IncompatibleFormat",
    "InternalError",
]
