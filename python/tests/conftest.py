"""Fixtures: throwaway PostgreSQL and Redis servers (as tollgate's Rust tests start them), and
real HTTP servers (uvicorn, gunicorn) run as process groups that a test can SIGKILL whole.

Without PostgreSQL's binaries or ``redis-server`` the tests that need them are skipped, saying
so; with ``TOLLGATE_REQUIRE_POSTGRES=1`` or ``TOLLGATE_REQUIRE_REDIS=1`` (as in ``.ci/run``)
they fail instead."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import httpx
import pytest

APPS = os.path.join(os.path.dirname(__file__), "apps")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def missing(what: str, variable: str) -> None:
    if os.environ.get(variable) == "1":
        pytest.fail(f"{what} is required ({variable}=1) but cannot be started")
    pytest.skip(f"{what} not available: install it (see .ci/run) or set {variable}=1 to fail here")


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


# PostgreSQL ----------------------------------------------------------------------------------


def _postgres_bin() -> Optional[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _as_postgres(command: List[str]) -> List[str]:
    return ["runuser", "-u", "postgres", "--"] + command if os.geteuid() == 0 else command


class Postgres:
    """A throwaway PostgreSQL cluster on a free loopback port."""

    def __init__(self) -> None:
        bin_dir = _postgres_bin()
        if bin_dir is None:
            missing("PostgreSQL", "TOLLGATE_REQUIRE_POSTGRES")
        self.bin = bin_dir
        self.base = tempfile.mkdtemp(prefix="tollgate-py-pg-")
        os.chmod(self.base, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.data = os.path.join(self.base, "data")
        self.port = free_port()
        initdb = subprocess.run(
            _as_postgres([f"{bin_dir}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-N", "--no-instructions"]),
            capture_output=True,
            text=True,
        )
        if initdb.returncode != 0:
            missing(f"PostgreSQL (initdb: {initdb.stderr.strip()})", "TOLLGATE_REQUIRE_POSTGRES")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=on -c max_connections=200"
        start = subprocess.run(
            _as_postgres([f"{bin_dir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.base, "log"), "-w", "-t", "60", "-o", options, "start"]),
            capture_output=True,
            text=True,
        )
        if start.returncode != 0:
            missing(f"PostgreSQL (pg_ctl: {start.stderr.strip()})", "TOLLGATE_REQUIRE_POSTGRES")
        self.conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=5"

    def stop(self) -> None:
        """An immediate stop: no shutdown checkpoint, connections cut."""
        subprocess.run(_as_postgres([f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"]), capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A conninfo string for a throwaway PostgreSQL cluster shared by the session's tests."""
    if os.environ.get("TOLLGATE_TEST_POSTGRES"):
        yield os.environ["TOLLGATE_TEST_POSTGRES"]
        return
    server = Postgres()
    try:
        yield server.conninfo
    finally:
        server.remove()


@pytest.fixture
def lone_postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster of the test's own, which the test may stop."""
    server = Postgres()
    try:
        yield server
    finally:
        server.remove()


# Redis ---------------------------------------------------------------------------------------


def start_redis() -> "tuple[str, subprocess.Popen]":
    """A throwaway ``redis-server`` on a free loopback port: its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server", "TOLLGATE_REQUIRE_REDIS")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
    except RuntimeError:
        process.kill()
        raise
    return f"redis://127.0.0.1:{port}", process


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a throwaway ``redis-server`` shared by the session's tests."""
    if os.environ.get("TOLLGATE_TEST_REDIS"):
        yield os.environ["TOLLGATE_TEST_REDIS"]
        return
    url, process = start_redis()
    try:
        yield url
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def lone_redis() -> Iterator["tuple[str, subprocess.Popen]"]:
    """A ``redis-server`` of the test's own, which the test may kill."""
    url, process = start_redis()
    try:
        yield url, process
    finally:
        process.kill()
        process.wait()


# HTTP servers --------------------------------------------------------------------------------


class Server:
    """A server command run as its own process group on a free port."""

    def __init__(self, command: List[str], env: Dict[str, str], port: int) -> None:
        self.command = command
        self.env = env
        self.port = port
        self.process: Optional[subprocess.Popen] = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> "Server":
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            cwd=APPS,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(self.env["TOLLGATE_TEST_LOG"], "ab"),
        )
        wait_for_port(self.port, self.process)
        # Every worker ready: the app answers a plain GET.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server does not answer /ready")

    def kill(self) -> None:
        """SIGKILL to the whole process group: the master and every worker, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Workers are in the group too; wait until none is left holding the store.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def uvicorn_server(env: Dict[str, str], workers: int = 2) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "starlette_app:app", "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    return Server(command, env, port)


def gunicorn_server(env: Dict[str, str], workers: int = 2) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "flask_app:app", "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--worker-class", "sync", "--log-level", "warning", "--timeout", "60"]
    return Server(command, env, port)


@pytest.fixture
def app_env(tmp_path) -> Dict[str, str]:
    """What the test apps read: the store's path and the file each execution is logged in."""
    return {
        "TOLLGATE_TEST_STORE": str(tmp_path / "store.redb"),
        "TOLLGATE_TEST_EXECUTIONS": str(tmp_path / "executions.log"),
        "TOLLGATE_TEST_LOG": str(tmp_path / "server.log"),
    }


def executions(env: Dict[str, str]) -> List[str]:
    """The executions the app logged (one line each: the idempotency key and the pid)."""
    try:
        with open(env["TOLLGATE_TEST_EXECUTIONS"]) as log:
            return log.read().splitlines()
    except FileNotFoundError:
        return []
