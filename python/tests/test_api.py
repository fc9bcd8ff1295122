"""The Python API against the contract: stores, begin's answers, leases, rate limits, errors."""

from __future__ import annotations

import os
import threading

import pytest

import tollgate
from tollgate import Acquired, InFlight, Mismatch, Replay

FP = tollgate.fingerprint(body=b"pay 10", method="POST", path="/orders")


@pytest.fixture
def clock():
    return tollgate.ManualClock()


@pytest.fixture
def store(clock):
    with tollgate.Store.in_memory(lease_ttl=30.0, clock=clock) as store:
        yield store


def test_version_is_the_crates():
    assert isinstance(tollgate.__version__, str) and tollgate.__version__.count(".") == 2


def test_fingerprint_is_32_bytes_and_tells_every_part_apart():
    base = dict(body=b"b", method="POST", path="/p", query=[("a", "1")], headers=[("content-type", "x")])
    reference = tollgate.fingerprint(**base)
    assert isinstance(reference, bytes) and len(reference) == 32
    assert tollgate.fingerprint(**base) == reference
    for change in (
        dict(body=b"c"),
        dict(method="PUT"),
        dict(path="/q"),
        dict(query=[("a", "2")]),
        dict(headers=[("content-type", "y")]),
    ):
        assert tollgate.fingerprint(**{**base, **change}) != reference, change
    # Query pairs are a set; header names are case-insensitive.
    assert tollgate.fingerprint(query=[("a", "1"), ("b", "2")]) == tollgate.fingerprint(query=[("b", "2"), ("a", "1")])
    assert tollgate.fingerprint(headers=[("X-A", "1")]) == tollgate.fingerprint(headers=[("x-a", "1")])
    assert len(tollgate.fingerprint()) == 32


def test_a_request_runs_once_and_replays_its_response(store):
    begun = store.begin("user:1", "k1", FP)
    assert isinstance(begun, Acquired)
    lease = begun.lease
    assert not lease.recovered and lease.checkpoint is None and lease.token >= 1
    assert isinstance(store.begin("user:1", "k1", FP), InFlight)
    lease.complete(201, b"paid", [("content-type", "text/plain"), (b"x-raw", b"\xff")])
    replay = store.begin("user:1", "k1", FP)
    assert isinstance(replay, Replay)
    assert (replay.status, replay.body, replay.failed) == (201, b"paid", False)
    assert replay.headers == [("content-type", "text/plain"), ("x-raw", "\xff")]
    assert replay.raw_headers == [(b"content-type", b"text/plain"), (b"x-raw", b"\xff")]
    # The finished record is in the replay cache: memory answers.
    cached = store.try_begin("user:1", "k1", FP)
    assert isinstance(cached, Replay) and cached.body == b"paid"
    assert isinstance(store.begin("user:1", "k1", tollgate.fingerprint(body=b"pay 20")), Mismatch)
    # Scopes are separate key spaces.
    assert isinstance(store.begin("user:2", "k1", FP), Acquired)
    stats = store.stats()
    assert (stats.running, stats.completed, stats.failed) == (1, 1, 0)


def test_a_new_key_needs_the_store_so_try_begin_says_none(store):
    assert store.try_begin("s", "new", FP) is None
    assert isinstance(store.begin("s", "new", FP), Acquired)


def test_failed_requests_replay_flagged(store):
    store.begin("s", "f", FP).lease.fail(502, b"upstream down")
    replay = store.begin("s", "f", FP)
    assert replay.failed and replay.status == 502 and replay.body == b"upstream down"
    assert store.stats().failed == 1


def test_a_released_key_runs_again_with_a_higher_token(store):
    first = store.begin("s", "r", FP).lease
    first.release()
    assert first.resolved
    second = store.begin("s", "r", FP).lease
    assert second.token > first.token and not second.recovered
    with pytest.raises(tollgate.InvalidArgument):
        first.complete(200)


def test_in_flight_says_when_the_lease_lapses(store):
    store.begin("s", "i", FP)
    answer = store.begin("s", "i", FP)
    assert isinstance(answer, InFlight) and 0 < answer.retry_after <= 30.0


