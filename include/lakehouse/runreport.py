"""Where a layer run spends its wall time, and what it did per exchange: the run report.

A layer job (one Spark application per layer, all exchanges) records the moments it reaches and
the time it spends in each phase, per exchange, and writes one JSON report when it ends, to the
path the caller passed (``--report``; Airflow's operator passes one and adds its own hand-off
figures). ``make bench`` and the sustained benchmark read these reports for the per-run cost
breakdown; the operator turns them into the task's XCom and asset-event extras.

Phases (seconds):
  ``handoff``   DAG run queued -> the Airflow task starts spark-submit (scheduler, executor, task start)
  ``startup``   spark-submit started -> Spark session ready (JVM, Python driver, catalog)
  ``planning``  what a run decides before reading data (offsets, targets, stream set-up)
  ``work``      reading, decoding, writing data files (Spark tasks)
  ``commit``    Iceberg commits (and Bronze's consumer-group commit)
  ``exit``      job finished -> the spark-submit process has exited (session stop, JVM exit)

The recorder is process-global on purpose: a job has exactly one, and the code deep inside a
layer (a micro-batch handler, a commit helper) adds its time without every signature carrying it.
Recording never fails a run: without an active report the calls do nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PHASES = ("handoff", "startup", "planning", "work", "commit", "exit")
# Environment variable through which the operator tells the job when spark-submit started.
SUBMITTED_AT_ENV = "SPARK_SUBMIT_STARTED_AT"  # not LAKEHOUSE_*: those are settings, and unknown ones fail

_lock = threading.Lock()


@dataclass
class ExchangeOutcome:
    """What one exchange's part of a layer run did."""

    status: str = "pending"  # committed | noop | failed
    records: int = 0
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "records": self.records, "error": self.error, "details": self.details,
                "phases": {k: round(v, 4) for k, v in self.phases.items()}}


@dataclass
class RunReport:
    """One layer run's timeline and per-exchange outcome (see the module doc)."""

    layer: str
    submitted_at: float | None = None  # epoch s when spark-submit started (from the operator or the parent JVM)
    session_ready_at: float | None = None
    finished_at: float | None = None
    cpu_s: float | None = None  # CPU seconds of spark-submit's process tree (JVM, Python driver, workers) so far
    exchanges: dict[str, ExchangeOutcome] = field(default_factory=dict)
    current: str | None = None  # the exchange whose work is being recorded now

    def outcome(self, exchange: str) -> ExchangeOutcome:
        return self.exchanges.setdefault(exchange, ExchangeOutcome())

    def add(self, phase: str, seconds: float, exchange: str | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
        name = exchange or self.current or "_run"
        with _lock:
            phases = self.outcome(name).phases
            phases[phase] = phases.get(phase, 0.0) + seconds

    def phase_totals(self) -> dict[str, float]:
        """Seconds per phase over the whole run (startup from the timeline, the rest summed over exchanges)."""
        totals = {p: 0.0 for p in PHASES}
        for outcome in self.exchanges.values():
            for phase, seconds in outcome.phases.items():
                totals[phase] += seconds
        if self.submitted_at is not None and self.session_ready_at is not None:
            totals["startup"] = max(0.0, self.session_ready_at - self.submitted_at)
        return totals

    @property
    def failed(self) -> list[str]:
        return sorted(name for name, o in self.exchanges.items() if o.status == "failed")

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "submitted_at": self.submitted_at, "session_ready_at": self.session_ready_at,
                "finished_at": self.finished_at, "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 3),
                "exchanges": {k: v.as_dict() for k, v in self.exchanges.items() if k != "_run"},
                "phases": {k: round(v, 4) for k, v in self.phase_totals().items()}}

    def write(self, path: Path) -> None:
        """Write atomically (a reader never sees half a report)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), separators=(",", ":")))
        tmp.replace(path)


_active: RunReport | None = None


def start(layer: str, submitted_at: float | None = None) -> RunReport:
    """Begin recording this process's run (the job entry point calls it once)."""
    global _active
    _active = RunReport(layer=layer, submitted_at=submitted_at if submitted_at is not None else submit_time())
    return _active


def active() -> RunReport | None:
    return _active


def stop() -> None:
    global _active
    _active = None


@contextlib.contextmanager
def phase(name: str, exchange: str | None = None) -> Iterator[None]:
    """Add the wall time of the ``with`` body to ``name`` (of the current exchange) in the active report."""
    began = time.monotonic()
    try:
        yield
    finally:
        report = _active
        if report is not None:
            report.add(name, time.monotonic() - began, exchange)


@contextlib.contextmanager
def exchange(name: str) -> Iterator[ExchangeOutcome | None]:
    """Record the ``with`` body as the work of exchange ``name``."""
    report = _active
    if report is None:
        yield None
        return
    previous = report.current
    report.current = name
    try:
        yield report.outcome(name)
    finally:
        report.current = previous


def submit_time() -> float | None:
    """When spark-submit started: the operator's timestamp, else the start of the parent JVM process."""
    raw = os.environ.get(SUBMITTED_AT_ENV)
    if raw:
        try:
            return float(raw)
        except ValueError:
            return None
    try:
        parent = psutil.Process().parent()
        if parent is not None and any("SparkSubmit" in part for part in parent.cmdline()):
            return float(parent.create_time())
    except psutil.Error:
        return None
    return None


def process_tree_cpu() -> float | None:
    """CPU seconds used so far by this run's processes: the spark-submit JVM (this driver's parent
    when spark-submit started it, else this process) and everything below it, Python workers included."""
    try:
        me = psutil.Process()
        parent = me.parent()
        root = parent if parent is not None and any("SparkSubmit" in p for p in parent.cmdline()) else me
        total = 0.0
        for proc in (root, *root.children(recursive=True)):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:  # a worker that just exited
                continue
        return total
    except psutil.Error:
        return None


def read(path: Path) -> dict[str, Any] | None:
    """A report written by :meth:`RunReport.write` (None when the job never wrote one)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


__all__ = ["PHASES", "SUBMITTED_AT_ENV", "ExchangeOutcome", "RunReport", "active", "exchange", "phase", "read",
           "start", "stop", "submit_time"]
