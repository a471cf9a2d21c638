"""``make run``: the embedded stack, replay producers and Airflow standalone, in the foreground.

Start order: stack (broker, topics, schemas, tables) -> Airflow prepared (metadata DB, Spark pool,
layer DAGs unpaused) -> one replay producer per exchange -> ``airflow standalone``. Every child
runs in its own session; Ctrl-C or SIGTERM stops them in reverse dependency order and then sweeps
each session, so Spark drivers and task processes started by Airflow go too, and finally stops
the broker. Committed data is never at risk: every layer commits atomically to Iceberg and a
killed run is retried from its last commit. (The embedded broker keeps topics in memory, so
records produced but not yet in Bronze are discarded on stop; the replay producers regenerate
them on the next start.)

Run it with ``make run``, ``lakehouse run-all`` or ``python -m lakehouse.orchestration.supervisor``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TextIO

import psutil

from lakehouse import names, stack
from lakehouse.broker import port_open
from lakehouse.orchestration import environment
from lakehouse.orchestration.alerts import alerts_log_path
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

UI_TIMEOUT_S = 240.0
PROGRESS_EVERY_S = 30.0


class Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM/SIGHUP: shut everything down."""


class ChildFailed(RuntimeError):
    """A process ``make run`` depends on exited on its own; the message has its log tail."""


def producer_argv(settings: Settings, exchange: str, replay: Path | None) -> list[str]:
    """``lakehouse produce`` in endless replay mode at the configured rate."""
    argv = [sys.executable, "-m", "lakehouse", "produce", "--exchange", exchange,
            "--rate", f"{settings.producer_rate:g}", "--loop"]
    if replay is not None:
        argv += ["--replay", str(replay)]
    return argv


def session_members(sid: int) -> list[psutil.Process]:
    """Every live process of session ``sid``, including orphans re-parented to init."""
    members = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