def test_a_lapsed_lease_is_taken_over_with_its_checkpoint_and_the_old_one_is_fenced(store, clock):
    old = store.begin("s", "t", FP).lease
    old.save_checkpoint("charged", b"ch_123")
    clock.advance(31)
    new = store.begin("s", "t", FP).lease
    assert new.recovered and new.token > old.token
    assert new.checkpoint == ("charged", b"ch_123")
    for late in (lambda: old.complete(200), lambda: old.extend(10), lambda: old.save_checkpoint("x", b"")):
        with pytest.raises(tollgate.LeaseLost):
            late()
    with pytest.raises(tollgate.LeaseLost):
        old.fail(500)
    new.complete(200, b"second")
    assert store.begin("s", "t", FP).body == b"second"


def test_extend_moves_the_expiry_and_keeps_the_lease(store, clock):
    lease = store.begin("s", "e", FP).lease
    before = lease.expires_at
    assert before == pytest.approx(clock.now() + 30.0)
    clock.advance(20)
    lease.extend(30)
    assert lease.expires_at == pytest.approx(clock.now() + 30.0)
    clock.advance(20)  # past the first expiry, within the extension
    assert isinstance(store.begin("s", "e", FP), InFlight)
    with pytest.raises(tollgate.InvalidArgument):
        lease.extend(0)


def test_a_lease_used_as_a_context_manager_is_released_unless_resolved(store):
    with pytest.raises(RuntimeError):
        with store.begin("s", "c", FP).lease:
            raise RuntimeError("the handler failed")
    assert isinstance(store.begin("s", "c", FP), Acquired)
    with store.begin("s", "d", FP).lease as lease:
        lease.complete(200, b"done")
    assert isinstance(store.begin("s", "d", FP), Replay)


def test_a_response_too_large_leaves_the_lease_usable():
    with tollgate.Store.in_memory() as store:
        lease = store.begin("s", "big", FP).lease
        with pytest.raises(tollgate.ResponseTooLarge) as raised:
            lease.complete(200, b"x" * (store.max_response_bytes + 1))
        assert isinstance(raised.value, tollgate.InvalidArgument)
        assert not lease.resolved
        lease.complete(413, b"too large to keep")
        assert store.begin("s", "big", FP).status == 413


def test_wait_returns_the_replay_once_the_first_finishes(store):
    lease = store.begin("s", "w", FP).lease
    timer = threading.Timer(0.05, lambda: lease.complete(201, b"first"))
    timer.start()
    answer = store.begin("s", "w", FP, wait=30.0)
    timer.join()
    assert isinstance(answer, Replay) and answer.body == b"first"


def test_bad_arguments_are_invalid_argument_and_value_error(store):
    for call in (
        lambda: store.begin("s", "has space", FP),
        lambda: store.begin("s", "", FP),
        lambda: store.begin("s", "k", b"short"),
        lambda: store.begin("s", "k", FP, wait=-1),
        lambda: tollgate.Limit("", tollgate.Quota.per_second(1)),
        lambda: tollgate.Limit("api", tollgate.Quota.per_second(0)),
        lambda: tollgate.Quota.fixed_window(10, 0),
        lambda: tollgate.Store.in_memory(lease_ttl=0),
        lambda: tollgate.Store.in_memory(record_ttl=float("nan")),
    ):
        with pytest.raises(tollgate.InvalidArgument) as raised:
            call()
        assert isinstance(raised.value, ValueError)
        assert isinstance(raised.value, tollgate.TollgateError)


def test_a_closed_store_raises_closed_and_closing_twice_is_harmless(clock):
    store = tollgate.Store.in_memory(clock=clock)
    lease = store.begin("s", "k", FP).lease
    store.close()
    store.close()
    assert store.closed and store.health() == "closed"
    for call in (
        lambda: store.begin("s", "k", FP),
        lambda: store.stats(),
        lambda: store.check(tollgate.Limit("api", tollgate.Quota.per_second(1)), "a"),
        lambda: lease.complete(200),
    ):
        with pytest.raises(tollgate.Closed):
            call()


def test_a_file_store_keeps_its_records_across_opens(tmp_path):
    path = tmp_path / "orders.redb"
    with tollgate.Store.open(path) as store:
        assert store.health() == "ready"
        store.begin("s", "k", FP).lease.complete(201, b"kept")
    with tollgate.Store.open(str(path), shared=False) as store:
        assert store.begin("s", "k", FP).body == b"kept"


