"""Helpers the test modules and fixtures share: free ports, an isolated stack's environment, the
local PostgreSQL server. A plain module (``from support import make_env``): every tier imports
it the same way, whichever conftest files pytest has loaded."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
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


__all__ = ["PG", "free_port", "make_env", "postgres_databases"]
