"""The package README's examples run as printed (in a scratch directory; the PostgreSQL and
Redis addresses replaced by the throwaway servers')."""

from __future__ import annotations

import os
import re

import anyio
import httpx
import pytest
from werkzeug.test import Client

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def blocks():
    with open(README) as readme:
        return re.findall(r"```python\n(.*?)```", readme.read(), re.S)


def block(containing: str) -> str:
    found = [code for code in blocks() if containing in code]
    assert len(found) == 1, f"one README example with {containing!r}"
    return found[0]


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run_example(code: str) -> dict:
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, README, "exec"), namespace)
    return namespace


def test_every_python_example_is_tested():
    assert len(blocks()) == 4


def test_the_api_example(capsys):
    namespace = run_example(block("store.begin("))
    assert namespace["store"].closed
    assert "RateLimit-Policy" in capsys.readouterr().out


def test_the_fastapi_example():
    namespace = run_example(block("FastAPI()"))
    app, store = namespace["app"], namespace["store"]

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            headers = {"x-user": "u1", "Idempotency-Key": "p1"}
            first = await http.post("/payments", json={"amount": 10}, headers=headers)
            again = await http.post("/payments", json={"amount": 10}, headers=headers)
            unkeyed = await http.post("/payments", json={"amount": 10}, headers={"x-user": "u1"})
            anonymous = await http.post("/payments", json={"amount": 10}, headers={"Idempotency-Key": "p2"})
            return first, again, unkeyed, anonymous

    first, again, unkeyed, anonymous = anyio.run(go)
    store.close()
    assert first.status_code == 201 and first.json() == {"paid": 10}
    assert again.headers["idempotent-replayed"] == "true" and again.json() == {"paid": 10}
    assert first.headers["ratelimit-policy"] == '"per-user";q=100;w=60'
    assert unkeyed.status_code == 400
    assert anonymous.status_code == 401


def test_the_flask_example():
    namespace = run_example(block("Flask(__name__)"))
    client = Client(namespace["app"])
    # A server sets REMOTE_ADDR; werkzeug's test client does not by itself.
    peer = {"REMOTE_ADDR": "10.0.0.7"}
    first = client.post("/payments", json={"amount": 10}, headers={"Idempotency-Key": "p1"}, environ_base=peer)
    again = client.post("/payments", json={"amount": 10}, headers={"Idempotency-Key": "p1"}, environ_base=peer)
    namespace["store"].close()
    assert first.status_code == 201 and first.json == {"paid": 10}
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == {"paid": 10}
    assert first.headers["X-RateLimit-Limit"] == "20"


def test_the_postgres_example(postgres, redis_url):
    import tollgate

    code = block("open_postgres(")
    code = code.replace('"host=db.internal user=app dbname=app"', repr(postgres))
    code = code.replace('"redis://cache.internal:6379"', repr(redis_url))
    assert "db.internal" not in code and "cache.internal" not in code
    namespace = run_example("import tollgate\n" + code)
    store = namespace["store"]
    try:
        assert store.engine == "postgres"
        assert store.check(tollgate.Limit("readme", tollgate.Quota.per_second(5)), "a").allowed
    finally:
        store.close()


def test_the_repository_readme_shows_only_tested_examples():
    """Every Python example of the repository's README is one of this package README's, tested
    above, word for word."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")) as readme:
        shown = re.findall(r"```python\n(.*?)```", readme.read(), re.S)
    assert len(shown) == 3
    for code in shown:
        assert code in blocks(), code[:200]
