"""The README's manual trigger, done the way a new user does it: ``lakehouse airflow dags trigger
dlq_replay --conf ...`` on a fresh Airflow home, then one scheduler loop. The run must leave
``queued``: a DAG created paused keeps its triggered runs queued forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, make_env

from lakehouse import names
from lakehouse.orchestration.environment import airflow_env
from lakehouse.settings import load_settings

pytestmark = pytest.mark.integration


def _lakehouse(args: list[str], env: dict[str, str], timeout_s: float = 300) -> str:
    done = subprocess.run([sys.executable, "-m", "lakehouse", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    assert done.returncode == 0, (f"lakehouse {' '.join(args)} exited with {done.returncode}:\n"
                                  + "\n".join((done.stdout + done.stderr).splitlines()[-60:]))
    return done.stdout


def _json_list(output: str) -> list[dict[str, object]]:
    """The JSON list an Airflow CLI command printed (its log lines share stdout)."""
    return json.loads([line for line in output.splitlines() if line.startswith("[")][-1])


@pytest.mark.timeout(900)
def test_readme_dlq_replay_trigger_gets_a_run_that_leaves_queued(tmp_path: Path) -> None:
    lakehouse_env = make_env(tmp_path / "home", LAKEHOUSE_AIRFLOW_PORT=str(free_port()))
    settings = load_settings(lakehouse_env)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "AIRFLOW"))}
    base.update(lakehouse_env)
    base["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    base["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    env = airflow_env(settings, base)
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"  # what makes the DAG's own flag matter

    _lakehouse(["airflow", "db", "migrate"], env)
    _lakehouse(["airflow", "dags", "reserialize"], env)
    dags = {d["dag_id"]: d for d in _json_list(_lakehouse(["airflow", "dags", "list", "-o", "json"], env))}
    for dag_id in (names.DLQ_REPLAY_DAG, names.SILVER_REPLAY_DAG):
        assert str(dags[dag_id]["is_paused"]).lower() == "false", f"{dag_id} is paused: {dags[dag_id]}"

    _lakehouse(["airflow", "dags", "trigger", names.DLQ_REPLAY_DAG,
                "--conf", json.dumps({"error_type": "invalid_timestamp"})], env)
    [run] = _json_list(_lakehouse(["airflow", "dags", "list-runs", names.DLQ_REPLAY_DAG, "-o", "json"], env))
    assert run["state"] == "queued"
    # One short scheduler pass: a queued run of an unpaused DAG is started at once (the task
    # itself may not finish: nothing else of the stack runs here).
    subprocess.run([sys.executable, "-m", "lakehouse", "airflow", "scheduler", "--num-runs", "3"], env=env,
                   capture_output=True, text=True, timeout=300, check=False)
    [run] = _json_list(_lakehouse(["airflow", "dags", "list-runs", names.DLQ_REPLAY_DAG, "-o", "json"], env))
    assert run["state"] != "queued", run
