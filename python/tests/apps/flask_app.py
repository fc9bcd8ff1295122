"""The WSGI test app: a Flask "orders" API behind both tollgate middlewares, on the shared file
store named by TOLLGATE_TEST_STORE (every gunicorn worker opens it: no --preload). Each
execution of an order is logged (key and pid) to TOLLGATE_TEST_EXECUTIONS."""

import os
import time

from flask import Flask, jsonify, request

import tollgate
from tollgate.wsgi import IdempotencyMiddleware, RateLimitMiddleware

store = tollgate.Store.open(os.environ["TOLLGATE_TEST_STORE"], lease_ttl=10.0)
burst = tollgate.Limit("burst", tollgate.Quota.per_hour(5))

app = Flask(__name__)


@app.post("/orders")
def orders():
    key = request.headers.get("Idempotency-Key", "")
    with open(os.environ["TOLLGATE_TEST_EXECUTIONS"], "a") as log:
        log.write(f"{key} {os.getpid()}\n")
    time.sleep(float(request.args.get("slow", "0")))
    return jsonify(order=key, pid=os.getpid(), body=request.get_data(as_text=True)), 201


@app.get("/ready")
def ready():
    return "ready"


@app.get("/limited")
def limited():
    return jsonify(pid=os.getpid())


def client(environ):
    if environ.get("PATH_INFO") != "/limited":
        return None
    return environ.get("HTTP_X_CLIENT")


app.wsgi_app = RateLimitMiddleware(
    IdempotencyMiddleware(app.wsgi_app, store=store),
    store=store,
    limits=[(burst, client)],
)
