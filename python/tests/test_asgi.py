"""The ASGI middlewares' behaviour, called through ASGI itself (Starlette apps, httpx's ASGI
transport, and raw ASGI apps for what a framework hides: streaming, pathsend)."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

import tollgate
from tollgate.asgi import IdempotencyMiddleware, RateLimitMiddleware


class Orders:
    """A Starlette app that counts its executions."""

    def __init__(self) -> None:
        self.executed = []
        self.background = []
        self.status = 201

        async def orders(request: Request):
            body = await request.body()
            self.executed.append(body)
            if body == b"boom":
                raise RuntimeError("the handler failed")
            if body == b"http-404":
                raise HTTPException(404, "no such order")
            return JSONResponse(
                {"n": len(self.executed), "body": body.decode()},
                status_code=self.status,
                headers={"x-order": str(len(self.executed))},
                background=BackgroundTask(self.background.append, body),
            )

        async def stream(request: Request):
            self.executed.append(b"stream")

            async def chunks():
                for part in (b"one,", b"two,", b"three"):
                    yield part

            return StreamingResponse(chunks(), status_code=200, media_type="text/plain")

        self.app = Starlette(routes=[Route("/orders", orders, methods=["POST", "GET"]), Route("/stream", stream, methods=["POST"])])


@pytest.fixture
def store():
    with tollgate.Store.in_memory(lease_ttl=30.0) as store:
        yield store


def client(app) -> httpx.AsyncClient:
    # raise_app_exceptions=False: an app that raises is answered 500, as a server does.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test")


def run(coroutine):
    return anyio.run(lambda: coroutine)


def post(app, key=None, body=b"pay 10", path="/orders", headers=None):
    async def go():
        async with client(app) as http:
            sent = dict(headers or {})
            if key is not None:
                sent["Idempotency-Key"] = key
            return await http.post(path, content=body, headers=sent)

    return anyio.run(go)


def test_a_retry_replays_the_stored_response_and_runs_nothing(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    first = post(app, "k1")
    assert first.status_code == 201 and first.json() == {"n": 1, "body": "pay 10"}
    assert "idempotent-replayed" not in first.headers
    again = post(app, "k1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-order"] == "1"
    assert again.headers["content-type"] == "application/json"
    assert len(orders.executed) == 1
    # The background task ran once, with the first execution.
    assert orders.background == [b"pay 10"]


def test_the_same_key_for_another_request_is_422(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    post(app, "k1")
    refused = post(app, "k1", body=b"pay 20")
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["title"] == "Idempotency-Key reused"
    refused = post(app, "k1", path="/orders?x=1")
    assert refused.status_code == 422
    assert len(orders.executed) == 1


def test_fingerprint_headers_are_part_of_the_request(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, fingerprint_headers=("X-Tenant",))
    assert post(app, "k", headers={"x-tenant": "a"}).status_code == 201
    assert post(app, "k", headers={"x-tenant": "b"}).status_code == 422
    assert post(app, "k", headers={"x-tenant": "a"}).headers["idempotent-replayed"] == "true"


def test_a_duplicate_in_flight_is_409_with_a_poll_hint(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    fingerprint = tollgate.fingerprint(body=b"pay 10", method="POST", path="/orders")
    lease = store.begin("default", "busy", fingerprint).lease
    answer = post(app, "busy")
    assert answer.status_code == 409 and answer.headers["retry-after"] == "1"
    assert orders.executed == []
    lease.release()


def test_wait_replays_a_duplicate_once_the_first_finishes(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, wait=30.0)
    fingerprint = tollgate.fingerprint(body=b"pay 10", method="POST", path="/orders")
    lease = store.begin("default", "slow", fingerprint).lease

    async def go():
        async with client(app) as http:
            async with anyio.create_task_group() as group:
                answers = []

                async def duplicate():
                    answers.append(await http.post("/orders", content=b"pay 10", headers={"Idempotency-Key": "slow"}))

                group.start_soon(duplicate)
                await anyio.sleep(0.05)
                await anyio.to_thread.run_sync(lambda: lease.complete(201, b"first", [("x-first", "yes")]))
            return answers[0]

    answer = anyio.run(go)
    assert answer.status_code == 201 and answer.content == b"first"
    assert answer.headers["x-first"] == "yes" and answer.headers["idempotent-replayed"] == "true"
    assert orders.executed == []


def test_malformed_missing_and_unidentified_are_refused_before_any_state(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, key_required=True, key_scope=lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode() or None)
    user = {"x-user": "u1"}
    assert post(app, "has space", headers=user).status_code == 400
    assert post(app, '"unterminated', headers=user).status_code == 400
    missing = post(app, None, headers=user)
    assert missing.status_code == 400 and missing.json()["title"] == "Idempotency-Key is missing"
    assert post(app, "k").status_code == 401
    assert post(app, '"quoted-key"', headers=user).status_code == 201
    # An RFC 8941 string and the bare token are the same key.
    assert post(app, "quoted-key", headers=user).headers["idempotent-replayed"] == "true"
    assert len(orders.executed) == 1
    assert store.stats().completed == 1


def test_without_a_key_a_request_passes_through_when_keys_are_optional(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    assert post(app, None).status_code == 201
    assert post(app, None).status_code == 201
    assert len(orders.executed) == 2


def test_methods_not_covered_pass_through(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, methods=("PUT",))
    assert post(app, "k").status_code == 201
    assert post(app, "k").status_code == 201
    assert len(orders.executed) == 2


def test_a_body_over_the_limit_is_413(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, max_body_bytes=10)
    assert post(app, "k", body=b"x" * 11).status_code == 413
    assert post(app, "k", body=b"x" * 10).status_code == 201
    assert orders.executed == [b"x" * 10]


def test_a_server_error_is_not_stored_and_the_key_runs_again(store):
    orders = Orders()
    orders.status = 503
    app = IdempotencyMiddleware(orders.app, store=store)
    assert post(app, "k").status_code == 503
    orders.status = 201
    assert post(app, "k").status_code == 201
    assert len(orders.executed) == 2


def test_store_when_decides_what_is_stored(store):
    orders = Orders()
    orders.status = 503
    app = IdempotencyMiddleware(orders.app, store=store, store_when=lambda status: True)
    assert post(app, "k").status_code == 503
    assert post(app, "k").headers["idempotent-replayed"] == "true"
    assert len(orders.executed) == 1


def test_a_handler_that_raises_releases_the_key_and_the_framework_answers(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    assert post(app, "k", body=b"boom").status_code == 500
    assert store.stats().running == 0
    assert post(app, "k", body=b"boom").status_code == 500
    assert len(orders.executed) == 2
    # An HTTPException is the framework's answer: a 404 is stored like any 4xx.
    assert post(app, "n", body=b"http-404").status_code == 404
    assert post(app, "n", body=b"http-404").headers["idempotent-replayed"] == "true"


def test_an_app_that_raises_before_answering_releases_the_key(store):
    runs = []

    async def broken(scope, receive, send):
        runs.append(1)
        raise RuntimeError("no framework to catch this")

    app = IdempotencyMiddleware(broken, store=store)
    assert post(app, "k").status_code == 500
    assert store.stats().running == 0
    assert post(app, "k").status_code == 500
    assert runs == [1, 1]


def test_a_streamed_response_streams_and_is_stored_whole(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    first = post(app, "s", path="/stream")
    assert first.content == b"one,two,three"
    again = post(app, "s", path="/stream")
    assert again.content == b"one,two,three" and again.headers["idempotent-replayed"] == "true"
    assert orders.executed == [b"stream"]


async def call(app, scope, body=b"", extensions=None):
    """Calls a raw ASGI app; returns the messages it sent."""
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(key, path="/file", extensions=None):
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"idempotency-key", key.encode())],
        "extensions": extensions or {},
    }


def test_pathsend_is_passed_on_and_the_file_stored(store, tmp_path):
    served = tmp_path / "receipt.txt"
    served.write_bytes(b"receipt 42")
    runs = []

    async def file_app(scope, receive, send):
        runs.append(1)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.pathsend", "path": str(served)})

    app = IdempotencyMiddleware(file_app, store=store)
    sent = anyio.run(call, app, http_scope("p", extensions={"http.response.pathsend": {}}))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    replay = anyio.run(call, app, http_scope("p", extensions={"http.response.pathsend": {}}))
    assert replay[0]["status"] == 200 and (b"idempotent-replayed", b"true") in replay[0]["headers"]
    assert replay[1]["body"] == b"receipt 42"
    assert runs == [1]


def test_the_outcome_is_durable_before_the_answer_ends(store):
    """The last body message goes out only once the response is stored: a client that retries
    the moment it has its answer gets the replay, never a 409."""
    seen_at_end = []

    async def app_(scope, receive, send):
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b"-end", "more_body": False})

    fingerprint = tollgate.fingerprint(method="POST", path="/file")
    app = IdempotencyMiddleware(app_, store=store)

    async def observing_call():
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.body" and not message.get("more_body"):
                seen_at_end.append(store.begin("default", "d", fingerprint))

        await app(http_scope("d"), receive, send)

    anyio.run(observing_call)
    assert isinstance(seen_at_end[0], tollgate.Replay) and seen_at_end[0].body == b"part-end"


def test_the_lease_is_kept_alive_while_a_slow_handler_runs():
    clock = tollgate.ManualClock()
    with tollgate.Store.in_memory(lease_ttl=0.3, clock=clock) as store:
        fingerprint = tollgate.fingerprint(method="POST", path="/file")
        during = []

        async def slow_app(scope, receive, send):
            lease = scope["state"]["tollgate_lease"]
            for _ in range(5):
                before = lease.expires_at
                clock.advance(0.2)  # store time passes: two thirds of the TTL each step
                # The keeper extends the lease within a third of the TTL of real time.
                with anyio.fail_after(10):
                    while lease.expires_at <= before:
                        await anyio.sleep(0.01)
            during.append(await anyio.to_thread.run_sync(store.begin, "default", "slow", fingerprint))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"done"})

        app = IdempotencyMiddleware(slow_app, store=store)
        anyio.run(call, app, http_scope("slow"))
        # A second of store time passed, over three TTLs: the lease was still held.
        assert isinstance(during[0], tollgate.InFlight)
        assert store.begin("default", "slow", fingerprint).body == b"done"


def test_store_failures_answer_without_internals(tmp_path):
    orders = Orders()
    store = tollgate.Store.in_memory()
    app = IdempotencyMiddleware(orders.app, store=store)
    store.close()
    answer = post(app, "k")
    assert answer.status_code == 500
    assert answer.json()["detail"] == "the service failed to process this request"
    assert "closed" not in answer.text
    assert orders.executed == []


# Rate limits ---------------------------------------------------------------------------------


def limited_app(store, **options):
    async def hello(request):
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    return RateLimitMiddleware(app, store=store, **options)


def get(app, headers=None):
    async def go():
        async with client(app) as http:
            return await http.get("/", headers=headers or {})

    return anyio.run(go)


def test_a_limit_denies_with_429_and_its_fields(store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(2))
    app = limited_app(store, limits=[(limit, None)])
    allowed = [get(app) for _ in range(2)]
    assert [a.status_code for a in allowed] == [200, 200]
    assert allowed[1].headers["ratelimit"] == '"api";r=0;t=60'
    assert allowed[1].headers["ratelimit-policy"] == '"api";q=2;w=60'
    assert "retry-after" not in allowed[1].headers
    denied = get(app)
    assert denied.status_code == 429 and int(denied.headers["retry-after"]) > 0
    assert denied.headers["x-ratelimit-remaining"] == "0"
    assert denied.headers["content-type"] == "application/problem+json"


def test_several_limits_are_charged_all_or_nothing(store):
    per_user = tollgate.Limit("user", tollgate.Quota.fixed_window(10, 60))
    per_ip = tollgate.Limit("ip", tollgate.Quota.fixed_window(1, 60))
    user = lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode() or None  # noqa: E731
    app = limited_app(store, limits=[(per_user, user), (per_ip, lambda scope: "10.0.0.1")])
    assert get(app, {"x-user": "u1"}).status_code == 200
    assert get(app, {"x-user": "u1"}).status_code == 429
    assert store.peek(per_user, "u1").remaining == 9


def test_a_subject_of_none_means_the_limit_does_not_apply(store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(1))
    app = limited_app(store, limits=[(limit, lambda scope: None)])
    assert [get(app).status_code for _ in range(3)] == [200, 200, 200]


def test_cost_and_shadow(store):
    limit = tollgate.Limit("api", tollgate.Quota.fixed_window(4, 60))
    app = limited_app(store, limits=[(limit, None)], cost=lambda scope: 3)
    assert get(app).status_code == 200
    assert get(app).status_code == 429
    too_costly = limited_app(store, limits=[(limit, None)], cost=lambda scope: 5)
    answer = get(too_costly)
    assert answer.status_code == 429 and answer.json()["title"] == "Request too costly"
    shadow = limited_app(store, limits=[(limit, None)], cost=lambda scope: 3, shadow=True)
    passed = get(shadow)
    assert passed.status_code == 200 and passed.headers["x-ratelimit-remaining"] == "1"
    assert "retry-after" not in passed.headers


def test_counters_out_of_reach_fail_closed_or_open(redis_down_store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(10))
    closed = get(limited_app(redis_down_store, limits=[(limit, None)]))
    assert closed.status_code == 503 and closed.headers["retry-after"] == "1"
    assert closed.json()["detail"] == "the service cannot record this request right now; retry later"
    assert "127.0.0.1" not in closed.text and "redis" not in closed.text.lower()
    opened = get(limited_app(redis_down_store, limits=[(limit, None)], when_unavailable="open"))
    assert opened.status_code == 200


@pytest.fixture
def redis_down_store(lone_redis):
    # Counters on a Redis that stops after the open: every check is Unavailable.
    url, process = lone_redis
    with tollgate.Store.in_memory(rate_counters_redis=url) as store:
        process.kill()
        process.wait()
        yield store


def test_fields_say_which_header_fields_an_allowed_answer_carries(store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(2))
    ietf = get(limited_app(store, limits=[(limit, lambda scope: "a")], fields="ietf"))
    assert ietf.headers["ratelimit"].startswith('"api";r=1;') and "ratelimit-policy" in ietf.headers
    assert "x-ratelimit-limit" not in ietf.headers
    bare = limited_app(store, limits=[(limit, lambda scope: "a")], fields="denials")
    allowed = get(bare)
    assert allowed.status_code == 200 and not any(name.startswith(("ratelimit", "x-ratelimit")) for name in allowed.headers)
    denied = get(bare)
    assert denied.status_code == 429 and denied.headers["x-ratelimit-limit"] == "2" and "retry-after" in denied.headers
    with pytest.raises(tollgate.InvalidArgument):
        limited_app(store, limits=[(limit, None)], fields="some")


def slow_calls(middleware):
    """Counts the requests `middleware` hands to its Python path (`_slow`), passing them on."""
    calls = []
    original = middleware._slow

    def counting(scope, receive, send, checks, cost):
        calls.append([(limit.name, subject) for limit, subject in checks])
        return original(scope, receive, send, checks, cost)

    middleware._slow = counting
    return calls


def test_allowed_requests_memory_decides_are_answered_natively_with_every_field(store):
    # A quota large enough that a check fits the reservation on disk (an eighth of it): the
    # Batched counters decide in memory.
    limit = tollgate.Limit("api", tollgate.Quota.fixed_window(1000, 60))

    async def hello(request):
        return PlainTextResponse("hello", headers={"x-app": "kept"})

    app = RateLimitMiddleware(Starlette(routes=[Route("/", hello)]), store=store, limits=[(limit, lambda scope: "u1")], cost=lambda scope: 2)
    slow = slow_calls(app)
    first, second, third = (get(app) for _ in range(3))
    # The first check loads the counter (the Python path); the next ones are decided in memory.
    assert slow == [[("api", "u1")]]
    assert [a.status_code for a in (first, second, third)] == [200, 200, 200]
    assert third.text == "hello" and third.headers["x-app"] == "kept"
    assert third.headers["content-type"].startswith("text/plain")
    assert third.headers["ratelimit"].startswith('"api";r=994;t=')
    assert third.headers["ratelimit-policy"] == '"api";q=1000;w=60'
    assert (third.headers["x-ratelimit-limit"], third.headers["x-ratelimit-remaining"]) == ("1000", "994")
    assert third.headers["x-ratelimit-reset"] == third.headers["ratelimit"].rsplit("t=", 1)[1]
    assert "retry-after" not in third.headers
    assert store.peek(limit, "u1").remaining == 994


def test_a_denial_goes_to_the_python_path_and_charges_nothing(store):
    limit = tollgate.Limit("api", tollgate.Quota.fixed_window(2, 60))
    app = limited_app(store, limits=[(limit, lambda scope: "u2")])
    slow = slow_calls(app)
    assert [get(app).status_code for _ in range(3)] == [200, 200, 429]
    assert slow[-1] == [("api", "u2")] and store.peek(limit, "u2").remaining == 0


def test_the_native_path_adds_fields_to_any_headers_and_passes_other_scopes_through(store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(100))
    seen = []

    async def raw(scope, receive, send):
        seen.append(scope["type"])
        if scope["type"] != "http":
            return
        # Headers as a tuple: the fields come after them, in a new list.
        await send({"type": "http.response.start", "status": 204, "headers": ((b"x-raw", b"1"),)})
        await send({"type": "http.response.body", "body": b""})

    middleware = RateLimitMiddleware(raw, store=store, limits=[(limit, None)], fields="ietf")
    slow = slow_calls(middleware)
    scope = http_scope("unused", path="/")
    run(call(middleware, dict(scope)))
    sent = run(call(middleware, dict(scope)))
    assert len(slow) == 1
    assert sent[0]["headers"][:2] == [(b"x-raw", b"1"), (b"ratelimit-policy", b'"api";q=100;w=60')]
    assert len(sent[0]["headers"]) == 3 and sent[0]["headers"][2][0] == b"ratelimit"
    assert sent[0]["headers"][2][1].startswith(b'"api";r=98;t=')
    assert sent[1] == {"type": "http.response.body", "body": b""}
    run(call(middleware, {"type": "lifespan"}))
    assert seen == ["http", "http", "lifespan"]


def test_servers_see_an_asgi3_app_and_its_call_attribute_answers_the_same(store):
    import asyncio

    import uvicorn

    limit = tollgate.Limit("api", tollgate.Quota.per_minute(100))
    middleware = limited_app(store, limits=[(limit, None)])
    assert asyncio.iscoroutinefunction(middleware.__call__)
    config = uvicorn.Config(middleware)
    config.load()
    assert config.interface == "asgi3"
    scope = dict(http_scope("unused", path="/"), method="GET")
    through_attribute = run(call(middleware.__call__, scope))
    direct = run(call(middleware, dict(scope)))
    assert through_attribute[0]["status"] == direct[0]["status"] == 200
    assert dict(direct[0]["headers"])[b"x-ratelimit-remaining"] == b"98"


def test_a_subject_or_cost_of_the_wrong_type_raises_as_in_python(store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(100))
    scope = http_scope("unused", path="/")

    async def ok(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run(call(RateLimitMiddleware(ok, store=store, limits=[(limit, lambda scope: "x")]), dict(scope)))
    with pytest.raises(TypeError):
        run(call(RateLimitMiddleware(ok, store=store, limits=[(limit, lambda scope: 42)]), dict(scope)))
    with pytest.raises(TypeError):
        run(call(RateLimitMiddleware(ok, store=store, limits=[(limit, lambda scope: "x")], cost=lambda scope: "2"), dict(scope)))
    assert store.peek(limit, "x").remaining == 99


def test_on_trio_the_middlewares_use_anyio_worker_threads(store):
    """An event loop that is not asyncio has no bridge: the same answers through anyio."""
    orders = Orders()
    limit = tollgate.Limit("trio", tollgate.Quota.per_minute(5))
    app = RateLimitMiddleware(IdempotencyMiddleware(orders.app, store=store, wait=30.0), store=store, limits=[(limit, None)])
    fingerprint = tollgate.fingerprint(body=b"pay 10", method="POST", path="/orders")
    lease = store.begin("default", "held", fingerprint).lease

    async def go():
        async with client(app) as http:
            first = await http.post("/orders", content=b"pay 10", headers={"Idempotency-Key": "t1"})
            again = await http.post("/orders", content=b"pay 10", headers={"Idempotency-Key": "t1"})
            answers = []
            async with anyio.create_task_group() as group:

                async def duplicate():
                    answers.append(await http.post("/orders", content=b"pay 10", headers={"Idempotency-Key": "held"}))

                group.start_soon(duplicate)
                await anyio.sleep(0.05)
                await anyio.to_thread.run_sync(lambda: lease.complete(201, b"first"))
            return first, again, answers[0]

    first, again, waited = anyio.run(go, backend="trio")
    assert first.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert first.headers["ratelimit-policy"] == '"trio";q=5;w=60'
    assert waited.status_code == 201 and waited.content == b"first"
    assert len(orders.executed) == 1
