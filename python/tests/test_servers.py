"""Real servers, several worker processes on one shared store file: uvicorn (2 workers,
Starlette, the ASGI middlewares) and gunicorn (2 sync workers, Flask, the WSGI middlewares).
The same scenarios run on both."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest

from conftest import executions, gunicorn_server, uvicorn_server

SERVERS = {"uvicorn": uvicorn_server, "gunicorn": gunicorn_server}


@pytest.fixture(params=sorted(SERVERS))
def server(request, app_env):
    server = SERVERS[request.param](app_env).start()
    yield server
    server.kill()


def post(url: str, key: str, body: str = "pay 10", slow: float = 0.0) -> httpx.Response:
    return httpx.post(
        f"{url}/orders",
        params={"slow": str(slow)} if slow else None,
        headers={"Idempotency-Key": key},
        content=body,
        timeout=30,
    )


def test_concurrent_duplicates_across_workers_execute_once(server, app_env):
    # Both workers serve: different keys at once reach both processes (their pids answer).
    pids = set()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for batch in range(20):
            answers = pool.map(lambda i: post(server.url, f"spread-{batch}-{i}", slow=0.05), range(16))
            pids.update(answer.json()["pid"] for answer in answers)
            if len(pids) >= 2:
                break
    assert len(pids) >= 2, "one worker served every request: the test proves nothing across workers"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(server.url, "dup-1", slow=0.5), range(16)))
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {201, 409}, statuses
    first = [a for a in answers if a.status_code == 201 and "idempotent-replayed" not in a.headers]
    assert len(first) == 1, statuses
    assert [line.split()[0] for line in executions(app_env)].count("dup-1") == 1
    for conflict in (a for a in answers if a.status_code == 409):
        assert conflict.headers["retry-after"] == "1"
        assert conflict.headers["content-type"] == "application/problem+json"

    # The same request again (its query is part of it) replays; another body is refused.
    replay = post(server.url, "dup-1", slow=0.5)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first[0].json()
    assert post(server.url, "dup-1", body="pay 20", slow=0.5).status_code == 422


def test_a_sigkilled_server_restarted_still_replays(server, app_env):
    first = post(server.url, "order-7")
    assert first.status_code == 201
    server.kill()
    server.start()
    replay = post(server.url, "order-7")
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert [line.split()[0] for line in executions(app_env)].count("order-7") == 1


def test_a_rate_limit_is_exact_across_workers(server):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.get(f"{server.url}/limited", headers={"x-client": "c1"}, timeout=30), range(12)))
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 5, statuses
    assert statuses.count(429) == 7, statuses
    denied = next(a for a in answers if a.status_code == 429)
    assert int(denied.headers["retry-after"]) > 0
    assert denied.headers["ratelimit-policy"] == '"burst";q=5;w=3600'
    allowed = next(a for a in answers if a.status_code == 200)
    assert "retry-after" not in allowed.headers
    assert allowed.headers["x-ratelimit-limit"] == "5"
    # Another client has its own counter.
    assert httpx.get(f"{server.url}/limited", headers={"x-client": "c2"}).status_code == 200
