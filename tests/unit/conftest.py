"""The unit tier starts no service: no broker, no embedded stack, no JVM.

``make test-unit`` is the loop a developer runs on every change, so it must stay fast and work
on a machine with nothing running. The root conftest's ``spark``, ``stack_settings`` and
``isolated`` fixtures are overridden here to fail the test with the reason, and the functions
that start the broker, a SparkSession or Spark's JVM fail the same way when a unit test (or the
code it calls) reaches them. A test that needs any of them belongs in ``tests/integration/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NoReturn

import pytest


MOVE = "move the test to tests/integration/ (the unit tier starts no service)"


def _refuse(what: str) -> NoReturn:
    pytest.fail(f"unit tests must not {what}: {MOVE}", pytrace=False)


def _refusing(what: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        _refuse(what)

    return refuse


@pytest.fixture(scope="session")
def stack_settings() -> NoReturn:
    """Overrides tests/conftest.py's: the embedded stack is not for unit tests."""
    _refuse("use the 'stack_settings' fixture (it starts the embedded stack: broker, topics, registry)")


@pytest.fixture()
def isolated() -> NoReturn:
    """Overrides tests/conftest.py's: a whole embedded stack is not for unit tests."""
    _refuse("use the 'isolated' fixture (it starts an embedded stack of the test's own)")


@pytest.fixture(scope="session")
def spark() -> NoReturn:
    """Overrides tests/conftest.py's: a SparkSession (a JVM) is not for unit tests."""
    _refuse("use the 'spark' fixture (it starts a JVM and the embedded stack)")


@pytest.fixture(autouse=True, scope="module")
def _no_services() -> Iterator[None]:
    """Make starting the broker, a SparkSession or Spark's JVM fail the unit test that tries.

    Module scope, so module-scoped fixtures of a test file are covered too; a test that stubs one
    of these (``monkeypatch.setattr("lakehouse.spark.session", fake)``) still replaces it.
    """
    import pyspark.context

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lakehouse.broker.start", _refusing("start the embedded broker (lakehouse.broker.start)"))
        mp.setattr("lakehouse.spark.session", _refusing("start a SparkSession (lakehouse.spark.session)"))
        mp.setattr(pyspark.context, "launch_gateway", _refusing("launch Spark's JVM (a SparkContext)"))
        yield
