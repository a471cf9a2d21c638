"""What ``make run`` runs (``lakehouse run-all``), in a temp home on free ports: the Airflow UI comes
up, Gold fills with trades from both exchanges, the maintenance DAGs run on their schedules without
anyone unpausing them, the README's manual triggers (``lakehouse airflow dags trigger``) get runs
that succeed, pausing the Silver DAG makes the monitor's Silver figures grow and its job-down alert
fire as a warning then as critical (once each) and resolve once Silver is unpaused, and SIGTERM
leaves no process behind.

The seconds to UI and to Gold are printed (a figure, not an assertion: performance is measured,
never asserted by a timed test); the timeouts below only bound a hung run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from support import free_port, make_env

from lakehouse import names
from lakehouse.broker import port_open
from lakehouse.catalog import load_catalog
from lakehouse.orchestration.alerts import alerts_log_path
from lakehouse.orchestration.environment import metadata_db_path, ui_healthy
from lakehouse.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


# The README's manual triggers, as a user types them; the DAGs that must run on their schedules.
DLQ_REPLAY_CONF = {"error_type": "invalid_timestamp"}
SCHEDULED = (names.MAINTENANCE_DAG, names.DLQ_RETENTION_DAG)


def _runs(settings: Settings) -> tuple[dict[tuple[str, str], str], dict[str, bool]]:
    """(dag_id, run_type) -> state of its latest run, and dag_id -> paused, from Airflow's metadata database."""
    db = metadata_db_path(settings)
    if not db.exists():
        return {}, {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        runs = conn.execute("SELECT dag_id, run_type, state FROM dag_run ORDER BY id").fetchall()
        paused = conn.execute("SELECT dag_id, is_paused FROM dag").fetchall()
    return ({(dag_id, run_type): state for dag_id, run_type, state in runs},
            {dag_id: bool(flag) for dag_id, flag in paused})


def _trigger(env: dict[str, str], dag_id: str, conf: dict[str, str] | None) -> None:
    args = [sys.executable, "-m", "lakehouse", "airflow", "dags", "trigger", dag_id]
    if conf is not None:
        args += ["--conf", json.dumps(conf)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(args[2:])}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def _tree(root: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# The monitor runs once a minute: a warning threshold more than a minute below the critical one
# guarantees a run that sees the warning before one sees the critical.
JOB_DOWN_WARNING_S, JOB_DOWN_CRITICAL_S = 30, 150


def _lakehouse(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lakehouse", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _silver_alerts(settings: Settings) -> list[tuple[str, str, str]]:
    """(event, severity, exchange) of every job_down alert on Silver in the alert log, in order."""
    path = alerts_log_path(settings)
    lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    return [(ln["event"], ln["severity"], ln["details"]["labels"]["exchange"]) for ln in lines
            if ln["details"].get("rule") == "job_down" and ln["details"]["labels"].get("layer") == "silver"]


def _silver_stalled(env: dict[str, str]) -> dict[str, float]:
    done = _lakehouse(env, "health", "--json")
    assert done.returncode in (0, 1, 2), done.stderr[-2000:]
    figures = json.loads(done.stdout)["figures"]
    return {f["labels"]["exchange"]: f["value"] for f in figures
            if f["name"] == "stalled_seconds" and f["labels"]["layer"] == "silver"}


def _silver_paused_alerts_then_resolves(env: dict[str, str], settings: Settings, proc: subprocess.Popen[bytes],
                                        log: Path) -> None:
    # A slow Silver run may already have raised a warning that is still open: the episode under test
    # starts after the last resolved message before the pause.
    episode_start = {}
    for ex in settings.exchanges:
        events = [e[0] for e in _silver_alerts(settings) if e[2] == ex]
        resolved = [i for i, event in enumerate(events) if event == "rule_resolved"]
        episode_start[ex] = resolved[-1] + 1 if resolved else 0
    paused = _lakehouse(env, "airflow", "dags", "pause", names.SILVER_DAG)
    assert paused.returncode == 0, paused.stdout[-2000:] + paused.stderr[-2000:]
    grown: list[dict[str, float]] = []

    def episode(ex: str) -> list[tuple[str, str]]:
        return [e[:2] for e in _silver_alerts(settings) if e[2] == ex][episode_start[ex]:]

    def warned_then_critical() -> bool:
        grown.append(_silver_stalled(env))
        return all(("rule_firing", "critical") in episode(ex) for ex in settings.exchanges)

    _wait_for("Silver's job_down alert at critical", warned_then_critical, proc, log, timeout_s=600)
    for ex in settings.exchanges:
        assert episode(ex) == [("rule_firing", "warning"), ("rule_firing", "critical")], _silver_alerts(settings)
        assert grown[-1][ex] > JOB_DOWN_CRITICAL_S and grown[-1][ex] > grown[0][ex], grown
    unpaused = _lakehouse(env, "airflow", "dags", "unpause", names.SILVER_DAG)
    assert unpaused.returncode == 0, unpaused.stdout[-2000:] + unpaused.stderr[-2000:]
    _wait_for("Silver's job_down alert resolved",
              lambda: all(("rule_resolved", "info") in episode(ex) for ex in settings.exchanges),
              proc, log, timeout_s=600)
    for ex in settings.exchanges:
        assert [e[0] for e in episode(ex)] == ["rule_firing", "rule_firing", "rule_resolved"], _silver_alerts(settings)
    runs, _ = _runs(settings)
    assert not {k: v for k, v in runs.items() if v == "failed"}, f"runs failed: {runs}\n{_tail(log)}"


@pytest.mark.timeout(2400)
def test_run_all_serves_the_ui_fills_gold_and_stops_without_leftovers(tmp_path: Path) -> None:
    lakehouse_env = make_env(tmp_path / "home", LAKEHOUSE_AIRFLOW_PORT=str(free_port()),
                             LAKEHOUSE_ALERT_JOB_DOWN_WARNING_S=str(JOB_DOWN_WARNING_S),
                             LAKEHOUSE_ALERT_JOB_DOWN_CRITICAL_S=str(JOB_DOWN_CRITICAL_S))
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
        _trigger(env, names.DLQ_REPLAY_DAG, DLQ_REPLAY_CONF)
        # Queued behind its scheduled run (one active run at a time); created unpaused, it runs next.
        _trigger(env, names.MAINTENANCE_DAG, None)
        replay = (names.DLQ_REPLAY_DAG, "manual")
        expected = {replay} | {(d, "scheduled") for d in SCHEDULED}
        gold_s: float | None = None

        def gold_has_both_and_runs_done() -> bool:
            nonlocal gold_s
            for p in _tree(proc.pid):  # remember every process run-all started, to check the stop
                seen.setdefault(p.pid, p)
            if gold_s is None and _gold_exchanges(settings) >= set(settings.exchanges):
                gold_s = time.monotonic() - started
            runs, paused = _runs(settings)
            failed = {k: v for k, v in runs.items() if v == "failed"}
            assert not failed, f"runs failed: {failed}\n{_tail(log)}"
            assert (names.MAINTENANCE_DAG, "manual") in runs and not paused[names.MAINTENANCE_DAG], (runs, paused)
            # A scheduled run that started shows the schedule works (the maintenance jobs themselves are
            # tested in tests/integration); the README's manual replay must finish.
            started_ok = all(runs.get(k) in ("running", "success") for k in expected - {replay})
            return gold_s is not None and started_ok and runs.get(replay) == "success"

        _wait_for("Gold rows from every exchange, scheduled maintenance runs, and a successful manual replay",
                  gold_has_both_and_runs_done, proc, log, timeout_s=1200)
        print(f"\nrun-all: UI after {ui_s:.0f}s, Gold with {', '.join(settings.exchanges)} after {gold_s:.0f}s, "
              f"scheduled maintenance started and the manual replay done after {time.monotonic() - started:.0f}s")
        _silver_paused_alerts_then_resolves(env, settings, proc, log)
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
