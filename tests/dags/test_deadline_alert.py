"""A run held past its deadline produces the alert: log line, StatsD counter, webhook call.

Real Airflow: the metadata DB is migrated, the DAGs are parsed into it, layer DAGs are triggered
while paused (so each run is held in the queue, as behind a stuck run), and a real scheduler and
triggerer mark the deadline missed and run the DAG's deadline callback.

First without a ``lakehouse_alerts`` connection (alert log + StatsD only), then with one created
the way an operator does in the UI, stored in Airflow's database (webhook too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from airflow_fixtures import Webhook, airflow_setup, statsd, statsd_lines, webhook  # noqa: F401 - fixtures

from lakehouse import names
from lakehouse.metrics import parse_line
from lakehouse.orchestration import environment
from lakehouse.orchestration.alerts import alerts_log_path


pytestmark = pytest.mark.slow


def _lakehouse(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "lakehouse", *args], env=env, text=True, capture_output=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _start(component: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    with open(log_dir / f"{component}.log", "wb") as out:
        return subprocess.Popen(environment.airflow_argv([component]), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _stop_session(proc: subprocess.Popen[bytes]) -> None:
    """Stop an Airflow component and everything it started (its own session)."""
    members = [p for p in psutil.process_iter() if _sid(p.pid) == proc.pid]
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(members, timeout=20)
    for p in alive:
        p.kill()
    proc.wait(10)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _logged_alerts(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_alert(path: Path, run_id: str, log_dir: Path, timeout_s: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for alert in _logged_alerts(path):
            if alert["run_id"] == run_id:
                return alert
        time.sleep(0.5)
    logs = "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-40:])
                     for f in sorted(log_dir.glob("*.log")))
    raise AssertionError(f"no alert for run {run_id}; component logs:\n{logs}")


def _tags(line: str) -> dict[str, str]:
    return parse_line(line, "lakehouse").tags


def test_runs_held_past_their_deadline_alert_through_every_channel(tmp_path: Path, webhook: Webhook,  # noqa: F811
                                                                   statsd) -> None:  # noqa: F811
    setup = airflow_setup(tmp_path, LAKEHOUSE_DEADLINE_BRONZE_S="3", LAKEHOUSE_DEADLINE_SILVER_S="3",
                          LAKEHOUSE_STATSD_PORT=str(statsd.getsockname()[1]))
    env = setup.env
    alerts = alerts_log_path(setup.settings)
    # `lakehouse airflow` prepares the home on first use (DB, pool, DAGs parsed), then triggers.
    # DAGs are paused at creation, so the run stays queued: held past its 3 s deadline.
    _lakehouse(["airflow", "dags", "trigger", names.BRONZE_DAG, "--run-id", "held-1"], env)

    components = [_start("scheduler", env, tmp_path), _start("triggerer", env, tmp_path)]
    try:
        # 1. No lakehouse_alerts connection: the alert log line and the StatsD counter.
        first = _wait_for_alert(alerts, "held-1", tmp_path)
        assert (first["event"], first["dag_id"], first["layer"]) == ("deadline_missed", names.BRONZE_DAG, "bronze")
        assert first["details"]["deadline_s"] == 3
        assert first["details"]["deadline_time"] and first["details"]["queued_at"]
        assert webhook.received.empty()

        # 2. The connection created as in the UI (stored in the metadata DB): the webhook too.
        _lakehouse(["airflow", "connections", "add", names.ALERTS_CONN_ID,
                    "--conn-json", json.dumps({"conn_type": "http", "host": webhook.url})], env)
        _lakehouse(["airflow", "dags", "trigger", names.SILVER_DAG, "--run-id", "held-2"], env)
        call = webhook.received.get(timeout=180)
    finally:
        for proc in components:
            _stop_session(proc)

    alert = call["json"]
    assert call["path"] == "/hooks/lakehouse"
    assert call["content_type"] == "application/json"
    assert (alert["event"], alert["dag_id"], alert["run_id"], alert["layer"]) == (
        "deadline_missed", names.SILVER_DAG, "held-2", "silver")
    assert alert["text"].startswith("[lakehouse warning] deadline_missed silver_transformation")

    counters = [_tags(ln) for ln in statsd_lines(statsd) if ln.startswith("lakehouse.alerts.") and ln.endswith(":1|c")]
    assert [(t["event"], t["dag_id"], t["layer"]) for t in counters] == [
        ("deadline_missed", names.BRONZE_DAG, "bronze"), ("deadline_missed", names.SILVER_DAG, "silver")]
    assert [(a["event"], a["run_id"]) for a in _logged_alerts(alerts)] == [
        ("deadline_missed", "held-1"), ("deadline_missed", "held-2")]
