"""Sustained load on the real orchestrated pipeline: ``lakehouse bench sustained`` / ``make bench-sustained``.

What ``make run`` runs (``lakehouse run-all``: the embedded stack and Airflow standalone with the
layer DAGs every minute) is started in a fresh temporary ``LAKEHOUSE_HOME`` on free ports, with
its own producers left out (``--no-producers``): the benchmark runs one replay producer per
exchange itself, at ``--rate`` trades/s in total, so it knows exactly when production started
and stopped. After ``--minutes`` the producers stop, the pipeline drains for ``--drain-minutes``,
and everything is stopped (also on Ctrl-C or an error: every process started here runs in its
own session and is swept at the end).

The benchmark reads only the pipeline's outputs, so it measures whatever the layers do:
  * every few seconds: the topics' reported end offsets, and row counts per layer from the
    Iceberg snapshot summaries (``total-records``, pyiceberg; no Spark);
  * every produced record, tailed from Kafka: its producer timestamp and ``message_id``
    (the exact produced count over time, and which trades never reached Gold);
  * at the end: Gold's ``ingestion_timestamp`` (producer) and ``gold_ingestion_timestamp`` of
    every row, the Airflow metadata DB (task tries, DAG runs), the alert log and the layer run
    reports (``<home>/run/reports/<layer>/*.json``, if the layers write them).
A floor is measured in the same run: a bare ``spark-submit`` of an app that only builds the
project's Spark session (``spark_floor_app.py``), once before the stack starts and once while
Airflow runs (after the drain).

Output: one ``BENCH <name> <value> <unit>`` line per figure ("n/a" where a figure could not be
measured), ``sustained.json`` and ``sustained.png`` in the output directory. The analysis is in
:mod:`lakehouse.bench.sustained_analysis` (pure functions, unit-tested).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from lakehouse.bench import free_port

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from lakehouse.bench import sustained_analysis as an
    from lakehouse.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_RATE = 2000.0
DEFAULT_MINUTES = 15.0
DEFAULT_DRAIN_MINUTES = 3.0
DEFAULT_WARMUP_MINUTES = 2.0
SAMPLE_EVERY_S = 5.0
PROGRESS_EVERY_S = 30.0
READY_TIMEOUT_S = 600.0
SUPERVISOR_STOP_S = 240.0
PRODUCER_STOP_S = 30.0
FLOOR_TIMEOUT_S = 300.0
TAIL_CATCH_UP_S = 60.0
READY_MARKER = "lakehouse is running"
FLOOR_APP = Path(__file__).with_name("spark_floor_app.py")
# The phases of a run report (lakehouse.runreport.PHASES), should that module not be importable.
FALLBACK_PHASES = ("handoff", "startup", "planning", "work", "commit", "exit")


class BenchError(RuntimeError):
    """The benchmark could not run to the end; the message says what happened and where to look."""


class Interrupted(Exception):
    """SIGTERM/SIGHUP: stop everything, like Ctrl-C."""


# --- command line --------------------------------------------------------------------------------

def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than zero, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("LAKEHOUSE_"):
        raise argparse.ArgumentTypeError(f"expected LAKEHOUSE_NAME=VALUE, got {text!r}")
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=_positive, default=DEFAULT_RATE,
                        help=f"total trades/s, split evenly over the exchanges (default {DEFAULT_RATE:g})")
    parser.add_argument("--minutes", type=_positive, default=DEFAULT_MINUTES,
                        help=f"minutes of production (default {DEFAULT_MINUTES:g})")
    parser.add_argument("--drain-minutes", type=_non_negative, default=DEFAULT_DRAIN_MINUTES,
                        help=f"minutes the pipeline may drain after the producers stop (default {DEFAULT_DRAIN_MINUTES:g})")
    parser.add_argument("--warmup-minutes", type=_non_negative, default=DEFAULT_WARMUP_MINUTES,
                        help=f"minutes after the producers start left out of the steady state "
                             f"(default {DEFAULT_WARMUP_MINUTES:g})")
    parser.add_argument("--out", type=Path, help="directory for sustained.json and sustained.png "
                                                 "(default: bench-report/ in the temporary home)")
    parser.add_argument("--cleanup", action="store_true",
                        help="delete the temporary home at the end (the report goes to --out or a new temp dir)")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare spark-submit floor measurements")
    parser.add_argument("--set", dest="settings", type=_setting, action="append", default=[],
                        metavar="LAKEHOUSE_NAME=VALUE",
                        help="a setting for the benchmarked stack (repeatable); the stack otherwise gets the "
                             "defaults, not this shell's LAKEHOUSE_* variables")


def add_commands(sub: Any) -> None:
    """``lakehouse bench sustained`` (see the module doc)."""
    p = sub.add_parser("bench", help="benchmarks of the whole orchestrated stack ('make bench' runs the others)")
    benchmarks = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    s = benchmarks.add_parser("sustained", help="sustained load through make run's stack: lag, freshness, costs",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_arguments(s)
    s.set_defaults(func=_cmd_sustained)


def _cmd_sustained(args: argparse.Namespace, _settings: Settings) -> int:
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lakehouse.bench sustained [options]``."""
    from lakehouse.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m lakehouse.bench sustained", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging("WARNING", json_logs=True)
    return run(args)


# --- the benchmarked stack -------------------------------------------------------------------------



