"""Keeping leases alive while their handlers run: one thread per middleware extends every lease
it holds each third of the store's lease TTL, so a slow handler is never taken over by a retry,
while a process that dies stops extending and its leases lapse on time."""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, Optional, Tuple

from ._errors import TollgateError
from ._native import Lease


class LeaseKeeper:
    """Extends the leases it holds, every ``ttl / 3`` seconds, by ``ttl``."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._period = ttl / 3.0
        self._leases: Dict[int, Tuple[Lease, float]] = {}
        self._condition = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def hold(self, lease: Lease) -> None:
        """Keeps ``lease`` alive until :meth:`drop`."""
        with self._condition:
            self._leases[id(lease)] = (lease, time.monotonic() + self._period)
            # A thread is started in the process that needs it (a fork has none).
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="tollgate-lease-keeper", daemon=True
                )
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        """Stops keeping ``lease`` alive (an extension under way finishes first: the lease's
        own lock orders it before the resolution)."""
        with self._condition:
            self._leases.pop(id(lease), None)

    def _run(self) -> None:
        while True:
            with self._condition:
                now = time.monotonic()
                due = [lease for lease, at in self._leases.values() if at <= now]
                for lease in due:
                    self._leases[id(lease)] = (lease, now + self._period)
                if not due:
                    soonest = min((at for _, at in self._leases.values()), default=now + self._period)
                    self._condition.wait(timeout=max(0.0, soonest - now))
                    continue
            for lease in due:
                try:
                    lease.extend(self._ttl)
                except TollgateError:
                    # Resolved meanwhile, or lost: nothing to keep. A failed write is retried
                    # at the next period, while the lease has a third of its TTL left.
                    pass
