"""The ASGI test app: a Starlette "orders" API behind both tollgate middlewares, on the shared
file store named by TOLLGATE_TEST_STORE (every uvicorn worker opens it). Each execution of an
order is logged (key and pid) to TOLLGATE_TEST_EXECUTIONS."""

import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import tollgate
from tollgate.asgi import IdempotencyMiddleware, RateLimitMiddleware

store = tollgate.Store.open(os.environ["TOLLGATE_TEST_STORE"], lease_ttl=10.0)
burst = tollgate.Limit("burst", tollgate.Quota.per_hour(5))


def log_execution(key: str) -> None:
    with open(os.environ["TOLLGATE_TEST_EXECUTIONS"], "a") as log:
        log.write(f"{key} {os.getpid()}\n")


async def orders(request: Request) -> JSONResponse:
    body = await request.body()
    key = request.headers.get("idempotency-key", "")
    log_execution(key)
    await asyncio.sleep(float(request.query_params.get("slow", "0")))
    return JSONResponse({"order": key, "pid": os.getpid(), "body": body.decode()}, status_code=201)


async def ready(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ready")


async def limited(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


def client(scope) -> "str | None":
    # Only the /limited route is limited, per client.
    if scope["path"] != "/limited":
        return None
    for name, value in scope["headers"]:
        if name == b"x-client":
            return value.decode()
    return None


app = Starlette(
    routes=[
        Route("/orders", orders, methods=["POST"]),
        Route("/ready", ready),
        Route("/limited", limited),
    ]
)
app.add_middleware(IdempotencyMiddleware, store=store)
app.add_middleware(RateLimitMiddleware, store=store, limits=[(burst, client)])
