"""The WSGI middlewares' behaviour, called through WSGI (a Flask app and werkzeug's test
client, and raw WSGI apps for streaming and ``write``)."""

from __future__ import annotations

import threading

import pytest
from flask import Flask, Response, abort, request
from werkzeug.test import Client

import tollgate
from tollgate.wsgi import IdempotencyMiddleware, RateLimitMiddleware


class Orders:
    """A Flask app that counts its executions."""

    def __init__(self) -> None:
        self.executed = []
        self.status = 201
        flask = Flask("orders")

        @flask.route("/orders", methods=["POST", "GET"])
        def orders():
            body = request.get_data()
            self.executed.append(body)
            if body == b"boom":
                raise RuntimeError("the handler failed")
            if body == b"http-404":
                abort(404)
            return {"n": len(self.executed), "body": body.decode()}, self.status, {"x-order": str(len(self.executed))}

        @flask.route("/stream", methods=["POST"])
        def stream():
            self.executed.append(b"stream")
            return Response((part for part in (b"one,", b"two,", b"three")), mimetype="text/plain")

        self.flask = flask
        self.app = flask.wsgi_app


@pytest.fixture
def store():
    with tollgate.Store.in_memory(lease_ttl=30.0) as store:
        yield store


def post(app, key=None, body=b"pay 10", path="/orders", headers=None):
    sent = dict(headers or {})
    if key is not None:
        sent["Idempotency-Key"] = key
    return Client(app).post(path, data=body, headers=sent)


