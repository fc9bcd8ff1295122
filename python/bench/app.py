"""The benchmark's Starlette app, one variant per server (BENCH_VARIANT): the bare endpoints,
or behind tollgate's middlewares or a peer's. Run by run.py under uvicorn; not a test app.

Endpoints: GET /hello (rate-limited variants) and POST /orders (idempotency variants), both
returning a small JSON body."""

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

VARIANT = os.environ["BENCH_VARIANT"]
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379")
STORE = os.environ.get("BENCH_STORE", "bench.redb")
# Large enough that every request is allowed: the benchmark measures the cost of deciding.
PER_HOUR = 1_000_000_000


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def orders(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"order": len(body)}, status_code=201)


inner = Starlette(routes=[Route("/hello", hello), Route("/orders", orders, methods=["POST"])])


def client(scope):
    return scope["client"][0] if scope.get("client") else "unknown"


def build():
    if VARIANT == "bare":
        return inner
    if VARIANT.startswith("tollgate"):
        import tollgate
        from tollgate.asgi import IdempotencyMiddleware, RateLimitMiddleware

        store = tollgate.Store.in_memory() if VARIANT.endswith("-memory") else tollgate.Store.open(STORE)
        if VARIANT.startswith("tollgate-rate"):
            limit = tollgate.Limit("bench", tollgate.Quota.per_hour(PER_HOUR))
            fields = VARIANT.rsplit("-", 1)[1] if VARIANT.endswith(("-ietf", "-denials")) else "all"
            return RateLimitMiddleware(inner, store=store, limits=[(limit, client)], fields=fields)
        if VARIANT == "tollgate-idempotency":
            return IdempotencyMiddleware(inner, store=store)
    if VARIANT == "headers-only":
        fields = [(b"ratelimit-policy", b'"bench";q=1000000000;w=3600'), (b"ratelimit", b'"bench";r=999999999;t=1'), (b"x-ratelimit-limit", b"1000000000"), (b"x-ratelimit-remaining", b"999999999"), (b"x-ratelimit-reset", b"1")]

        async def with_fields(scope, receive, send):
            async def sending(message):
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), *fields]
                await send(message)

            await inner(scope, receive, sending)

        return with_fields
    if VARIANT in ("limits-memory", "limits-redis"):
        from limits import parse
        from limits.aio.storage import MemoryStorage, RedisStorage
        from limits.aio.strategies import FixedWindowRateLimiter

        storage = MemoryStorage() if VARIANT == "limits-memory" else RedisStorage("async+" + REDIS, implementation="redispy")
        limiter = FixedWindowRateLimiter(storage)
        item = parse(f"{PER_HOUR}/hour")

        async def limited(scope, receive, send):
            if scope["type"] == "http" and not await limiter.hit(item, client(scope)):
                response = JSONResponse({"detail": "too many requests"}, status_code=429)
                await response(scope, receive, send)
                return
            await inner(scope, receive, send)

        return limited
    if VARIANT == "slowapi-redis":
        from slowapi import Limiter
        from slowapi.middleware import SlowAPIASGIMiddleware
        from slowapi.util import get_remote_address

        app = Starlette(routes=[Route("/hello", hello), Route("/orders", orders, methods=["POST"])])
        app.state.limiter = Limiter(key_func=get_remote_address, storage_uri=REDIS, default_limits=[f"{PER_HOUR}/hour"])
        app.add_middleware(SlowAPIASGIMiddleware)
        return app
    if VARIANT in ("header-memory", "header-redis"):
        from idempotency_header_middleware import IdempotencyHeaderMiddleware
        from idempotency_header_middleware.backends.memory import MemoryBackend

        if VARIANT == "header-memory":
            backend = MemoryBackend()
        else:
            from idempotency_header_middleware.backends.redis import RedisBackend
            from redis.asyncio import Redis

            backend = RedisBackend(redis=Redis.from_url(REDIS))
        return IdempotencyHeaderMiddleware(inner, backend=backend)
    if VARIANT.startswith("fastapi-"):
        return fastapi_variant()
    raise SystemExit(f"unknown BENCH_VARIANT {VARIANT!r}")


def fastapi_variant():
    """fastapi-limiter is a FastAPI dependency: its scenario runs on FastAPI, against FastAPI's
    own bare endpoint and tollgate's middleware on the same app."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI

    dependencies = []
    lifespan = None
    if VARIANT == "fastapi-limiter-redis":
        from fastapi_limiter.depends import RateLimiter
        from pyrate_limiter import Duration, Limiter, Rate
        from pyrate_limiter.buckets.redis_bucket import RedisBucket
        from redis.asyncio import Redis

        holder = {}

        @asynccontextmanager
        async def lifespan(app):
            bucket = await RedisBucket.init([Rate(PER_HOUR, Duration.HOUR)], Redis.from_url(REDIS), "bench")
            holder["limiter"] = RateLimiter(limiter=Limiter(bucket))
            yield

        from fastapi import Request, Response

        async def dependency(request: Request, response: Response):
            await holder["limiter"](request, response)

        dependencies = [Depends(dependency)]
    app = FastAPI(lifespan=lifespan)

    @app.get("/hello", dependencies=dependencies)
    async def fastapi_hello():
        return {"hello": "world"}

    if VARIANT == "fastapi-tollgate-rate":
        import tollgate
        from tollgate.asgi import RateLimitMiddleware

        store = tollgate.Store.open(STORE)
        limit = tollgate.Limit("bench", tollgate.Quota.per_hour(PER_HOUR))
        app.add_middleware(RateLimitMiddleware, store=store, limits=[(limit, client)])
    return app


app = build()
