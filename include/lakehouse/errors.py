"""Errors every layer shares.

A layer's own failures live beside it (``bronze.errors``, ``silver.failures``, ``gold.job``); what is
here has the same meaning, and the same exit code, whichever layer raises it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Spark's error classes for a streaming checkpoint another query wrote first: the offset or commit
# log entry of a batch exists already (Spark 3.5 ``CONCURRENT_STREAM_LOG_UPDATE``), or the log file
# appeared between the check and the rename (``SparkConcurrentModificationException``, legacy class).
CHECKPOINT_ERROR_CLASSES = frozenset({"CONCURRENT_STREAM_LOG_UPDATE", "_LEGACY_ERROR_TEMP_2207"})
CHECKPOINT_EXCEPTIONS = ("org.apache.spark.SparkConcurrentModificationException",)
# What the second of two queries on a new checkpoint gets: the files written once, never overwritten
# (Spark's ``metadata`` when the query starts, the Iceberg source's initial offset at its first
# batch) exist already. A streaming job creates no other file without overwrite: data files have
# unique names.
NEW_CHECKPOINT_EXCEPTIONS = ("org.apache.hadoop.fs.FileAlreadyExistsException",)
# Only when no JVM exception is at hand (the error arrived as text): the messages of the above.
_CHECKPOINT_TEXT = ("CONCURRENT_STREAM_LOG_UPDATE", "Concurrent update to the log. Multiple streaming jobs",
                    "Multiple streaming queries are concurrently using")
# A cause chain longer than this is not followed further (a cycle guard).
_MAX_CAUSES = 20
# What Iceberg raises when a commit's validation finds a conflicting concurrent commit.
ICEBERG_CONFLICT_EXCEPTIONS = ("org.apache.iceberg.exceptions.ValidationException",
                               "org.apache.iceberg.exceptions.CommitFailedException")


class ConcurrentWriterError(RuntimeError):
    """Another run of the same layer committed this input first (a scheduled run and a manual
    ``lakehouse run`` overlapping); this run committed nothing of it.

    Nothing is lost or doubled: the winner's commit holds the input. Jobs exit with
    :data:`lakehouse.jobs.EXIT_CONCURRENT` so callers can tell a lost race from a failure.
    """


@dataclass(frozen=True)
class JavaCause:
    """One throwable of a JVM cause chain, as Spark and Iceberg raised it."""

    class_name: str
    error_class: str | None
    message: str

    @property
    def line(self) -> str:
        """The first line of the message, for one-line errors."""
        return next((ln.strip() for ln in self.message.splitlines() if ln.strip()), self.class_name)


def java_causes(err: BaseException) -> list[JavaCause]:
    """The JVM exception behind ``err`` and its causes, outermost first (empty without a JVM exception).

    ``err`` is a ``Py4JJavaError`` or one of pyspark's captured exceptions (``StreamingQueryException``
    and the like), or wraps one as its ``__cause__``. pyspark converts only the outermost throwable
    and drops the error class of unknown ones, so the chain is read from the JVM object itself.
    """
    from py4j.java_gateway import is_instance_of

    from lakehouse.adapters.spark import jvm_gateway

    gateway = jvm_gateway()
    throwable = _jvm_throwable(err)
    causes: list[JavaCause] = []
    while throwable is not None and gateway is not None and len(causes) < _MAX_CAUSES:
        error_class = (throwable.getErrorClass()
                       if is_instance_of(gateway, throwable, "org.apache.spark.SparkThrowable") else None)
        causes.append(JavaCause(str(throwable.getClass().getName()), None if error_class is None else str(error_class),
                                str(throwable.getMessage() or "")))
        throwable = throwable.getCause()
    return causes


def _jvm_throwable(err: BaseException) -> Any:
    """The JVM throwable of ``err`` or of the nearest exception it was raised from, if any."""
    from py4j.protocol import Py4JJavaError

    from lakehouse.adapters.spark import captured_jvm_exception

    for exc in _python_chain(err):
        if isinstance(exc, Py4JJavaError):
            return exc.java_exception
        origin = captured_jvm_exception(exc)
        if origin is not None:
            return origin
    return None


def _python_chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    exc: BaseException | None = err
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def concurrent_checkpoint_write(err: BaseException) -> JavaCause | None:
    """The cause saying another streaming query wrote the same checkpoint entry first, or None.

    Two runs of a layer sharing a checkpoint both plan (or retry) a batch; the second to write its
    offset or commit log entry fails with this, or to create a file of a new checkpoint. Decided by
    exception type and error class; the message text is consulted only when the error carries no
    JVM exception.
    """
    causes = java_causes(err)
    types = CHECKPOINT_EXCEPTIONS + NEW_CHECKPOINT_EXCEPTIONS
    for cause in causes:
        if cause.error_class in CHECKPOINT_ERROR_CLASSES or cause.class_name in types:
            return cause
    if causes:
        return None
    text = str(err)
    if any(marker in text for marker in _CHECKPOINT_TEXT):
        line = next((ln.strip() for ln in text.splitlines() if any(m in ln for m in _CHECKPOINT_TEXT)), text)
        return JavaCause(type(err).__name__, None, line)
    return None


# What Iceberg's row-level planning raises when the table moved between the MERGE's scan and its
# runtime file filter (``RowLevelCommandDynamicPruning``): nothing was written, planning again works.
# Iceberg raises a plain IllegalStateException here, so its message is all there is to go by.
STALE_SCAN_EXCEPTION = "java.lang.IllegalStateException"
STALE_SCAN_MESSAGE = "the table has been concurrently modified"


def iceberg_stale_scan(err: BaseException) -> JavaCause | None:
    """The cause saying a row-level operation's scan went stale before it wrote anything, or None."""
    return next((c for c in java_causes(err)
                 if c.class_name == STALE_SCAN_EXCEPTION and STALE_SCAN_MESSAGE in c.message), None)


def iceberg_conflict(err: BaseException) -> JavaCause | None:
    """The Iceberg validation or commit failure behind a Spark write, or None.

    Spark may wrap it (a write job aborted, a task failure): the whole cause chain is searched.
    """
    return next((c for c in java_causes(err) if c.class_name in ICEBERG_CONFLICT_EXCEPTIONS), None)


__all__ = ["ConcurrentWriterError", "JavaCause", "concurrent_checkpoint_write", "iceberg_conflict",
           "iceberg_stale_scan", "java_causes"]