def bench_environment(home: Path, extra: Sequence[tuple[str, str]]) -> dict[str, str]:
    """This process's environment without LAKEHOUSE_*/AIRFLOW* (a developer's own stack stays out of
    it), then the temporary home and free ports, then ``--set`` values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "AIRFLOW"))}
    env.update({"LAKEHOUSE_HOME": str(home), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
                "LAKEHOUSE_AIRFLOW_PORT": str(free_port()), "LAKEHOUSE_STATSD_PORT": str(free_port()),
                "LAKEHOUSE_LOG_JSON": "true",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())})
    env.update(dict(extra))
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Processes:
    """Every process the benchmark started, and everything they started: stopped in ``stop_all``."""

    def __init__(self, env: Mapping[str, str], settings: Settings) -> None:
        self.env = dict(env)
        self.settings = settings
        self.log_dir = settings.log_dir
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.producers: dict[str, subprocess.Popen[bytes]] = {}
        self.floor: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, Any] = {}  # pid -> psutil.Process (remembers create time: no pid reuse)

    def spawn(self, argv: list[str], log_name: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / log_name, "ab") as out:
            proc = subprocess.Popen(argv, env=dict(env or self.env), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.remember(proc.pid)
        return proc

    def remember(self, pid: int) -> None:
        """Note ``pid`` and its descendants now, so they can be stopped even if re-parented later."""
        import psutil

        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                self._seen.setdefault(proc.pid, proc)
        except psutil.Error:
            return

    def track(self) -> None:
        for proc in [self.supervisor, self.floor, *self.producers.values()]:
            if proc is not None and proc.poll() is None:
                self.remember(proc.pid)

    # --- the supervisor (make run) --------------------------------------------------------------
    def start_supervisor(self) -> None:
        self.supervisor = self.spawn([sys.executable, "-m", "lakehouse", "run-all", "--no-producers"], "bench-run-all.log")

    @property
    def supervisor_log(self) -> Path:
        return self.log_dir / "bench-run-all.log"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until run-all printed its banner (stack up, Airflow prepared, UI answering)."""
        from lakehouse.orchestration.environment import ui_healthy

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            self.track()
            try:
                if READY_MARKER in self.supervisor_log.read_text(errors="replace"):
                    return
            except OSError:
                pass
            if ui_healthy(self.settings):
                time.sleep(5)  # run-all prints its banner a moment after the UI answers
                return
            time.sleep(2)
        raise BenchError(f"run-all was not ready within {timeout_s:.0f}s; last lines of {self.supervisor_log}:\n"
                         f"{_tail(self.supervisor_log)}")

    def check_alive(self) -> None:
        if self.supervisor is not None and self.supervisor.poll() is not None:
            raise BenchError(f"run-all exited with code {self.supervisor.returncode}; last lines of "
                             f"{self.supervisor_log}:\n{_tail(self.supervisor_log)}")
        for exchange, proc in self.producers.items():
            if proc.poll() is not None:
                path = self.log_dir / f"bench-producer-{exchange}.log"
                raise BenchError(f"producer {exchange} exited with code {proc.returncode}; last lines of {path}:\n"
                                 f"{_tail(path)}")

    # --- producers ------------------------------------------------------------------------------
    def start_producers(self, rate_each: float) -> None:
        for exchange in self.settings.exchanges:
            argv = [sys.executable, "-m", "lakehouse", "produce", "--exchange", exchange, "--rate", f"{rate_each:g}",
                    "--loop", "--json"]
            self.producers[exchange] = self.spawn(argv, f"bench-producer-{exchange}.log")

    def stop_producers(self) -> dict[str, dict[str, Any]]:
        """SIGINT (the producer flushes what Kafka accepted and prints its summary); their summaries."""
        for proc in self.producers.values():
            _signal_group(proc, signal.SIGINT)
        summaries: dict[str, dict[str, Any]] = {}
        for exchange, proc in self.producers.items():
            try:
                proc.wait(timeout=PRODUCER_STOP_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            summaries[exchange] = {"exit_code": proc.returncode,
                                   **_producer_summary(self.log_dir / f"bench-producer-{exchange}.log")}
        return summaries

    # --- stop everything --------------------------------------------------------------------------
    def stop_all(self, say: Any) -> None:
        """Producers and the floor app, then run-all (SIGTERM: it stops Airflow and the broker), then a
        sweep of every process and session seen; finally the broker by its pid file.

        Signals cannot interrupt this: Ctrl-C (or SIGTERM) only cuts run-all's grace periods short.
        """
        hurry = threading.Event()
        previous = {sig: signal.signal(sig, lambda _s, _f: hurry.set())
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._stop_all(say, hurry)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self, say: Any, hurry: threading.Event) -> None:
        import psutil

        from lakehouse import stack

        self.track()
        for proc in [*self.producers.values(), self.floor]:
            if proc is not None and proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        sup = self.supervisor
        if sup is not None and sup.poll() is None:
            say("stopping run-all (Airflow, running Spark jobs, the broker); Ctrl-C skips its grace periods")
            sup.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + SUPERVISOR_STOP_S
            while sup.poll() is None and time.monotonic() < deadline and not hurry.is_set():
                self.track()
                time.sleep(0.5)
            if sup.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    sup.send_signal(signal.SIGTERM)  # a second signal: run-all stops without grace periods
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sup.wait(timeout=30)
        leftovers = self._leftovers()
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        if sup is not None and sup.poll() is None:
            sup.kill()
            sup.wait()
        try:
            stack.down(self.settings)
        except OSError as err:
            say(f"warning: could not stop the broker: {err}")
        left = self._leftovers()
        if leftovers:
            say(f"killed {len(leftovers)} process(es) left after run-all stopped")
        say(f"warning: processes still running: {[p.pid for p in left]}" if left else
            "stopped; no process left running")

    def _leftovers(self) -> list[Any]:
        """Live processes seen, and members of their sessions (Spark drivers re-parented to init)."""
        import psutil

        me = os.getpid()
        alive = {pid: p for pid, p in self._seen.items() if pid != me and _alive(p)}
        sessions = set()
        for pid in self._seen:  # sessions led by a process this benchmark started or saw
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pid in alive and os.getsid(pid) == pid:
                    sessions.add(pid)
        sessions |= {p.pid for p in [self.supervisor, self.floor, *self.producers.values()] if p is not None}
        for proc in psutil.process_iter():
            with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                if proc.pid != me and os.getsid(proc.pid) in sessions and _alive(proc):
                    alive.setdefault(proc.pid, proc)
        return list(alive.values())


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _producer_summary(path: Path) -> dict[str, Any]:
    """The producer's ``--json`` summary line (the last JSON object with ``elapsed_s``)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "elapsed_s" in data:
            return data
    return {}


# --- what is measured while it runs ---------------------------------------------------------------

class TailConsumer(threading.Thread):
    """Reads every record of the trade topics from the beginning: producer timestamp and message_id.

    The exact produced count over time (the broker's reported end offsets can under-report), and the
    ids of the trades that must end up in Gold.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="bench-tail", daemon=True)
        from lakehouse import names

        self.settings = settings
        self.topics = {names.topic(settings, ex): ex for ex in settings.exchanges}
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._ts: list[np.ndarray] = []
        self._ids: list[pa.Array] = []
        self.count = 0
        self.per_exchange: dict[str, int] = {ex: 0 for ex in settings.exchanges}
        self.position: dict[tuple[str, int], int] = {}
        self.eof_at: dict[tuple[str, int], int] = {}
        self.without_timestamp = 0
        self.without_id = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            self._consume()
        except Exception as err:  # noqa: BLE001 - reported with the results; the run goes on without it
            self.error = f"{type(err).__name__}: {err}"

    def _consume(self) -> None:
        import numpy as np
        import pyarrow as pa
        from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

        from lakehouse.bench import sustained_analysis as an

        consumer = Consumer({"bootstrap.servers": self.settings.bootstrap_servers,
                             "group.id": "lakehouse-bench-sustained-tail", "enable.auto.commit": False,
                             "enable.partition.eof": True, "auto.offset.reset": "earliest",
                             "fetch.wait.max.ms": 200, "socket.timeout.ms": 10_000})
        try:
            meta = consumer.list_topics(timeout=30).topics
            assignment = [TopicPartition(topic, p, OFFSET_BEGINNING)
                          for topic in self.topics for p in sorted(meta[topic].partitions)]
            consumer.assign(assignment)
            while not self._halt.is_set():
                ts: list[int] = []
                ids: list[str | None] = []
                counts: dict[str, int] = {}
                for msg in consumer.consume(10_000, 0.5):
                    err = msg.error()
                    key = (msg.topic(), msg.partition())
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            self.eof_at[key] = msg.offset()
                        else:
                            log.warning("tail consumer: %s", err.str())
                        continue
                    kind, stamp = msg.timestamp()
                    if kind == TIMESTAMP_NOT_AVAILABLE:
                        self.without_timestamp += 1
                        stamp = int(time.time() * 1000)
                    mid = an.message_id_of(msg.value())
                    if mid is None:
                        self.without_id += 1
                    ts.append(stamp)
                    ids.append(mid)
                    exchange = self.topics[msg.topic()]
                    counts[exchange] = counts.get(exchange, 0) + 1
                    self.position[key] = msg.offset() + 1
                if ts:
                    with self._lock:
                        self._ts.append(np.asarray(ts, dtype=np.int64))
                        self._ids.append(pa.array(ids, type=pa.string()))
                        self.count += len(ts)
                        for exchange, n in counts.items():
                            self.per_exchange[exchange] += n
        finally:
            consumer.close()

    def caught_up(self, reported_ends: Mapping[tuple[str, int], int]) -> bool:
        """At the end of every partition: the broker said so at the position reached, which is at
        least the end the broker reports."""
        keys = set(reported_ends) | set(self.position)
        return all(self.eof_at.get(k) is not None and self.eof_at[k] >= self.position.get(k, 0)
                   and self.position.get(k, 0) >= reported_ends.get(k, 0) for k in keys)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def arrays(self) -> tuple[np.ndarray, pa.Array]:
        """(producer times in epoch seconds, message_ids), in consumption order."""
        import numpy as np
        import pyarrow as pa

        with self._lock:
            ts = np.concatenate(self._ts) if self._ts else np.zeros(0, dtype=np.int64)
            ids = pa.concat_arrays(self._ids) if self._ids else pa.array([], type=pa.string())
        return ts.astype(np.float64) / 1000.0, ids


class Sampler:
    """Reported topic end offsets and per-layer row counts from the Iceberg snapshot summaries."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer

        from lakehouse import names

        self.settings = settings
        self.tables = {"bronze": [names.bronze_table(ex) for ex in settings.exchanges],
                       "silver": [names.silver_table(ex) for ex in settings.exchanges],
                       "dlq": [names.DLQ_TABLE], "gold": [names.GOLD_TABLE]}
        self.topics = [names.topic(settings, ex) for ex in settings.exchanges]
        self._consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                                   "group.id": "lakehouse-bench-sustained-offsets", "enable.auto.commit": False,
                                   "socket.timeout.ms": 10_000})
        self._partitions: dict[str, list[int]] = {}
        self._catalog: Any = None

    def close(self) -> None:
        self._consumer.close()

    def reported_ends(self) -> dict[tuple[str, int], int]:
        from confluent_kafka import KafkaException, TopicPartition

        ends: dict[tuple[str, int], int] = {}
        for topic in self.topics:
            try:
                if topic not in self._partitions:
                    meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
                    self._partitions[topic] = sorted(meta.partitions)
                for p in self._partitions[topic]:
                    _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                                      cached=False)
                    ends[(topic, p)] = int(high)
            except (KafkaException, KeyError) as err:
                log.warning("end offsets of %s not read: %s", topic, err)
        return ends

    def counts(self) -> dict[str, int]:
        from pyiceberg.exceptions import NoSuchTableError
        from sqlalchemy.exc import SQLAlchemyError

        from lakehouse.catalog import load_catalog

        out: dict[str, int] = {}
        try:
            if self._catalog is None:
                self._catalog = load_catalog(self.settings)
            for layer, tables in self.tables.items():
                total = 0
                for name in tables:
                    snap = self._catalog.load_table(name).current_snapshot()
                    if snap is not None and snap.summary is not None:
                        total += int(snap.summary.get("total-records", 0) or 0)
                out[layer] = total
        except (SQLAlchemyError, OSError, NoSuchTableError, ValueError) as err:  # a busy catalog skips one sample
            log.debug("row counts skipped: %s", err)
            self._catalog = None
        return out

    def sample(self) -> an.Sample:
        from lakehouse.bench import sustained_analysis as an

        t = time.time()
        ends = self.reported_ends()
        expected = sum(len(v) for v in self._partitions.values())
        return an.Sample(t=t, end_offsets=sum(ends.values()) if ends and len(ends) == expected else None,
                         tables=self.counts())


def measure_floor(settings: Settings, env: Mapping[str, str], procs: Processes, work_dir: Path, label: str
                  ) -> dict[str, Any]:
    """Wall and CPU time (the process tree, from wait4) of a bare spark-submit of the floor app, with
    the project's Spark configuration, jars and environment."""
    from lakehouse.spark import spark_submit_binary, submit_spec

    spec = dataclasses.replace(submit_spec(settings, "gold"), name=f"lakehouse-bench-floor-{label}",
                               application=str(FLOOR_APP), application_args=[])
    times_path = work_dir / f"floor-{label}.json"
    spec = dataclasses.replace(spec, application_args=[str(times_path)])
    argv = spec.argv(spark_submit_binary())
    began = time.time()
    proc = procs.spawn(argv, f"bench-floor-{label}.log", {**env, **spec.env})
    procs.floor = proc
    try:
        deadline = time.monotonic() + FLOOR_TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                _signal_group(proc, signal.SIGKILL)
                raise BenchError(f"the floor spark-submit did not finish within {FLOOR_TIMEOUT_S:.0f}s; "
                                 f"see {procs.log_dir / f'bench-floor-{label}.log'}")
            procs.remember(proc.pid)
            time.sleep(0.05)
        ended = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if proc.returncode is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        procs.floor = None
    result: dict[str, Any] = {"label": label, "exit_code": proc.returncode, "wall_s": ended - began,
                              "cpu_s": usage.ru_utime + usage.ru_stime, "startup_s": None, "exit_s": None}
    try:
        marks = json.loads(times_path.read_text())
        result["startup_s"] = marks["session_ready_at"] - began
        result["exit_s"] = ended - marks["stopped_at"]
    except (OSError, ValueError, KeyError):
        result["error"] = f"no timings written; see {procs.log_dir / f'bench-floor-{label}.log'}"
    return result


# --- what is read at the end ------------------------------------------------------------------------

def read_gold(settings: Settings) -> dict[str, Any]:
    """message_id, producer time (µs) and Gold time (µs) of every Gold row.

    The Gold time is when the row became visible: the commit time of the snapshot that added its
    data file (``gold_ingestion_timestamp`` is stamped when the micro-batch starts, seconds before
    its MERGE commits). Files come from the current snapshot's manifest entries, each with the
    snapshot that added it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakehouse import names
    from lakehouse.catalog import load_catalog

    table = load_catalog(settings).load_table(names.GOLD_TABLE)
    committed_ms = {snap.snapshot_id: snap.timestamp_ms for snap in table.snapshots()}
    columns = ["message_id", "ingestion_timestamp"]
    parts: list[pa.Table] = []
    if table.current_snapshot() is not None:
        entries = table.inspect.entries().to_pylist()
        for entry in entries:
            if entry["status"] == 2:  # deleted entries are not rows of the table
                continue
            path = entry["data_file"]["file_path"]
            with table.io.new_input(path).open() as stream:
                part = pq.read_table(stream, columns=columns)
            visible_us = committed_ms[entry["snapshot_id"]] * 1000
            parts.append(part.append_column("gold_us", pa.array([visible_us] * part.num_rows, pa.int64())))
    rows = (pa.concat_tables(parts) if parts
            else pa.table({"message_id": pa.array([], pa.string()), "ingestion_timestamp": pa.array([], pa.int64()),
                           "gold_us": pa.array([], pa.int64())}))
    producer = rows.column("ingestion_timestamp")
    if pa.types.is_timestamp(producer.type):
        producer = producer.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return {"message_id": rows.column("message_id"),
            "producer_us": producer.to_numpy(),
            "gold_us": rows.column("gold_us").to_numpy()}


def read_airflow(settings: Settings) -> tuple[list[an.TaskTry], list[dict[str, Any]]]:
    """Every task try (task_instance + task_instance_history) and DAG run of the metadata DB."""
    from lakehouse.bench import sustained_analysis as an
    from lakehouse.orchestration.environment import metadata_db_path

    path = metadata_db_path(settings)
    if not path.exists():
        return [], []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    tries: dict[tuple[Any, ...], an.TaskTry] = {}
    runs: list[dict[str, Any]] = []
    try:
        for table in ("task_instance_history", "task_instance"):  # the current try wins
            try:
                rows = con.execute(f"SELECT dag_id, task_id, run_id, map_index, try_number, state, start_date, "  # noqa: S608
                                   f"end_date, duration FROM {table}").fetchall()
            except sqlite3.OperationalError as err:
                log.warning("cannot read %s: %s", table, err)
                continue
            for dag_id, task_id, run_id, map_index, try_number, state, start, end, duration in rows:
                tries[(dag_id, task_id, run_id, map_index, try_number)] = an.TaskTry(
                    dag_id=dag_id, task_id=task_id, run_id=run_id, try_number=int(try_number or 0), state=state,
                    start=an.parse_time(start), end=an.parse_time(end),
                    duration=float(duration) if duration is not None else None)
        try:
            for dag_id, run_id, state, queued, start, end in con.execute(
                    "SELECT dag_id, run_id, state, queued_at, start_date, end_date FROM dag_run"):
                runs.append({"dag_id": dag_id, "run_id": run_id, "state": state, "queued_at": an.parse_time(queued),
                             "start": an.parse_time(start), "end": an.parse_time(end)})
        except sqlite3.OperationalError as err:
            log.warning("cannot read dag_run: %s", err)
    finally:
        con.close()
    return list(tries.values()), runs


def read_alerts(settings: Settings) -> list[dict[str, Any]]:
    from lakehouse.orchestration.alerts import alerts_log_path

    out = []
    try:
        lines = alerts_log_path(settings).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


def report_phases() -> tuple[str, ...]:
    try:
        from lakehouse.runreport import PHASES
    except ImportError:
        return FALLBACK_PHASES
    return tuple(PHASES)


def read_run_reports(settings: Settings, layer: str) -> list[dict[str, Any]]:
    """The layer's run reports, or none when the layers do not write them (yet)."""
    from lakehouse import names

    try:
        directory = names.run_report_dir(settings, layer)
    except AttributeError:
        directory = settings.run_dir / "reports" / layer
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                out.append(data)
    return out


# --- the run ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Collected:
    """Everything measured during the run (the input of :func:`analyze`)."""

    rate: float
    minutes: float
    drain_minutes: float
    warmup_s: float
    exchanges: tuple[str, ...]
    home: str
    t0: float = 0.0
    stopped_at: float = 0.0
    ended_at: float = 0.0
    samples: list[an.Sample] = dataclasses.field(default_factory=list)
    machine: list[dict[str, float]] = dataclasses.field(default_factory=list)
    producers: dict[str, Any] = dataclasses.field(default_factory=dict)
    floors: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    tail: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    produced: tuple[Any, Any] = ((), ())  # (producer times s, message_ids) of every record, from the tail consumer


def _say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP end the run like Ctrl-C does: through the ``finally`` that stops everything."""
    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _sample_until(until: float, sampler: Sampler, procs: Processes, tail: TailConsumer, got: Collected,
                  check_producers: bool) -> None:
    import psutil

    next_progress = time.time()
    while True:
        tick = time.time()
        if check_producers:
            procs.check_alive()
        elif procs.supervisor is not None and procs.supervisor.poll() is not None:
            raise BenchError(f"run-all exited with code {procs.supervisor.returncode}; last lines of "
                             f"{procs.supervisor_log}:\n{_tail(procs.supervisor_log)}")
        procs.track()
        sample = sampler.sample()
        got.samples.append(sample)
        got.machine.append({"t": sample.t, "cpu_pct": psutil.cpu_percent(interval=None),
                            "load1": os.getloadavg()[0]})
        if tick >= next_progress:
            elapsed = tick - got.t0
            tables = ", ".join(f"{k} {v:,}" for k, v in sample.tables.items()) or "tables busy"
            _say(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] produced {tail.count:,} "
                 f"(reported ends {sample.end_offsets if sample.end_offsets is not None else '?'}), {tables}")
            next_progress = tick + PROGRESS_EVERY_S
        if tick >= until:
            return
        time.sleep(max(0.0, min(SAMPLE_EVERY_S - (time.time() - tick), until - time.time())))


def _measure(args: argparse.Namespace, env: dict[str, str], settings: Settings, procs: Processes, got: Collected,
             out_dir: Path, rate_each: float) -> int:
    """Floor, stack, producers, sampling, drain; always stops everything. 0, 1 (failed) or 130 (interrupted)."""
    from lakehouse.catalog import prepare_catalog_db

    tail: TailConsumer | None = None
    sampler: Sampler | None = None
    code = 0
    try:
        if not args.no_floor:
            prepare_catalog_db(settings)
            _say("floor: a bare spark-submit of the project's Spark session (before the stack starts)")
            got.floors["idle"] = measure_floor(settings, env, procs, out_dir, "idle")
        _say(f"starting run-all --no-producers (log {procs.supervisor_log})")
        procs.start_supervisor()
        procs.wait_ready()
        tail = TailConsumer(settings)
        tail.start()
        sampler = Sampler(settings)
        got.t0 = time.time()
        procs.start_producers(rate_each)
        _say(f"producers started; steady state from minute {args.warmup_minutes:g}")
        _sample_until(got.t0 + args.minutes * 60, sampler, procs, tail, got, check_producers=True)
        got.stopped_at = time.time()
        got.producers = procs.stop_producers()
        _say(f"producers stopped after {got.stopped_at - got.t0:.0f}s: "
             + ", ".join(f"{ex} {s.get('produced', '?')} trades (exit {s.get('exit_code')})"
                         for ex, s in got.producers.items()))
        _sample_until(got.stopped_at + args.drain_minutes * 60, sampler, procs, tail, got, check_producers=False)
        got.ended_at = time.time()
        deadline = time.monotonic() + TAIL_CATCH_UP_S
        while not tail.caught_up(sampler.reported_ends()) and time.monotonic() < deadline and tail.is_alive():
            time.sleep(1)
        if not tail.caught_up(sampler.reported_ends()):
            got.notes.append("the Kafka tail consumer had not reached the end of every partition")
        if not args.no_floor:
            _say("floor: the same spark-submit while Airflow runs (after the drain)")
            got.floors["with_airflow"] = measure_floor(settings, env, procs, out_dir, "with_airflow")
    except BenchError as err:
        _say(f"error: {err}")
        code = 1
    except (KeyboardInterrupt, Interrupted) as err:
        _say(f"interrupted ({err or 'Ctrl-C'}): stopping everything")
        code = 130
    finally:
        try:
            if tail is not None:
                tail.stop()
                got.tail = {"count": tail.count, "per_exchange": tail.per_exchange, "error": tail.error,
                            "without_timestamp": tail.without_timestamp, "without_message_id": tail.without_id}
                got.produced = tail.arrays()
            if sampler is not None:
                sampler.close()
        finally:
            procs.stop_all(_say)
    return code


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when it ran to the end (whatever the figures), 1 when it could not."""
    import psutil

    from lakehouse.bench import sustained_analysis as an
    from lakehouse.settings import SettingsError, load_settings

    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-sustained-"))
    env = bench_environment(home, args.settings)
    try:
        settings = load_settings(env)
    except SettingsError as err:
        print(f"lakehouse: error: {err}", file=sys.stderr)
        shutil.rmtree(home, ignore_errors=True)
        return 2
    rate_each = args.rate / len(settings.exchanges)
    env["LAKEHOUSE_PRODUCER_RATE"] = f"{rate_each:g}"
    settings = load_settings(env)
    if args.out is not None:
        out_dir = args.out.resolve()
    elif args.cleanup:
        out_dir = Path(tempfile.mkdtemp(prefix="lakehouse-bench-sustained-report-"))
    else:
        out_dir = home / "bench-report"
    out_dir.mkdir(parents=True, exist_ok=True)
    got = Collected(rate=args.rate, minutes=args.minutes, drain_minutes=args.drain_minutes,
                    warmup_s=args.warmup_minutes * 60, exchanges=tuple(settings.exchanges), home=str(home))
    procs = Processes(env, settings)
    _say(f"sustained benchmark: {args.rate:g} trades/s ({rate_each:g}/s on each of {', '.join(settings.exchanges)}) "
         f"for {args.minutes:g} min, then {args.drain_minutes:g} min drain; home {home}")
    psutil.cpu_percent(interval=None)
    with _terminate_as_interrupt():
        code = _measure(args, env, settings, procs, got, out_dir, rate_each)
    if code != 0:
        _say(f"no report: the temporary home is kept for inspection: {home}")
        return code
    produced_ts, produced_ids = got.produced
    report, figures = analyze(got, settings, produced_ts, produced_ids)
    report_path = out_dir / "sustained.json"
    report_path.write_text(json.dumps(report, indent=1, default=_json_default))
    chart_path = out_dir / "sustained.png"
    try:
        draw_chart(report, chart_path)
    except (ImportError, OSError, ValueError) as err:
        _say(f"warning: no chart: {err}")
    for name, value, unit in figures:
        _say(an.bench_line(name, value, unit))
    for note in report["notes"]:
        _say(f"note: {note}")
    _say(f"report: {report_path}")
    _say(f"chart:  {chart_path}")
    if args.cleanup:
        shutil.rmtree(home, ignore_errors=True)
        _say(f"removed the temporary home {home}")
    else:
        _say(f"temporary home kept: {home} (logs in {settings.log_dir}; delete it when done)")
    return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


# --- analysis of one run ----------------------------------------------------------------------------

def analyze(got: Collected, settings: Settings, produced_ts: np.ndarray, produced_ids: pa.Array
            ) -> tuple[dict[str, Any], list[tuple[str, float | None, str]]]:
    """The report (JSON) and the BENCH figures of a finished run."""
    import numpy as np
    import pyarrow as pa

    from lakehouse import names
    from lakehouse.bench import sustained_analysis as an

    produced_ts = np.asarray(produced_ts, dtype=np.float64)
    if not isinstance(produced_ids, pa.Array):
        produced_ids = pa.array(list(produced_ids), type=pa.string())
    notes = list(got.notes)
    t0 = got.t0
    window = an.steady_window(t0, got.stopped_at, got.warmup_s)
    if window is None:
        notes.append(f"the run was not longer than the warm-up ({got.warmup_s:.0f}s): no steady-state figures")
    after_warmup = t0 + got.warmup_s
    sorted_ts = np.sort(produced_ts) if produced_ts.size else None
    if got.tail.get("error") or sorted_ts is None:
        notes.append(f"no per-record producer times ({got.tail.get('error') or 'nothing consumed'}): "
                     "produced counts come from the reported topic end offsets")
        sorted_ts = None
    if got.tail.get("without_timestamp"):
        notes.append(f"{got.tail['without_timestamp']} Kafka records had no timestamp (taken as consumption time)")
    last_ends = next((s.end_offsets for s in reversed(got.samples) if s.end_offsets is not None), None)
    if last_ends is not None and sorted_ts is not None and last_ends > sorted_ts.size:
        notes.append(f"the broker reported {last_ends} records at the end, the tail consumer read only "
                     f"{sorted_ts.size}: produced counts are too low")
    elif last_ends is not None and sorted_ts is not None and last_ends < sorted_ts.size:
        notes.append(f"the broker's ListOffsets under-reports the end: {last_ends} reported at the end, "
                     f"{sorted_ts.size} records read (the tail consumer's count is used)")
    producer_total = sum(int(s.get("produced", 0) or 0) for s in got.producers.values())
    if sorted_ts is not None and producer_total and producer_total != sorted_ts.size:
        notes.append(f"the producers reported {producer_total} trades produced, Kafka holds {sorted_ts.size}")

    series = an.lag_series(got.samples, sorted_ts)
    steady = [p for p in series if window is not None and p["t"] in window]
    # The drain ends a moment after its last whole minute: no minute row for those few seconds.
    minutes = max(1, math.ceil((got.ended_at - t0 - SAMPLE_EVERY_S) / 60))

    # Gold: freshness of every steady-state trade, and the ones missing.
    from pyiceberg.exceptions import NoSuchTableError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        gold = read_gold(settings)
    except (OSError, ValueError, NoSuchTableError, SQLAlchemyError) as err:
        notes.append(f"Gold not read: {err}")
        gold = None
    fresh: dict[str, Any] = {"count": 0, "p50": None, "p99": None, "max": None}
    missing: int | None = None
    fresh_minutes: list[dict[str, Any]] = []
    if gold is not None:
        everything = an.Window(t0, got.ended_at)
        all_times, all_fresh = an.freshness_seconds(gold["producer_us"], gold["gold_us"], everything)
        fresh_minutes = an.per_minute_stats(all_times, all_fresh, t0, minutes)
        if window is not None:
            _times, steady_fresh = an.freshness_seconds(gold["producer_us"], gold["gold_us"], window)
            fresh = an.summary(steady_fresh)
            if sorted_ts is not None:
                missing = an.missing_from_gold(produced_ids, produced_ts, gold["message_id"], window)
    per_minute = an.per_minute_table(got.samples, sorted_ts, t0, minutes)
    by_minute = {row["minute"]: row for row in fresh_minutes}
    for row in per_minute:
        f = by_minute.get(row["minute"], {})
        row.update({"gold_rows_by_producer_minute": f.get("count"), "freshness_p50_s": f.get("p50"),
                    "freshness_p99_s": f.get("p99"), "freshness_max_s": f.get("max")})

    # Airflow: task tries, DAG runs, alerts; the layers' run reports.
    layer_of_dag = {dag: layer for layer, dag in names.LAYER_DAGS.items()}
    tries, dag_runs = read_airflow(settings)
    tasks = an.task_summary(tries, layer_of_dag, window, after_warmup)
    run_latency: dict[str, Any] = {}
    for layer, dag in names.LAYER_DAGS.items():
        latencies = [r["end"] - r["queued_at"] for r in dag_runs if r["dag_id"] == dag and r["end"] and r["queued_at"]
                     and window is not None and r["queued_at"] in window]
        run_latency[layer] = {"runs": len(latencies), **an.summary(latencies)}
    alerts = read_alerts(settings)
    deadline = an.alert_counts(alerts, "deadline_missed", after_warmup)
    task_failed_alerts = an.alert_counts(alerts, "task_failed", after_warmup)
    phases = report_phases()
    costs = {layer: an.phase_medians(read_run_reports(settings, layer), phases, window) for layer in names.LAYERS}
    if not any(c["runs"] for c in costs.values()):
        notes.append("no layer run reports in the steady state (<home>/run/reports/<layer>/*.json): phases are n/a")

    def steady_values(key: str) -> list[float]:
        return [float(p[key]) for p in steady if p.get(key) is not None]

    gold_points = [(p["t"], p["gold"]) for p in steady if p["gold"] is not None]
    gold_slope = an.linear_slope([t for t, _ in gold_points], [g for _, g in gold_points])
    produced_rate = None
    if window is not None and sorted_ts is not None:
        produced_rate = (an.produced_by(sorted_ts, window.end) - an.produced_by(sorted_ts, window.start)) / window.seconds
    first_gold = next((p["t"] - t0 for p in series if p["t"] >= t0 and (p["gold"] or 0) > 0), None)
    cpu = [m["cpu_pct"] for m in got.machine if window is not None and m["t"] in window]
    lag_end = next((p["lag"] for p in reversed(series) if p["lag"] is not None), None)

    figures: list[tuple[str, float | None, str]] = [
        ("sustained_rate_target", got.rate, "trades/s"),
        ("sustained_produced_rows_per_s", produced_rate, "rows/s"),
        ("sustained_gold_rows_per_s", gold_slope, "rows/s"),
        ("sustained_produced_records", float(sorted_ts.size) if sorted_ts is not None else last_ends, "count"),
        ("sustained_first_gold_s", first_gold, "s"),
        ("sustained_gold_freshness_p50_s", fresh["p50"], "s"),
        ("sustained_gold_freshness_p99_s", fresh["p99"], "s"),
        ("sustained_gold_freshness_max_s", fresh["max"], "s"),
        ("sustained_gold_steady_rows", fresh["count"], "count"),
        ("sustained_missing_from_gold", missing, "count"),
        ("sustained_lag_slope_min5_15", an.lag_slope(series, t0, 5, 15, got.stopped_at), "rec/min"),
        ("sustained_lag_slope_steady", an.lag_slope(series, t0, got.warmup_s / 60, (got.stopped_at - t0) / 60,
                                                    got.stopped_at) if window else None, "rec/min"),
        ("sustained_lag_max_records", max(steady_values("lag"), default=None), "count"),
        ("sustained_lag_end_records", lag_end, "count"),
        ("sustained_seconds_behind_p50_s", an.percentile(steady_values("seconds_behind"), 50), "s"),
        ("sustained_seconds_behind_max_s", max(steady_values("seconds_behind"), default=None), "s"),
    ]
    for layer in names.LAYERS:
        t = tasks.get(layer, {})
        figures += [(f"sustained_{layer}_task_p50_s", t.get("duration_p50_s"), "s"),
                    (f"sustained_{layer}_task_max_s", t.get("duration_max_s"), "s"),
                    (f"sustained_{layer}_dagrun_p50_s", run_latency[layer]["p50"], "s"),
                    (f"sustained_{layer}_dagrun_max_s", run_latency[layer]["max"], "s")]
    figures += [
        ("sustained_failed_tasks", sum(t["failed"] for t in tasks.values()), "count"),
        ("sustained_failed_tasks_after_warmup", sum(t["failed_after_warmup"] for t in tasks.values()), "count"),
        ("sustained_deadline_alerts", deadline["total"], "count"),
        ("sustained_deadline_alerts_after_warmup", deadline["after_warmup"], "count"),
    ]
    for layer in names.LAYERS:
        figures.append((f"sustained_{layer}_run_reports", costs[layer]["runs"], "count"))
        for phase in phases:
            figures.append((f"{layer}_{phase}_s", costs[layer]["phases"].get(phase), "s"))
        # CPU of the run's Spark processes (JVM, Python driver and workers) up to its finish.
        cpu_reports = [{**r, "phases": {"cpu": r.get("cpu_s")}} for r in read_run_reports(settings, layer)]
        figures.append((f"{layer}_cpu_s", an.phase_medians(cpu_reports, ("cpu",), window)["phases"].get("cpu"), "s"))
    for label, prefix in (("idle", "spark_session_floor"), ("with_airflow", "spark_session_floor_with_airflow")):
        floor = got.floors.get(label, {})
        ok = floor.get("exit_code") == 0
        figures += [(f"{prefix}_s", floor.get("wall_s") if ok else None, "s"),
                    (f"{prefix}_cpu_s", floor.get("cpu_s") if ok else None, "s"),
                    (f"{prefix}_startup_s", floor.get("startup_s") if ok else None, "s")]
        if floor and not ok:
            notes.append(f"floor ({label}) failed: exit {floor.get('exit_code')} {floor.get('error', '')}")
    figures.append(("sustained_machine_cpu_pct", sum(cpu) / len(cpu) if cpu else None, "%"))

    report = {
        "config": {"rate": got.rate, "rate_per_exchange": got.rate / len(got.exchanges), "minutes": got.minutes,
                   "drain_minutes": got.drain_minutes, "warmup_s": got.warmup_s, "exchanges": got.exchanges,
                   "home": got.home, "sample_every_s": SAMPLE_EVERY_S},
        "timeline": {"producers_started_at": t0, "producers_stopped_at": got.stopped_at, "ended_at": got.ended_at,
                     "steady_window": dataclasses.asdict(window) if window else None},
        "figures": {name: {"value": value, "unit": unit} for name, value, unit in figures},
        "per_minute": per_minute,
        "series": [{**p, "t_min": (p["t"] - t0) / 60,
                    "tables": dict(s.tables), "end_offsets": s.end_offsets} for p, s in zip(series, got.samples)],
        "machine": got.machine,
        "freshness_steady": fresh,
        "missing_from_gold": missing,
        "producers": got.producers,
        "tail_consumer": got.tail,
        "airflow": {"tasks": tasks, "dag_run_latency": run_latency,
                    "tries": [dataclasses.asdict(t) for t in tries]},
        "alerts": {"deadline_missed": deadline, "task_failed": task_failed_alerts, "items": alerts},
        "run_reports": costs,
        "floors": got.floors,
        "notes": notes,
    }
    return report, figures


def draw_chart(report: Mapping[str, Any], path: Path) -> None:
    """Lag (records), seconds behind and Gold freshness, layer row counts, and task durations over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lakehouse.bench import sustained_analysis as an

    t0 = report["timeline"]["producers_started_at"]
    stop_min = (report["timeline"]["producers_stopped_at"] - t0) / 60
    warm_min = report["config"]["warmup_s"] / 60
    series = report["series"]
    minutes = report["per_minute"]
    fig, axes = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    fig.suptitle(f"Sustained load: {report['config']['rate']:g} trades/s for {report['config']['minutes']:g} min "
                 f"({', '.join(report['config']['exchanges'])})")

    def xs(points: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
        kept = [p for p in points if p.get(key) is not None]
        return [p["t_min"] for p in kept], [float(p[key]) for p in kept]

    ax = axes[0]
    ax.plot(*xs(series, "lag"), color="tab:red", lw=1, label="lag = produced - Gold (samples)")
    ends = [m for m in minutes if m["lag"] is not None and m["sample_t"] is not None]
    ax.plot([(m["sample_t"] - t0) / 60 for m in ends], [m["lag"] for m in ends], "o", color="tab:red", ms=4,
            label="last sample of each minute")
    ax.set_ylabel("records")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[1]
    ax.plot(*xs(series, "seconds_behind"), color="tab:purple", lw=1, label="seconds behind (oldest record not in Gold)")
    for key, style, label in (("freshness_p50_s", "s-", "Gold freshness p50 (by producer minute)"),
                              ("freshness_p99_s", "^-", "Gold freshness p99"),
                              ("freshness_max_s", "v:", "Gold freshness max")):
        kept = [m for m in minutes if m.get(key) is not None]
        ax.plot([m["minute"] - 0.5 for m in kept], [m[key] for m in kept], style, ms=4, lw=1, label=label)
    ax.set_ylabel("seconds")
    ax.legend(loc="best", fontsize=8)

    ax = axes[2]
    ax.plot(*xs(series, "produced"), color="black", lw=1, label="produced")
    for layer, color in (("bronze", "tab:brown"), ("silver", "tab:gray"), ("gold", "goldenrod")):
        kept = [p for p in series if p["tables"].get(layer) is not None]
        ax.plot([p["t_min"] for p in kept], [p["tables"][layer] for p in kept], color=color, lw=1, label=layer)
    ax.set_ylabel("records (cumulative)")
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[3]
    markers = {"bronze_ingestion": ("o", "tab:brown"), "silver_transformation": ("s", "tab:gray"),
               "gold_aggregation": ("^", "goldenrod")}
    for dag_id, (marker, color) in markers.items():
        tries = [t for t in report["airflow"]["tries"] if t["dag_id"] == dag_id and t["start"] and t["duration"]]
        groups = (("success", {"marker": marker, "color": color}, dag_id),
                  ("skipped", {"marker": marker, "color": color, "mfc": "none"}, f"{dag_id} skipped"),
                  ("failed", {"marker": "x", "color": "red"}, f"{dag_id} failed"))
        for state, style, label in groups:
            mine = [t for t in tries if (t["state"] in an.FAILED_STATES if state == "failed" else t["state"] == state)]
            if mine:
                ax.plot([(t["start"] - t0) / 60 for t in mine], [t["duration"] for t in mine], ls="", ms=5,
                        label=label, **style)
    ax.set_ylabel("task duration, s")
    ax.set_xlabel("minutes since the producers started")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)

    for ax in axes:
        ax.axvspan(0.0, warm_min, color="0.9", zorder=0)
        ax.axvline(stop_min, color="black", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].text(warm_min, axes[0].get_ylim()[1], " warm-up ends", va="top", fontsize=8)
    axes[0].text(stop_min, axes[0].get_ylim()[1], " producers stop", va="top", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["BenchError", "Collected", "Processes", "Sampler", "TailConsumer", "add_arguments", "add_commands",
           "analyze", "bench_environment", "draw_chart", "main", "measure_floor", "run"]
