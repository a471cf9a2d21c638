"""Why a Silver run failed, decided from exception types rather than from their text.

A run fails in one of three places, each with its own structured evidence:

- the driver's ``foreachBatch`` code (:mod:`lakehouse.silver.batch`): the Python exception object
  itself, kept by the run (:mod:`lakehouse.silver.stream`) before Spark turns it into text;
- a Spark task of the batch (decode, validate, write; :mod:`lakehouse.silver.tasks`): the driver
  gets a JVM ``org.apache.spark.api.python.PythonException`` in the cause chain, whose message is
  the worker's traceback, the only form in which the worker's exception crosses the process
  boundary; its header names the exception's class (:func:`worker_error`);
- the query itself (the checkpoint, the source): the JVM cause chain, by class and error class
  (:func:`lakehouse.errors.java_causes`).

A lost race with another run of the same checkpoint is a :class:`SilverConcurrentWriterError`; a
schema registry outage keeps its type (:class:`~lakehouse.registry.RegistryUnavailableError`:
retry later); anything else is a :class:`SilverRunError` carrying the cause's first line.
"""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.errors import ConcurrentWriterError, concurrent_checkpoint_write, java_causes
from lakehouse.registry import RegistryUnavailableError

# The JVM exception a Python worker's failure arrives as (its message is the worker's traceback).
PYTHON_WORKER_EXCEPTION = "org.apache.spark.api.python.PythonException"
_TRACEBACK = "Traceback (most recent call last):"
MESSAGE_CHARS = 500  # of a cause in a run error's message


class SilverRunError(RuntimeError):
    """The Silver streaming query failed; the message carries the first line of the cause."""


class SilverConcurrentWriterError(SilverRunError, ConcurrentWriterError):
    """Another Silver run of the same exchange committed a batch this run was processing, or wrote
    its checkpoint entry, first; nothing of that batch was written twice."""


class InjectedFault(RuntimeError):
    """Raised on purpose by LAKEHOUSE_SILVER_FAULT_INJECTION (kill-and-retry tests)."""


@dataclass(frozen=True)
class WorkerError:
    """The exception a Python worker raised: its class as the traceback names it, and its message."""

    type_name: str
    message: str

    @property
    def line(self) -> str:
        """``module.Class: first line of the message``, as Python prints it."""
        first = next((ln.strip() for ln in self.message.splitlines() if ln.strip()), "")
        return f"{self.type_name}: {first}" if first else self.type_name

    def is_a(self, cls: type[BaseException]) -> bool:
        """Whether the worker raised exactly ``cls`` (the traceback names it module-qualified)."""
        return self.type_name == qualified_name(cls)


def qualified_name(cls: type[BaseException]) -> str:
    """``module.Class`` as a traceback prints an exception of ``cls`` (builtins without module)."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def parse_traceback(text: str) -> WorkerError | None:
    """The exception a formatted Python traceback ends with (the last one of a chain), or None.

    After ``Traceback (most recent call last):`` come the frames, indented; the first line that is
    not indented is ``module.Class: message`` (the message may continue on the following lines).
    """
    start = text.rfind(_TRACEBACK)
    if start < 0:
        return None
    lines = text[start + len(_TRACEBACK):].splitlines()
    for i, line in enumerate(lines):
        if not line.strip() or line[0].isspace():
            continue
        type_name, sep, first = line.partition(": ")
        if not type_name.replace(".", "").replace("_", "").isalnum():
            return None
        message = "\n".join([first, *lines[i + 1:]]).strip() if sep else ""
        return WorkerError(type_name, message)
    return None


def worker_error(err: BaseException) -> WorkerError | None:
    """The exception a Spark task's Python worker raised behind ``err`` (a failed ``collect`` of
    the batch's tasks), or None when ``err`` did not come from a worker."""
    for cause in java_causes(err):
        if cause.class_name == PYTHON_WORKER_EXCEPTION:
            return parse_traceback(cause.message)
    return None


def _registry_unavailable(line: str) -> RegistryUnavailableError:
    return RegistryUnavailableError(f"Silver run failed, schema registry unavailable: {line[:MESSAGE_CHARS]}")


def batch_failure(raised: BaseException) -> Exception:
    """The run's error for an exception the batch's ``foreachBatch`` code raised on the driver."""
    if isinstance(raised, ConcurrentWriterError):
        return raised
    worker = worker_error(raised)
    line = worker.line if worker is not None else f"{qualified_name(type(raised))}: {_first_line(str(raised))}"
    if isinstance(raised, RegistryUnavailableError) or (worker is not None and worker.is_a(RegistryUnavailableError)):
        return _registry_unavailable(line)
    return SilverRunError(f"Silver streaming query failed: {line[:MESSAGE_CHARS]}")


def query_failure(err: BaseException, exchange: str) -> Exception:
    """The run's error for a failure of the query outside the batch's own code.

    Another run of the same checkpoint writing its entry first is a
    :class:`SilverConcurrentWriterError`; anything else is a :class:`SilverRunError` naming the
    root of the JVM cause chain (or the first line of ``err`` when it carries no JVM exception).
    """
    logged = concurrent_checkpoint_write(err)
    if logged is not None:
        return SilverConcurrentWriterError(f"another Silver run of {exchange} uses the same checkpoint and wrote "
                                           f"its entry first; nothing was written twice: {logged.line[:300]}")
    worker = worker_error(err)
    if worker is not None and worker.is_a(RegistryUnavailableError):
        return _registry_unavailable(worker.line)
    if worker is not None:
        return SilverRunError(f"Silver streaming query failed: {worker.line[:MESSAGE_CHARS]}")
    causes = java_causes(err)
    cause = f"{causes[-1].class_name}: {causes[-1].line}" if causes else _first_line(str(err))
    return SilverRunError(f"Silver streaming query failed: {cause[:MESSAGE_CHARS]}")


def run_failure(err: BaseException, exchange: str, raised: BaseException | None = None) -> Exception:
    """The run's error for the query failure ``err``; ``raised`` is what the batch's code raised, if
    the failure started there (the query itself only has it as text)."""
    return batch_failure(raised) if raised is not None else query_failure(err, exchange)


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown error")


__all__ = ["InjectedFault", "SilverConcurrentWriterError", "SilverRunError", "WorkerError", "batch_failure",
           "parse_traceback", "query_failure", "qualified_name", "run_failure", "worker_error"]
