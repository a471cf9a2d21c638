"""Shared fixtures: one embedded stack (real tansu broker, SQLite JDBC catalog, local registry)
and one SparkSession for the whole test run, each in a temporary LAKEHOUSE_HOME on free ports."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import make_env

from lakehouse import stack
from lakehouse.settings import Settings, load_settings


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
