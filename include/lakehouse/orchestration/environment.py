"""The project's Airflow: its home, its configuration (as environment variables) and its CLI.

Every Airflow process the product starts (``lakehouse airflow ...``, ``make run``'s standalone,
the tests) gets its configuration from :func:`airflow_env`, so the scheduler, the DAG processor, the
API server and a shell command all see the same home, database, DAG folder and connections.
No Airflow import here: building the environment must not create an Airflow home by accident.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from lakehouse import names
from lakehouse.settings import REPO_ROOT, Settings

DAGS_FOLDER = REPO_ROOT / "dags"
PLUGINS_FOLDER = REPO_ROOT / "plugins"
LAYER_DAG_IDS = tuple(names.LAYER_DAGS[layer] for layer in names.LAYERS)


class AirflowCommandError(RuntimeError):
    """An Airflow CLI command the product runs for set-up failed; the message has its output tail."""


def metadata_db_path(settings: Settings) -> Path:
    return settings.airflow_home_path / "airflow.db"


def password_file(settings: Settings) -> Path:
    """Where Airflow's simple auth manager writes the generated admin password."""
    return settings.airflow_home_path / "simple_auth_manager_passwords.json.generated"


def api_url(settings: Settings) -> str:
    return f"http://localhost:{settings.airflow_port}"


def ui_healthy(settings: Settings) -> bool:
    """Whether the project's Airflow API server answers its health endpoint (waits at most 5 s)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health",
                                    timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def spark_connection(settings: Settings) -> str:
    """The ``spark_default`` connection as JSON: the master is ``settings.spark_master``.

    The Spark provider reads a full master URL (``local[*]``, ``spark://host:7077``) from ``host``.
    """
    return json.dumps({"conn_type": "spark", "host": settings.spark_master})


def venv_bin() -> Path:
    return Path(sys.executable).parent


def airflow_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of every Airflow process of this project.

    ``base`` (default: this process's environment) is kept, so ``AIRFLOW__*`` / ``AIRFLOW_CONN_*``
    variables a user sets win over nothing here except the ones pinned below; the LAKEHOUSE_*
    settings are exported so DAG parsing and tasks resolve exactly the same settings.
    """
    env = dict(os.environ if base is None else base)
    home = settings.airflow_home_path
    env.update(settings.env())
    env["PATH"] = os.pathsep.join([str(venv_bin()), env.get("PATH", "")]).rstrip(os.pathsep)
    env["AIRFLOW_HOME"] = str(home)
    defaults = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        # Layer DAGs are unpaused explicitly by `make run`; anything new starts paused.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{metadata_db_path(settings)}",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": api_url(settings),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url(settings)}/execution/",
        # Two cores: one parser, re-parse each file once a minute, notice new files within 30 s.
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # A busy two-core machine answers the execution API slowly: wait, don't fail the task.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        f"AIRFLOW_CONN_{names.SPARK_CONN_ID.upper()}": spark_connection(settings),
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


def airflow_argv(args: Sequence[str]) -> list[str]:
    """``airflow <args>`` with the CLI installed next to this interpreter."""
    binary = venv_bin() / "airflow"
    if binary.exists():
        return [str(binary), *args]
    return [sys.executable, "-m", "airflow", *args]


def run_airflow(settings: Settings, args: Sequence[str], env: Mapping[str, str] | None = None,
                timeout_s: float = 300.0) -> str:
    """Run one Airflow CLI command to completion for set-up; return its output, raise on failure."""
    try:
        done = subprocess.run(airflow_argv(args), env=dict(env or airflow_env(settings)), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise AirflowCommandError(f"'airflow {' '.join(args)}' did not finish within {timeout_s:.0f}s") from err
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-15:])
        raise AirflowCommandError(f"'airflow {' '.join(args)}' exited with {done.returncode}:\n{tail}")
    return done.stdout


def prepare(settings: Settings, env: Mapping[str, str] | None = None, unpause: Sequence[str] = ()) -> None:
    """Make the project's Airflow ready to run: metadata DB migrated, Spark pool sized, DAGs parsed
    into the database (so they can be triggered before a DAG processor runs), and the given DAGs
    unpaused. Idempotent."""
    settings.private_home()
    settings.airflow_home_path.mkdir(parents=True, exist_ok=True)
    env = dict(env or airflow_env(settings))
    run_airflow(settings, ["db", "migrate"], env)
    run_airflow(settings, ["pools", "set", names.SPARK_POOL, str(settings.airflow_spark_pool_slots),
                           "Concurrent Spark applications of the lakehouse DAGs"], env)
    run_airflow(settings, ["dags", "reserialize"], env)
    for dag_id in unpause:
        run_airflow(settings, ["dags", "unpause", dag_id], env)
