"""tollgate: durable idempotency records and rate limits for Python web services.

One store holds both: ``Store.open(path)`` (a file shared by every worker process of the host),
``Store.in_memory()`` or ``Store.open_postgres(conninfo)``, with rate counters optionally on
Redis (``rate_counters_redis=``). Requests run once under an ``Idempotency-Key``
(``store.begin``, a fenced ``Lease``, a ``Replay`` of the stored response), and rate limits are
charged all-or-nothing (``store.check_all``). Every answer is durable before it returns; the
store survives crashes and restarts.

The ASGI middlewares are in :mod:`tollgate.asgi`, the WSGI ones in :mod:`tollgate.wsgi`.

The engine is tollgate's Rust crate; every call that may wait for a disk or a server releases
the GIL.
"""

from __future__ import annotations

from ._errors import (
    AlreadyOpen,
    CapacityExceeded,
    Closed,
    Corrupted,
    CostTooLarge,
    IncompatibleFormat,
    InDoubt,
    InternalError,
    InvalidArgument,
    LeaseLost,
    ReadOnly,
    ResponseTooLarge,
    StorageError,
    StorageFull,
    Superseded,
    TollgateError,
    Unavailable,
)
from ._native import (
    Acquired,
    Decision,
    InFlight,
    Lease,
    Limit,
    ManualClock,
    Mismatch,
    Quota,
    Replay,
    Stats,
    Store,
    __version__,
    fingerprint,
)

__all__ = [
    "__version__",
    "Store",
    "Stats",
    "ManualClock",
    "fingerprint",
    "Acquired",
    "Replay",
    "InFlight",
    "Mismatch",
    "Lease",
    "Quota",
    "Limit",
    "Decision",
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
