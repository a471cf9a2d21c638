"""Helpers the test modules and fixtures share: free ports, an isolated stack's environment, the
local PostgreSQL server, a real Airflow api-server. A plain module (``from support import make_env``): every tier imports
it the same way, whichever conftest files pytest has loaded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The local PostgreSQL server of the production-path tests (trust authentication).
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@contextmanager
def postgres_databases(*prefixes: str) -> Iterator[list[str]]:
    """One new empty database per prefix on the local PostgreSQL server, dropped (forcibly) at exit.

    Skips the calling test, with the reason, where there is no server.
    """
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as err:
        pytest.skip(f"no PostgreSQL server at {PG['host']}:{PG['port']} for this production-path test: {err}")
    admin.autocommit = True
    dbs = [f"{prefix}_{uuid.uuid4().hex[:10]}" for prefix in prefixes]
    try:
        with admin.cursor() as cur:
            for db in dbs:
                cur.execute(f"CREATE DATABASE {db}")
        yield dbs
    finally:
        with admin.cursor() as cur:
            for db in dbs:
                cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()


def make_env(home: Path, **extra: str) -> dict[str, str]:
    """A LAKEHOUSE_* environment for an isolated stack in ``home``."""
    env = {"LAKEHOUSE_HOME": str(home), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
           "LAKEHOUSE_STATSD_PORT": str(free_port()), "LAKEHOUSE_LOG_JSON": "true"}
    env.update(extra)
    return env


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
            return True
    except OSError:
        return False


@contextmanager
def airflow_api_server(argv: list[str], env: dict[str, str], port: int, log: Path | None = None,
                       ready: Callable[[], bool] = lambda: True, timeout_s: float = 120) -> Iterator[str]:
    """A real ``airflow api-server`` (``argv``, listening on ``port``) until the block ends; yields its URL.

    Waits until its health endpoint answers and ``ready()`` holds; fails the test with the end of
    ``log`` (its output, where given) if it exits or does not come up within ``timeout_s``. Stopped
    with its whole process group (the server's workers), killed if SIGTERM is not enough.
    """
    base = f"http://127.0.0.1:{port}"
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not (_answers(f"{base}/api/v2/monitor/health") and ready()):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
                pytest.fail(f"api-server {'exited' if process.poll() is not None else 'did not start'}: {tail}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if out is not subprocess.DEVNULL:
            out.close()


__all__ = ["PG", "airflow_api_server", "free_port", "make_env", "postgres_databases"]