@dataclass
class Child:
    """A process started in its own session, with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, first: signal.Signals, group: bool, grace_s: float, force: Callable[[], bool]) -> None:
        """Send ``first`` (to the process or its group), wait up to ``grace_s``, then terminate and
        kill whatever is left in the child's session."""
        if self.proc is None:
            return
        sid = self.proc.pid
        if self.proc.poll() is None:
            try:
                if group:
                    os.killpg(self.proc.pid, first)
                else:
                    self.proc.send_signal(first)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace_s
            while self.proc.poll() is None and time.monotonic() < deadline and not force():
                time.sleep(0.2)
        leftovers = session_members(sid)
        for proc in leftovers:
            try:
                proc.terminate()
            except psutil.Error:
                continue
        _gone, alive = psutil.wait_procs(leftovers, timeout=0 if force() else 10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(alive, timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._log is not None:
            self._log.close()


class Supervisor:
    """Starts the product, prints where to look, watches the children, stops everything."""

    def __init__(self, settings: Settings, producers: bool = True, replay: dict[str, Path] | None = None,
                 out: TextIO | None = None) -> None:
        self.settings = settings
        self.with_producers = producers
        self.replay = replay or {}
        self.out = out or sys.stdout
        self.children: list[Child] = []
        self._stopping = False
        self._force = False
        self._started_at = time.monotonic()
        self._gold_seen_after: float | None = None

    # --- output ------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # --- signals -----------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping:
            self._force = True  # a second Ctrl-C: stop without grace periods
            return
        self._stopping = True
        raise Stop(signal.Signals(signum).name)

    def _install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # --- lifecycle ---------------------------------------------------------------------------
    def run(self) -> int:
        """Run until a signal (exit 0) or until a child fails (exit 1); always stop everything."""
        self._install_signals()
        code = 0
        try:
            self.start()
            self.banner()
            self.watch()
        except Stop as sig:
            self.say(f"\n{sig}: stopping (Ctrl-C again to skip the grace periods)")
        except (ChildFailed, environment.AirflowCommandError) as err:
            self._stopping = True
            self.say(f"\nerror: {err}")
            code = 1
        finally:
            self._stopping = True
            self.stop()
        return code

    def start(self) -> None:
        s = self.settings
        self.say(f"starting the embedded stack (home {s.home})")
        result = stack.up(s)
        self.say(f"  kafka {result.get('bootstrap')}, tables ready")
        env = environment.airflow_env(s)
        self.say(f"preparing Airflow (home {s.airflow_home_path}): metadata DB, pool "
                 f"'{names.SPARK_POOL}' ({s.airflow_spark_pool_slots} slots), unpausing the layer DAGs")
        environment.prepare(s, env, unpause=environment.LAYER_DAG_IDS)
        if self.with_producers:
            for exchange in s.exchanges:
                child = Child(f"producer-{exchange}", producer_argv(s, exchange, self.replay.get(exchange)),
                              {**os.environ, **s.env()}, s.log_dir / f"producer-{exchange}.log")
                child.start()
                self.children.append(child)
            self.say(f"producers: {', '.join(s.exchanges)} replaying at {s.producer_rate:g} trades/s each")
        airflow = Child("airflow", environment.airflow_argv(["standalone"]), env, s.log_dir / "airflow-standalone.log")
        airflow.start()
        self.children.append(airflow)
        self.say(f"starting Airflow standalone on port {s.airflow_port} (log {airflow.log_path})")
        self._wait_for_ui()

    def _wait_for_ui(self) -> None:
        deadline = time.monotonic() + UI_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_children()
            if port_open("127.0.0.1", self.settings.airflow_port):
                # Standalone writes the generated admin password at start; give it a moment.
                password_deadline = min(deadline, time.monotonic() + 15)
                while not environment.password_file(self.settings).exists() and time.monotonic() < password_deadline:
                    time.sleep(0.5)
                return
            time.sleep(1)
        raise ChildFailed(f"the Airflow UI did not come up on port {self.settings.airflow_port} within "
                          f"{UI_TIMEOUT_S:.0f}s; see {self.settings.log_dir / 'airflow-standalone.log'}")

    def admin_password(self) -> str:
        path = environment.password_file(self.settings)
        try:
            return str(json.loads(path.read_text()).get("admin", "(see " + str(path) + ")"))
        except (OSError, ValueError):
            return f"(see {path})"

    def banner(self) -> None:
        s = self.settings
        gold = names.GOLD_TABLE
        self.say()
        self.say("lakehouse is running. Ctrl-C stops everything.")
        self.say(f"  Airflow UI   {environment.api_url(s)}   user admin   password {self.admin_password()}")
        self.say(f"  DAGs         {', '.join(environment.LAYER_DAG_IDS)} (every minute); "
                 f"manual: {names.SILVER_REPLAY_DAG}, {names.DLQ_REPLAY_DAG}")
        self.say("  status       lakehouse status")
        self.say(f"  query Gold   lakehouse sql \"select exchange, count(*) from {gold} group by exchange\"")
        self.say(f"  trigger      lakehouse airflow dags trigger {names.GOLD_DAG}")
        self.say(f"  alerts       {alerts_log_path(s)}")
        self.say(f"  logs         {s.log_dir} (producers, Airflow); task logs under {s.airflow_home_path / 'logs'}")
        self.say()

    def _check_children(self) -> None:
        for child in self.children:
            code = child.exit_code()
            if code is not None:
                raise ChildFailed(f"{child.name} exited with code {code}; last lines of {child.log_path}:\n"
                                  f"{child.tail()}")

    def watch(self) -> None:
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        while True:
            self._check_children()
            if time.monotonic() >= next_progress:
                self.progress()
                next_progress = time.monotonic() + PROGRESS_EVERY_S
            time.sleep(1)

    def progress(self) -> None:
        """One line of row counts per layer, from the tables' snapshot summaries (no Spark)."""
        counts = table_counts(self.settings)
        if counts is None:
            return
        layer = {
            "bronze": sum(counts.get(names.bronze_table(ex), 0) for ex in self.settings.exchanges),
            "silver": sum(counts.get(names.silver_table(ex), 0) for ex in self.settings.exchanges),
            "dlq": counts.get(names.DLQ_TABLE, 0),
            "gold": counts.get(names.GOLD_TABLE, 0),
        }
        elapsed = time.monotonic() - self._started_at
        if layer["gold"] and self._gold_seen_after is None:
            self._gold_seen_after = elapsed
            self.say(f"first Gold rows {elapsed:.0f}s after start")
        self.say(f"[{int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] rows: " +
                 ", ".join(f"{k} {v:,}" for k, v in layer.items()))

    def stop(self) -> None:
        """Producers first (upstream), then Airflow (its standalone stops the scheduler, which stops
        running tasks; a session sweep catches any Spark driver left), then the broker."""
        force = lambda: self._force  # noqa: E731
        for child in self.children:
            self.say(f"stopping {child.name}")
            if child.name.startswith("producer-"):
                # SIGINT to the group: the producer flushes what it has buffered, then exits.
                child.stop(signal.SIGINT, group=True, grace_s=15, force=force)
            else:
                # SIGINT to standalone only: it terminates its components and waits for them.
                child.stop(signal.SIGINT, group=False, grace_s=45, force=force)
        self.say("stopping the embedded stack")
        stack.down(self.settings)
        left = [p for child in self.children if child.proc is not None for p in session_members(child.pid)]
        if left:
            self.say(f"warning: processes still running: {[p.pid for p in left]}")
        else:
            self.say("stopped; no process left running")


def table_counts(settings: Settings) -> dict[str, int] | None:
    """Rows per table from the current snapshot summaries, or None if the catalog is busy."""
    from pyiceberg.exceptions import NoSuchTableError
    from sqlalchemy.exc import SQLAlchemyError

    from lakehouse.catalog import load_catalog

    out: dict[str, int] = {}
    try:
        catalog = load_catalog(settings)
        for table_name in names.all_tables(settings):
            try:
                snap = catalog.load_table(table_name).current_snapshot()
            except NoSuchTableError:
                continue
            if snap is not None and snap.summary is not None and "total-records" in snap.summary:
                out[table_name] = int(snap.summary["total-records"])
    except (SQLAlchemyError, OSError) as err:  # a busy SQLite catalog only skips this progress line
        log.debug("progress skipped: %s", err)
        return None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lakehouse.orchestration.supervisor``: same as ``lakehouse run-all``."""
    from lakehouse.cli import main as cli_main

    return cli_main(["run-all", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
