#!/usr/bin/env python3
"""Planted bugs in the Python package, one at a time: each must turn its tests red.

Each mutant replaces text in one source file, runs the tests that claim to catch it, and puts
the file back. Mutants of the native module (Rust) rebuild it (about 30 s each). Needs a Python
whose `tollgate` is an editable install of this tree (`pip install -e python`), given as
`--python` (default: the `python3` on PATH), and PostgreSQL and Redis for the tests that use them.

    scripts/python-mutants.py --python /path/to/venv/bin/python [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, "python")

# name: (file under python/, [(old, new)], pytest arguments (from python/tests))
MUTANTS = {
    "asgi-never-stores": (
        "tollgate/asgi.py",
        [("await _complete(lease, recorder.status, recorder.body(), recorder.headers)", "await _release(lease)")],
        ["test_asgi.py", "-k", "replays_the_stored_response"],
    ),
    "asgi-answer-ends-before-it-is-stored": (
        "tollgate/asgi.py",
        [
            ('            kind = message["type"]\n            if kind == "http.response.start":', '            kind = message["type"]\n            await send(message)\n            if kind == "http.response.start":'),
            ("                await self._record(lease, recorder)\n            await send(message)\n", "                await self._record(lease, recorder)\n"),
        ],
        ["test_asgi.py", "-k", "durable_before_the_answer_ends"],
    ),
    "asgi-raising-handler-keeps-the-key": (
        "tollgate/asgi.py",
        [("            keeper.drop(lease)\n            if not recorder.recorded:\n                await _release(lease)\n            raise", "            keeper.drop(lease)\n            raise")],
        ["test_asgi.py", "-k", "raises"],
    ),
    "bridge-loses-errors": (
        "tollgate/asgi.py",
        [("            elif isinstance(value, BaseException):\n                future.set_exception(value)", "            else:\n                future.set_result(None)")],
        ["test_servers_postgres_redis.py", "-k", "without_internals"],
    ),
    "keeper-never-extends": (
        "tollgate/_keeper.py",
        [("                    lease.extend(self._ttl)", "                    pass")],
        ["test_asgi.py", "-k", "kept_alive"],
    ),
    "wsgi-never-stores": (
        "tollgate/wsgi.py",
        [("            lease.complete(recorder.status, recorder.body(), recorder.headers)", "            _release(lease)")],
        ["test_wsgi.py", "-k", "replays_the_stored_response"],
    ),
    "wsgi-last-chunk-before-it-is-stored": (
        "tollgate/wsgi.py",
        [("            self._record(lease, recorder)\n            if pending is not None:\n                yield pending", "            if pending is not None:\n                yield pending\n            self._record(lease, recorder)")],
        ["test_wsgi.py", "-k", "durable_before_the_last_chunk"],
    ),
    "wsgi-duplicate-in-flight-executes": (
        "tollgate/wsgi.py",
        [("        if isinstance(begun, InFlight):\n            return _answer(start_response, _http.in_flight())", "        if isinstance(begun, InFlight):\n            return self.app(environ, start_response)")],
        ["test_servers.py", "-k", "execute_once and gunicorn"],
    ),
    "asgi-allowed-answers-carry-retry-after": (
        "tollgate/asgi.py",
        [("decision.asgi_headers(retry_after=False, only=rules.on_allowed)", "decision.asgi_headers(retry_after=True, only=rules.on_allowed)")],
        ["test_asgi.py", "-k", "cost_and_shadow"],
    ),
    "wsgi-allowed-answers-carry-retry-after": (
        "tollgate/_http.py",
        [('if n != "Retry-After" and (', "if (")],
        ["test_wsgi.py", "-k", "cost_and_shadow"],
    ),
    "shadow-mode-denies": (
        "tollgate/_http.py",
        [("        if self.shadow:\n            logger.info", "        if False:\n            logger.info")],
        ["test_asgi.py", "test_wsgi.py", "-k", "cost_and_shadow"],
    ),
    "server-errors-stored": (
        "tollgate/_http.py",
        [("    return status < 500", "    return True")],
        ["test_asgi.py", "test_wsgi.py", "-k", "server_error or server_errors"],
    ),
    "unavailable-shows-the-error": (
        "tollgate/_http.py",
        [("        return problem(503, title, TEMPORARY_DETAIL,", "        return problem(503, title, str(error),")],
        ["test_servers_postgres_redis.py", "-k", "without_internals"],
    ),
    "native-begin-holds-the-gil": (
        "src/store.rs",
        [("let begun = py\n            .detach(move || store.begin_with(&key, &fingerprint, &options))", "let begun = store.begin_with(&key, &fingerprint, &options)")],
        ["test_gil.py", "-k", "begin_waits"],
    ),
    "native-open-not-shared": (
        "src/store.rs",
        [("rate_counters_redis = None, shared = true, clock = None", "rate_counters_redis = None, shared = false, clock = None")],
        ["test_servers.py", "-k", "execute_once and uvicorn"],
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default="python3")
    parser.add_argument("--only")
    args = parser.parse_args()
    where = subprocess.run([args.python, "-c", "import tollgate; print(tollgate.__file__)"], capture_output=True, text=True).stdout.strip()
    if not where.startswith(os.path.join(PY, "tollgate")):
        print(f"tollgate is not an editable install of this tree ({where!r}): pip install -e python")
        return 2
    survivors = []
    for name, (path, edits, tests) in MUTANTS.items():
        if args.only and name != args.only:
            continue
        source = os.path.join(PY, path)
        original = open(source).read()
        planted = original
        for old, new in edits:
            if planted.count(old) != 1:
                print(f"{name}: the text to replace is not in {path} exactly once; update the mutant")
                return 2
            planted = planted.replace(old, new)
        try:
            with open(source, "w") as out:
                out.write(planted)
            if path.endswith(".rs"):
                subprocess.run([args.python, "-m", "pip", "install", "-q", "-e", PY], check=True)
            result = subprocess.run([args.python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=os.path.join(PY, "tests"), capture_output=True, text=True)
        finally:
            with open(source, "w") as out:
                out.write(original)
            if path.endswith(".rs"):
                subprocess.run([args.python, "-m", "pip", "install", "-q", "-e", PY], check=True)
        summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        killed = result.returncode == 1
        print(f"{'killed ' if killed else 'SURVIVED'} {name}: {summary}")
        if not killed:
            survivors.append(name)
    print(f"\n{len(survivors)} survived" + (f": {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