def test_a_file_held_alone_refuses_a_second_open(tmp_path):
    path = tmp_path / "alone.redb"
    with tollgate.Store.open(path, shared=False):
        with pytest.raises(tollgate.AlreadyOpen):
            tollgate.Store.open(path, shared=False)


def test_a_file_that_is_not_a_store_is_corrupted(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database, just some text " * 100)
    with pytest.raises(tollgate.Corrupted):
        tollgate.Store.open(path, shared=False)


def test_rate_checks_decide_and_give_their_headers(store):
    api = tollgate.Limit("api", tollgate.Quota.per_minute(2))
    first = store.check(api, "client-1")
    assert first.allowed and first.remaining == 1 and first.limit == 2 and first.retry_after is None
    assert store.check(api, "client-1").allowed
    denied = store.check(api, "client-1")
    assert not denied and not denied.allowed and denied.retry_after > 0 and denied.reset_after > 0
    names = [name for name, _ in denied.headers()]
    assert names == ["RateLimit-Policy", "RateLimit", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"]
    assert "Retry-After" not in [name for name, _ in first.headers()]
    assert store.peek(api, "client-1").remaining == 0
    assert store.refund(api, "client-1", 1).remaining == 1
    store.reset(api, "client-1")
    assert store.peek(api, "client-1").remaining == 2
    with pytest.raises(tollgate.CostTooLarge):
        store.check(api, "client-1", cost=3)


def test_check_all_charges_every_limit_or_none(store):
    per_user = tollgate.Limit("user", tollgate.Quota.fixed_window(10, 60))
    per_ip = tollgate.Limit("ip", tollgate.Quota.fixed_window(1, 60))
    assert store.check_all([(per_user, "u1"), (per_ip, "10.0.0.1")]).allowed
    denied = store.check_all([(per_user, "u1"), (per_ip, "10.0.0.1")])
    assert not denied.allowed and denied.policy == "ip"
    # The denial charged nothing to the user's limit.
    assert store.peek(per_user, "u1").remaining == 9
    assert store.try_check_all([(per_user, "u1")]) is None or store.peek(per_user, "u1").remaining <= 9


def test_quotas_say_what_they_allow():
    quota = tollgate.Quota.per_second(10).with_burst(20)
    assert (quota.count, quota.period, quota.burst) == (10, 1.0, 20)
    assert tollgate.Quota.sliding_window(5, 2.5).period == 2.5
    assert tollgate.Limit("api", quota).name == "api"


@pytest.mark.parametrize(
    "kind, exception",
    [
        ("InDoubt", tollgate.InDoubt),
        ("Unavailable", tollgate.Unavailable),
        ("StorageFull", tollgate.StorageFull),
        ("Corrupted", tollgate.Corrupted),
        ("NotAStore", tollgate.Corrupted),
        ("CapacityExceeded", tollgate.CapacityExceeded),
        ("Poisoned", tollgate.StorageError),
        ("Superseded", tollgate.AlreadyOpen),
        ("Internal", tollgate.InternalError),
    ],
)
def test_every_error_maps_to_its_exception(kind, exception):
    from tollgate import _native

    with pytest.raises(exception) as raised:
        _native.raise_for_test(kind)
    assert isinstance(raised.value, tollgate.TollgateError)
    assert str(raised.value)


def test_only_outages_are_temporary():
    temporary = {tollgate.Unavailable, tollgate.InDoubt, tollgate.StorageFull, tollgate.CapacityExceeded, tollgate.ReadOnly, tollgate.StorageError}
    for name in tollgate.__all__:
        value = getattr(tollgate, name)
        if isinstance(value, type) and issubclass(value, tollgate.TollgateError):
            assert value.temporary == (value in temporary), name


def test_a_store_used_after_fork_says_to_open_it_in_the_child(store):
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            store.stats()
            os.write(write, b"no error")
        except tollgate.Closed as error:
            os.write(write, str(error).encode()[:500])
        finally:
            os._exit(0)
    os.close(write)
    message = os.read(read, 1000).decode()
    os.waitpid(child, 0)
    assert "after the fork" in message, message
    assert store.stats().running == 0