def test_a_retry_replays_the_stored_response_and_runs_nothing(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    first = post(app, "k1")
    assert first.status_code == 201 and first.json == {"n": 1, "body": "pay 10"}
    assert "Idempotent-Replayed" not in first.headers
    again = post(app, "k1")
    assert again.status_code == 201 and again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Order"] == "1"
    assert again.headers["Content-Type"] == "application/json"
    assert len(orders.executed) == 1


def test_the_same_key_for_another_request_is_422(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    post(app, "k1")
    refused = post(app, "k1", body=b"pay 20")
    assert refused.status_code == 422 and refused.headers["Content-Type"] == "application/problem+json"
    assert post(app, "k1", path="/orders?x=1").status_code == 422
    assert len(orders.executed) == 1


def test_fingerprint_headers_are_part_of_the_request(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, fingerprint_headers=("X-Tenant", "Content-Type"))
    assert post(app, "k", headers={"x-tenant": "a"}).status_code == 201
    assert post(app, "k", headers={"x-tenant": "b"}).status_code == 422
    assert post(app, "k", headers={"x-tenant": "a", "content-type": "text/csv"}).status_code == 422
    assert post(app, "k", headers={"x-tenant": "a"}).headers["Idempotent-Replayed"] == "true"


def test_a_duplicate_in_flight_is_409_or_waits(store):
    orders = Orders()
    fingerprint = tollgate.fingerprint(body=b"pay 10", method="POST", path="/orders")
    lease = store.begin("default", "busy", fingerprint).lease
    answer = post(IdempotencyMiddleware(orders.app, store=store), "busy")
    assert answer.status_code == 409 and answer.headers["Retry-After"] == "1"
    timer = threading.Timer(0.05, lambda: lease.complete(201, b"first"))
    timer.start()
    waited = post(IdempotencyMiddleware(orders.app, store=store, wait=30.0), "busy")
    timer.join()
    assert waited.status_code == 201 and waited.data == b"first"
    assert orders.executed == []


def test_malformed_missing_and_unidentified_are_refused_before_any_state(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, key_required=True, key_scope=lambda environ: environ.get("HTTP_X_USER"))
    user = {"x-user": "u1"}
    assert post(app, "has space", headers=user).status_code == 400
    assert post(app, None, headers=user).status_code == 400
    assert post(app, "k").status_code == 401
    assert post(app, '"quoted-key"', headers=user).status_code == 201
    assert post(app, "quoted-key", headers=user).headers["Idempotent-Replayed"] == "true"
    assert len(orders.executed) == 1


def test_keys_optional_and_methods_not_covered_pass_through(store):
    orders = Orders()
    assert post(IdempotencyMiddleware(orders.app, store=store), None).status_code == 201
    assert post(IdempotencyMiddleware(orders.app, store=store, methods=("PUT",)), "k").status_code == 201
    assert post(IdempotencyMiddleware(orders.app, store=store, methods=("PUT",)), "k").status_code == 201
    assert len(orders.executed) == 3


def test_a_body_over_the_limit_is_413(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store, max_body_bytes=10)
    assert post(app, "k", body=b"x" * 11).status_code == 413
    assert post(app, "k", body=b"x" * 10).status_code == 201
    assert orders.executed == [b"x" * 10]


def test_server_errors_are_released_unless_store_when_says_otherwise(store):
    orders = Orders()
    orders.status = 503
    assert post(IdempotencyMiddleware(orders.app, store=store), "k").status_code == 503
    assert post(IdempotencyMiddleware(orders.app, store=store), "k").status_code == 503
    assert len(orders.executed) == 2
    keep = IdempotencyMiddleware(orders.app, store=store, store_when=lambda status: True)
    assert post(keep, "k2").status_code == 503
    assert post(keep, "k2").headers["Idempotent-Replayed"] == "true"
    assert len(orders.executed) == 3


def test_a_handler_that_raises_releases_the_key_and_the_framework_answers(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    # Flask answers an exception with a 500 of its own: a 5xx, not stored.
    assert post(app, "k", body=b"boom").status_code == 500
    assert store.stats().running == 0
    assert post(app, "k", body=b"boom").status_code == 500
    assert len(orders.executed) == 2
    assert post(app, "n", body=b"http-404").status_code == 404
    assert post(app, "n", body=b"http-404").headers["Idempotent-Replayed"] == "true"


def test_an_app_that_raises_outside_the_framework_releases_the_key(store):
    def broken(environ, start_response):
        raise RuntimeError("no framework to catch this")

    app = IdempotencyMiddleware(broken, store=store)
    with pytest.raises(RuntimeError):
        post(app, "k")
    assert store.stats().running == 0

    def broken_midway(environ, start_response):
        start_response("200 OK", [])
        yield b"half"
        raise RuntimeError("failed while streaming")

    app = IdempotencyMiddleware(broken_midway, store=store)
    with pytest.raises(RuntimeError):
        post(app, "m")
    assert store.stats().running == 0


def test_a_streamed_response_streams_and_is_stored_whole(store):
    orders = Orders()
    app = IdempotencyMiddleware(orders.app, store=store)
    assert post(app, "s", path="/stream").data == b"one,two,three"
    again = post(app, "s", path="/stream")
    assert again.data == b"one,two,three" and again.headers["Idempotent-Replayed"] == "true"
    assert orders.executed == [b"stream"]


def test_write_and_close_follow_pep_3333(store):
    closed = []

    class Body:
        def __iter__(self):
            return iter([b"-iterated"])

        def close(self):
            closed.append(True)

    def legacy(environ, start_response):
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"written")
        return Body()

    app = IdempotencyMiddleware(legacy, store=store)
    assert post(app, "w").data == b"written-iterated"
    assert closed == [True]
    assert post(app, "w").data == b"written-iterated"


def test_the_outcome_is_durable_before_the_last_chunk_goes_out(store):
    def app_(environ, start_response):
        start_response("201 Created", [])
        return [b"part", b"-end"]

    app = IdempotencyMiddleware(app_, store=store)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/d",
        "QUERY_STRING": "",
        "HTTP_IDEMPOTENCY_KEY": "d",
        "wsgi.input": __import__("io").BytesIO(b""),
        "CONTENT_LENGTH": "0",
    }
    chunks = app(environ, lambda status, headers, exc_info=None: None)
    fingerprint = tollgate.fingerprint(method="POST", path="/d")
    seen = []
    for chunk in chunks:
        seen.append((chunk, store.begin("default", "d", fingerprint)))
    assert [chunk for chunk, _ in seen] == [b"part", b"-end"]
    assert isinstance(seen[-1][1], tollgate.Replay) and seen[-1][1].body == b"part-end"


def test_store_failures_answer_without_internals():
    orders = Orders()
    store = tollgate.Store.in_memory()
    app = IdempotencyMiddleware(orders.app, store=store)
    store.close()
    answer = post(app, "k")
    assert answer.status_code == 500
    assert answer.json["detail"] == "the service failed to process this request"
    assert orders.executed == []


# Rate limits ---------------------------------------------------------------------------------


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def get(app, headers=None):
    return Client(app).get("/", headers=headers or {})


def test_a_limit_denies_with_429_and_its_fields(store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(2))
    app = RateLimitMiddleware(hello, store=store, limits=[(limit, None)])
    allowed = [get(app) for _ in range(2)]
    assert [a.status_code for a in allowed] == [200, 200]
    assert allowed[1].headers["RateLimit"] == '"api";r=0;t=60'
    assert "Retry-After" not in allowed[1].headers
    denied = get(app)
    assert denied.status_code == 429 and int(denied.headers["Retry-After"]) > 0
    assert denied.headers["X-RateLimit-Remaining"] == "0"


def test_several_limits_are_charged_all_or_nothing(store):
    per_user = tollgate.Limit("user", tollgate.Quota.fixed_window(10, 60))
    per_ip = tollgate.Limit("ip", tollgate.Quota.fixed_window(1, 60))
    app = RateLimitMiddleware(hello, store=store, limits=[(per_user, lambda e: e.get("HTTP_X_USER")), (per_ip, lambda e: "10.0.0.1")])
    assert get(app, {"x-user": "u1"}).status_code == 200
    assert get(app, {"x-user": "u1"}).status_code == 429
    assert store.peek(per_user, "u1").remaining == 9
    # A subject of None: the limit does not apply.
    only_users = RateLimitMiddleware(hello, store=store, limits=[(per_ip, lambda e: e.get("HTTP_X_USER"))])
    assert [get(only_users).status_code for _ in range(3)] == [200, 200, 200]


def test_cost_and_shadow(store):
    limit = tollgate.Limit("api", tollgate.Quota.fixed_window(4, 60))
    app = RateLimitMiddleware(hello, store=store, limits=[(limit, None)], cost=lambda environ: 3)
    assert get(app).status_code == 200
    assert get(app).status_code == 429
    shadow = RateLimitMiddleware(hello, store=store, limits=[(limit, None)], cost=lambda environ: 3, shadow=True)
    passed = get(shadow)
    assert passed.status_code == 200 and "Retry-After" not in passed.headers


def test_counters_out_of_reach_fail_closed_or_open(lone_redis):
    url, process = lone_redis
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(10))
    with tollgate.Store.in_memory(rate_counters_redis=url) as store:
        process.kill()
        process.wait()
        closed = get(RateLimitMiddleware(hello, store=store, limits=[(limit, None)]))
        assert closed.status_code == 503 and closed.headers["Retry-After"] == "1"
        assert "127.0.0.1" not in closed.text
        opened = get(RateLimitMiddleware(hello, store=store, limits=[(limit, None)], when_unavailable="open"))
        assert opened.status_code == 200


def test_fields_say_which_header_fields_an_allowed_answer_carries(store):
    limit = tollgate.Limit("api", tollgate.Quota.per_minute(2))
    ietf = get(RateLimitMiddleware(hello, store=store, limits=[(limit, lambda e: "a")], fields="ietf"))
    assert ietf.headers["RateLimit"].startswith('"api";r=1;') and "X-RateLimit-Limit" not in ietf.headers
    quiet = RateLimitMiddleware(hello, store=store, limits=[(limit, lambda e: "a")], fields="denials")
    allowed = get(quiet)
    assert allowed.status_code == 200 and "RateLimit" not in allowed.headers
    denied = get(quiet)
    assert denied.status_code == 429 and denied.headers["X-RateLimit-Limit"] == "2"
