"""What ``make run`` runs (``lakehouse run-all``), in a temp home on free ports: the Airflow UI comes
up, Gold fills with trades from both exchanges, and SIGTERM leaves no process behind.

The seconds to UI and to Gold are printed (a figure, not an assertion: performance is measured,
never asserted by a timed test); the timeouts below only bound a hung run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import free_port, make_env

from lakehouse import names
from lakehouse.broker import port_open
from lakehouse.catalog import load_catalog
from lakehouse.orchestration.environment import ui_healthy
from lakehouse.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def _wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path,
              timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run-all exited ({proc.returncode}) before {what}:\n{_tail(log)}")
        if check():
            return
        time.sleep(5)
    raise AssertionError(f"no {what} within {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _gold_exchanges(settings: Settings) -> set[str]:
    catalog = load_catalog(settings)
    if not catalog.table_exists(names.GOLD_TABLE):
        return set()
    rows = catalog.load_table(names.GOLD_TABLE).scan(selected_fields=("exchange",)).to_arrow()
    return {str(exchange).lower() for exchange in rows.column("exchange").to_pylist()}  # V2 says BINANCE


def _tree(root: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.timeout(1800)
def test_run_all_serves_the_ui_fills_gold_and_stops_without_leftovers(tmp_path: Path) -> None:
    lakehouse_env = make_env(tmp_path / "home", LAKEHOUSE_AIRFLOW_PORT=str(free_port()))
    settings = load_settings(lakehouse_env)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "AIRFLOW"))}
    env.update(lakehouse_env)
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    log = tmp_path / "run-all.log"

    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lakehouse", "run-all"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    seen: dict[int, psutil.Process] = {}
    try:
        _wait_for("Airflow UI", lambda: ui_healthy(settings), proc, log, timeout_s=600)
        ui_s = time.monotonic() - started
        assert "password" in log.read_text()

        def gold_has_both() -> bool:
            for p in _tree(proc.pid):  # remember every process run-all started, to check the stop
                seen.setdefault(p.pid, p)
            return _gold_exchanges(settings) >= set(settings.exchanges)

        _wait_for("Gold rows from every exchange", gold_has_both, proc, log, timeout_s=1200)
        print(f"\nrun-all: UI after {ui_s:.0f}s, Gold with {', '.join(settings.exchanges)} after "
              f"{time.monotonic() - started:.0f}s")
        for p in _tree(proc.pid):
            seen.setdefault(p.pid, p)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            for p in _tree(proc.pid):
                p.kill()
            raise

    assert code == 0, _tail(log)
    assert "no process left running" in log.read_text(), _tail(log)
    left = [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [p.cmdline() for p in left]
    assert not port_open("127.0.0.1", settings.airflow_port)
    assert not port_open(settings.kafka_host, settings.kafka_port)
