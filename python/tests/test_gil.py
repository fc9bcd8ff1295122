"""Every blocking call releases the GIL: another Python thread makes progress while one waits in
tollgate. A thread that holds the GIL through a call lets no other thread run until it returns,
so the proof is a timestamp the other thread took strictly inside the call."""

from __future__ import annotations

import threading
import time
from typing import Callable, List, Tuple

import tollgate


def calls_overlapped(call: Callable[[], object], times: int) -> Tuple[int, list]:
    """Runs ``call`` ``times`` times while another thread records timestamps; returns how many
    calls saw the other thread run inside them, and the calls' answers."""
    stamps: List[float] = []
    stop = threading.Event()

    def stamp() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    other = threading.Thread(target=stamp)
    other.start()
    windows = []
    answers = []
    try:
        while not stamps:
            time.sleep(0.001)
        for _ in range(times):
            start = time.perf_counter()
            answers.append(call())
            windows.append((start, time.perf_counter()))
    finally:
        stop.set()
        other.join()
    overlapped = 0
    index = 0
    ordered = sorted(stamps)
    for start, end in windows:
        # The middle half of the call: a thread that holds the GIL may still yield it once just
        # after the call starts (a switch request pending since the last call), never later.
        start, end = start + (end - start) / 4, end - (end - start) / 4
        while index < len(ordered) and ordered[index] <= start:
            index += 1
        if index < len(ordered) and ordered[index] < end:
            overlapped += 1
    return overlapped, answers


def test_another_thread_runs_while_a_begin_waits():
    with tollgate.Store.in_memory() as store:
        fingerprint = tollgate.fingerprint(body=b"x")
        lease = store.begin("s", "k", fingerprint).lease
        overlapped, answers = calls_overlapped(lambda: store.begin("s", "k", fingerprint, wait=0.2), 3)
        assert all(isinstance(answer, tollgate.InFlight) for answer in answers)
        assert overlapped == 3
        lease.release()


def test_durable_writes_release_the_gil(tmp_path):
    with tollgate.Store.open(tmp_path / "s.redb", rate_durability="immediate") as store:
        limit = tollgate.Limit("api", tollgate.Quota.per_second(1_000_000))
        # Each check is durable before it returns: an fsync the other thread runs during.
        overlapped, _ = calls_overlapped(lambda: store.check(limit, "a"), 50)
        assert overlapped >= 10, overlapped
        fingerprint = tollgate.fingerprint(body=b"y")
        overlapped, _ = calls_overlapped(lambda: store.begin("s", str(time.perf_counter_ns()), fingerprint).lease.complete(200), 50)
        assert overlapped >= 10, overlapped
