"""Shared fixtures: one embedded stack (real tansu broker, SQLite JDBC catalog, local registry)
and one SparkSession for the whole test run, each in a temporary LAKEHOUSE_HOME on free ports."""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lakehouse import stack
from lakehouse.settings import Settings, load_settings


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


@pytest.fixture(autouse=True, scope="session")
def _isolate_environment() -> Iterator[None]:
    """Never let a developer's own LAKEHOUSE_* variables leak into tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("LAKEHOUSE_")}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of the session's embedded stack, started once and stopped at the end."""
    home = tmp_path_factory.mktemp("lakehouse-home")
    settings = load_settings(make_env(home))
    stack.up(settings)
    try:
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture()
def isolated(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A whole embedded stack of this test's own: home, broker port and catalog name.

    The shared SparkSession registers the new catalog at run time, so Spark code given these
    settings (which always qualifies tables with the catalog) works on this stack only.
    """
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]  # parametrized ids stay distinct
    catalog = "lh_" + "".join(ch for ch in request.node.name.lower() if ch.isalnum())[:32] + "_" + digest
    settings = load_settings(make_env(tmp_path / "home", LAKEHOUSE_CATALOG_NAME=catalog))
    stack.up(settings)
    try:
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="session")
def spark(stack_settings: Settings):  # type: ignore[no-untyped-def]
    from lakehouse.spark import session

    spark = session(stack_settings, "lakehouse-tests")
    try:
        yield spark
    finally:
        spark.stop()
