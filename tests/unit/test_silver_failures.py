"""How a failed Silver run is classified: by exception type, and for a Spark task's exception by the
class its traceback names (the only form it crosses the process boundary in), never by a name
found anywhere in the text."""

from __future__ import annotations

import pytest

from lakehouse.errors import ConcurrentWriterError
from lakehouse.registry import RegistryUnavailableError
from lakehouse.silver.failures import (
    InjectedFault,
    SilverConcurrentWriterError,
    SilverRunError,
    WorkerError,
    batch_failure,
    parse_traceback,
    qualified_name,
    query_failure,
)

# What Spark 3.5 puts in a Python worker's PythonException (simplified traceback, the default).
WORKER_TRACEBACK = """Traceback (most recent call last):
  File "lakehouse/silver/tasks.py", line 231, in run_task
    validated = validate_batch(batch, decoder, checks, VALUE, keep_value=dlq is not None)
                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "lakehouse/registry.py", line 290, in _call
    raise RegistryUnavailableError(
lakehouse.registry.RegistryUnavailableError: schema registry GET http://127.0.0.1:9/schemas/ids/1 unreachable: refused
"""


def test_the_exception_a_traceback_ends_with_is_its_last_unindented_line() -> None:
    error = parse_traceback(WORKER_TRACEBACK)
    assert error == WorkerError("lakehouse.registry.RegistryUnavailableError",
                                "schema registry GET http://127.0.0.1:9/schemas/ids/1 unreachable: refused")
    assert error.is_a(RegistryUnavailableError) and not error.is_a(SilverRunError)
    assert error.line.startswith("lakehouse.registry.RegistryUnavailableError: schema registry GET")


def test_a_chained_traceback_is_the_exception_raised_last() -> None:
    chained = ("Traceback (most recent call last):\n  File \"a.py\", line 1, in f\n    g()\n"
               "KeyError: 'id'\n\nThe above exception was the direct cause of the following exception:\n\n"
               "Traceback (most recent call last):\n  File \"a.py\", line 3, in h\n    raise ValueError\n"
               "ValueError: bad value\nsecond line\n")
    error = parse_traceback(chained)
    assert error == WorkerError("ValueError", "bad value\nsecond line")
    assert error.is_a(ValueError) and error.line == "ValueError: bad value"


def test_a_registry_error_named_only_in_a_message_is_not_a_registry_outage() -> None:
    """The old text search took any mention of the class name for an outage."""
    text = WORKER_TRACEBACK.replace("lakehouse.registry.RegistryUnavailableError: schema registry",
                                    "ValueError: not a RegistryUnavailableError: schema registry")
    error = parse_traceback(text)
    assert error is not None and error.type_name == "ValueError" and not error.is_a(RegistryUnavailableError)
    assert parse_traceback("no traceback here") is None


def test_qualified_names_are_what_a_traceback_prints() -> None:
    assert qualified_name(ValueError) == "ValueError"
    assert qualified_name(RegistryUnavailableError) == "lakehouse.registry.RegistryUnavailableError"


def test_an_exception_raised_by_the_batch_keeps_or_gets_its_type() -> None:
    lost = SilverConcurrentWriterError("another run committed batch q:3 first")
    assert batch_failure(lost) is lost
    other = ConcurrentWriterError("lost")
    assert batch_failure(other) is other

    outage = batch_failure(RegistryUnavailableError("schema registry GET x unreachable: refused\nmore"))
    assert type(outage) is RegistryUnavailableError
    assert str(outage) == ("Silver run failed, schema registry unavailable: "
                           "lakehouse.registry.RegistryUnavailableError: schema registry GET x unreachable: refused")

    fault = batch_failure(InjectedFault("failing the batch on purpose"))
    assert type(fault) is SilverRunError
    assert str(fault) == ("Silver streaming query failed: lakehouse.silver.failures.InjectedFault: "
                          "failing the batch on purpose")


@pytest.mark.parametrize("text", ["boom\nat org.apache.spark...", "\n  boom  "])
def test_a_query_failure_without_a_jvm_exception_is_a_run_error_with_its_first_line(text: str) -> None:
    failure = query_failure(RuntimeError(text), "binance")
    assert type(failure) is SilverRunError and str(failure) == "Silver streaming query failed: boom"


def test_a_query_failure_text_naming_the_registry_error_is_no_outage() -> None:
    failure = query_failure(RuntimeError("RegistryUnavailableError: mentioned"), "binance")
    assert type(failure) is SilverRunError
