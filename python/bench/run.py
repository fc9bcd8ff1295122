"""tollgate against what Python users pick instead, through a Starlette app over real HTTP.

Each variant runs in its own uvicorn server (one worker, uvloop and httptools when installed);
wrk drives it from the other core (`wrk -t1 -c32`). Rounds alternate the variants, and each
round's ratio to the bare endpoint is taken, so a noisy minute moves both sides; the medians of
the rounds are printed. A throwaway redis-server serves the Redis-backed peers.

    python python/bench/run.py [--rounds 3] [--seconds 5] [--only rate|post|replay]

Needs: wrk, redis-server, and in the Python environment: tollgate, starlette, uvicorn[standard],
limits, slowapi, fastapi, fastapi-limiter, asgi-idempotency-header, redis.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

SCENARIOS = {
    # GET /hello under one limit per client (every request allowed): the cost of deciding.
    "rate": ("GET", ["bare", "tollgate-rate", "limits-memory", "limits-redis", "slowapi-redis"]),
    # Where tollgate's rate cost goes: a store in memory, fewer fields on allowed answers
    # (fields="ietf", "denials"), and the five fields alone (static, without a limiter).
    "rate-parts": ("GET", ["bare", "tollgate-rate", "tollgate-rate-memory", "tollgate-rate-ietf", "tollgate-rate-denials", "headers-only"]),
    # fastapi-limiter is a FastAPI dependency: the same measure on FastAPI.
    "rate-fastapi": ("GET", ["fastapi-bare", "fastapi-tollgate-rate", "fastapi-limiter-redis"]),
    # POST /orders with a new Idempotency-Key each: a durable begin and completion per request.
    "post": ("POST-unique", ["bare", "tollgate-idempotency", "header-memory", "header-redis"]),
    # POST /orders with one key: the first executes, every other replays.
    "replay": ("POST-same", ["bare", "tollgate-idempotency", "header-memory", "header-redis"]),
}

SCRIPTS = {
    "GET": None,
    "POST-unique": """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/orders", {["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "k-" .. counter .. "-" .. math.random(1000000000)}, '{"amount": 10}')
end
""",
    "POST-same": """
wrk.method = "POST"
wrk.body = '{"amount": 10}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Idempotency-Key"] = "replayed-key"
""",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def serve(variant: str, redis_url: str, directory: str) -> "tuple[subprocess.Popen, int]":
    port = free_port()
    env = dict(os.environ, BENCH_VARIANT=variant, BENCH_REDIS=redis_url, BENCH_STORE=os.path.join(directory, "bench.redb"))
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "error", "--no-access-log"],
        cwd=HERE,
        env=env,
        start_new_session=True,
        # wrk cuts its connections when its time is up: the apps' ClientDisconnect tracebacks go
        # to a file, not the table.
        stderr=open(os.path.join(directory, "server.log"), "ab"),
    )
    wait_port(port, server)
    return server, port


def wrk(port: int, method: str, seconds: float, directory: str, warm_up: bool = False) -> float:
    path = "/hello" if method == "GET" else "/orders"
    command = ["wrk", "-t1", "-c32", f"-d{seconds:g}s", f"http://127.0.0.1:{port}{path}"]
    if SCRIPTS[method]:
        script = os.path.join(directory, "script.lua")
        with open(script, "w") as out:
            out.write(SCRIPTS[method])
        command[1:1] = ["-s", script]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    # Warming up, 409s are expected: 32 duplicates of the replayed key meet its first execution.
    if errors and not warm_up:
        raise RuntimeError(f"{errors.group(1)} failed responses:\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def measure(variant: str, method: str, seconds: float, redis_url: str) -> float:
    directory = tempfile.mkdtemp(prefix="tollgate-bench-")
    server, port = serve(variant, redis_url, directory)
    try:
        wrk(port, method, 1, directory, warm_up=True)  # warm up (and, for replays, the first execution)
        return wrk(port, method, seconds, directory)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    args = parser.parse_args()
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    wait_port(redis_port, redis)
    redis_url = f"redis://127.0.0.1:{redis_port}"
    try:
        for name, (method, variants) in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            rates = {variant: [] for variant in variants}
            for _ in range(args.rounds):
                for variant in variants:
                    rates[variant].append(measure(variant, method, args.seconds, redis_url))
            print(f"\n{name}: requests/s (median of {args.rounds} rounds of {args.seconds:g} s; ratio: median of per-round ratios)")
            print("| variant | requests/s | × bare | × tollgate |")
            print("|---|---|---|---|")
            ours = [v for v in variants if "tollgate" in v][0]
            for variant in variants:
                bare = variants[0]
                to_bare = statistics.median(r / b for r, b in zip(rates[variant], rates[bare]))
                to_ours = statistics.median(r / t for r, t in zip(rates[variant], rates[ours]))
                print(f"| {variant} | {statistics.median(rates[variant]):,.0f} | {to_bare:.2f} | {to_ours:.2f} |")
            sys.stdout.flush()
    finally:
        redis.kill()
        redis.wait()


if __name__ == "__main__":
    main()
