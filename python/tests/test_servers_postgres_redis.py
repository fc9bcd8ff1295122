"""tollgate on PostgreSQL and Redis from Python: records shared by several nodes through a
throwaway PostgreSQL, counters on a throwaway Redis, and the answers when a server goes away."""

from __future__ import annotations

import json
import uuid

import pytest

import tollgate

FP = tollgate.fingerprint(body=b"pay 10", method="POST", path="/orders")


def schema() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def test_two_nodes_on_postgres_share_records_and_fence_each_other(postgres):
    name = schema()
    clock = tollgate.ManualClock()
    with tollgate.Store.open_postgres(postgres, node_id="web-1", schema=name, lease_ttl=5.0, clock=clock) as one, \
            tollgate.Store.open_postgres(postgres, node_id="web-2", schema=name, lease_ttl=5.0, clock=clock) as two:
        assert one.engine == "postgres" and one.health() == "ready"
        lease = one.begin("s", "k", FP).lease
        assert isinstance(two.begin("s", "k", FP), tollgate.InFlight)
        lease.save_checkpoint("charged", b"ch_1")
        lease.complete(201, b"paid", [("x-order", "1")])
        replay = two.begin("s", "k", FP)
        assert isinstance(replay, tollgate.Replay) and replay.body == b"paid"
        assert replay.headers == [("x-order", "1")]
        assert isinstance(two.begin("s", "k", tollgate.fingerprint(body=b"other")), tollgate.Mismatch)
        # The database's clock decides expiry: a lease is taken over only once it lapsed there,
        # so a lease taken now is still in flight for the other node.
        held = one.begin("s", "held", FP).lease
        assert isinstance(two.begin("s", "held", FP), tollgate.InFlight)
        held.release()
        assert isinstance(two.begin("s", "held", FP), tollgate.Acquired)


def test_a_restarted_node_frees_its_leases_at_once(postgres):
    name = schema()
    first = tollgate.Store.open_postgres(postgres, node_id="web-1", schema=name)
    lost = first.begin("s", "k", FP).lease
    with pytest.raises(tollgate.AlreadyOpen):
        tollgate.Store.open_postgres(postgres, node_id="web-1", schema=name)
    first.close()
    with tollgate.Store.open_postgres(postgres, node_id="web-1", schema=name) as again:
        taken = again.begin("s", "k", FP)
        assert isinstance(taken, tollgate.Acquired) and taken.lease.recovered
        taken.lease.complete(200)
    with pytest.raises(tollgate.Closed):
        lost.complete(200)


def test_an_unreachable_database_is_unavailable(postgres):
    from conftest import free_port

    with pytest.raises(tollgate.Unavailable):
        tollgate.Store.open_postgres(f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres connect_timeout=2")


def test_counters_on_redis_are_shared_by_every_store(redis_url):
    limit = tollgate.Limit("py-" + uuid.uuid4().hex[:8], tollgate.Quota.fixed_window(3, 60))
    with tollgate.Store.in_memory(rate_counters_redis=redis_url) as one, \
            tollgate.Store.in_memory(rate_counters_redis=redis_url) as two:
        assert one.check(limit, "c").allowed
        assert two.check(limit, "c").allowed
        assert one.check_all([(limit, "c")]).allowed
        denied = two.check(limit, "c")
        assert not denied.allowed and denied.retry_after > 0
        other = tollgate.Limit(limit.name + "-b", tollgate.Quota.fixed_window(10, 60))
        # All or nothing across limits on Redis: the denial charged nothing to the other.
        assert not one.check_all([(other, "c"), (limit, "c")]).allowed
        assert one.peek(other, "c").remaining == 10
        one.reset(limit, "c")
        # (Each store may remember a denial until its retry_after: a third store asks Redis.)
        with tollgate.Store.in_memory(rate_counters_redis=redis_url) as three:
            assert three.check(limit, "c").remaining == 2


def test_postgres_records_with_redis_counters(postgres, redis_url):
    with tollgate.Store.open_postgres(postgres, schema=schema(), rate_counters_redis=redis_url) as store:
        assert store.check(tollgate.Limit("pg-redis", tollgate.Quota.per_second(5)), uuid.uuid4().hex).allowed
        store.begin("s", "k", FP).lease.complete(201)
        assert store.begin("s", "k", FP).status == 201


def test_a_redis_that_goes_away_is_unavailable_and_comes_back(lone_redis):
    url, process = lone_redis
    limit = tollgate.Limit("gone", tollgate.Quota.per_minute(10))
    with tollgate.Store.in_memory(rate_counters_redis=url) as store:
        assert store.check(limit, "a").allowed
        process.kill()
        process.wait()
        with pytest.raises(tollgate.Unavailable) as raised:
            store.check(limit, "a")
        assert raised.value.temporary
        assert store.health() == "unreachable"


def test_a_database_that_stops_answers_503_without_internals_on_both_middlewares(lone_postgres):
    import anyio
    import httpx
    from werkzeug.test import Client

    from tollgate.asgi import IdempotencyMiddleware as AsgiIdempotency
    from tollgate.wsgi import IdempotencyMiddleware as WsgiIdempotency

    executed = []

    async def asgi_app(scope, receive, send):
        executed.append("asgi")
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    def wsgi_app(environ, start_response):
        executed.append("wsgi")
        start_response("201 Created", [])
        return [b"done"]

    store = tollgate.Store.open_postgres(lone_postgres.conninfo, node_id="web-1")
    try:
        lone_postgres.stop()

        async def asgi_post():
            transport = httpx.ASGITransport(app=AsgiIdempotency(asgi_app, store=store))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.post("/orders", content=b"x", headers={"Idempotency-Key": "k"})

        answers = [
            anyio.run(asgi_post),
            Client(WsgiIdempotency(wsgi_app, store=store)).post("/orders", data=b"x", headers={"Idempotency-Key": "k"}),
        ]
        for answer in answers:
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            text = answer.get_data(as_text=True) if hasattr(answer, "get_data") else answer.text
            assert json.loads(text)["detail"] == "the service cannot record this request right now; retry later"
            for secret in (str(lone_postgres.port), "127.0.0.1", "postgres", "connection", "refused", lone_postgres.base):
                assert secret not in text.lower(), (secret, text)
        assert executed == []
    finally:
        store.close()


def test_a_shared_file_store_with_counters_on_redis(tmp_path, redis_url):
    limit = tollgate.Limit("file-redis-" + uuid.uuid4().hex[:8], tollgate.Quota.fixed_window(1, 60))
    with tollgate.Store.open(tmp_path / "r.redb", rate_counters_redis=redis_url) as store:
        assert store.check(limit, "a").allowed
        assert not store.check(limit, "a").allowed
        store.begin("s", "k", FP).lease.complete(201)
    # On Redis, Redis decides each check: a durability choice is refused, and says so.
    with pytest.raises(tollgate.InvalidArgument):
        tollgate.Store.open(tmp_path / "r2.redb", rate_counters_redis=redis_url, rate_durability="batched")
