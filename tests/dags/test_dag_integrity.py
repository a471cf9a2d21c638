"""DAG integrity and policy: every DAG imports cleanly (no network, no database at import time) and
carries the policy the product promises (tags, owner, retries with backoff, timeout, pool,
deadline, failure alert, lineage)."""

from __future__ import annotations

import datetime as dt
import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow_fixtures import airflow_home, dagbag  # noqa: F401 - fixtures

from lakehouse import names
from lakehouse.orchestration.environment import DAGS_FOLDER
from lakehouse.settings import load_settings

LAYER_DAGS = {names.BRONZE_DAG: "bronze", names.SILVER_DAG: "silver", names.GOLD_DAG: "gold"}
MANUAL_DAGS = {names.SILVER_REPLAY_DAG, names.DLQ_REPLAY_DAG}
# Scheduled housekeeping DAGs (neither a layer nor manual).
HOUSEKEEPING_DAGS = {names.DLQ_RETENTION_DAG, names.MAINTENANCE_DAG}
# The monitor: no Spark, so none of the Spark task policy (see its own test).
MONITOR_DAGS = {names.MONITOR_DAG}
NOTIFIER = "lakehouse.orchestration.notify.LakehouseNotifier"

# Runs in a fresh interpreter: every way to reach the network or a database raises, then each DAG
# file is executed the way the DAG processor does (as a script) and its DAG ids are reported.
_GUARDED_IMPORT = r"""
import json, runpy, socket, sqlite3, sys

class Forbidden(RuntimeError):
    pass

def deny(*args, **kwargs):
    raise Forbidden("network or database access while importing a DAG file")

socket.socket.connect = deny
socket.socket.connect_ex = deny
socket.create_connection = deny
socket.getaddrinfo = deny
sqlite3.connect = deny
import psycopg2
psycopg2.connect = deny
import sqlalchemy.engine
sqlalchemy.engine.Engine.connect = deny
sqlalchemy.engine.Engine.raw_connection = deny

from airflow.sdk import DAG

found = {}
for path in sys.argv[1:]:
    namespace = runpy.run_path(path, run_name="dag_file")
    found[path] = sorted(v.dag_id for v in namespace.values() if isinstance(v, DAG))
print("RESULT " + json.dumps(found))
"""


def _dag_files() -> list[Path]:
    return sorted(DAGS_FOLDER.glob("*.py"))


def test_dag_files_import_without_network_or_database(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "LAKEHOUSE_HOME": str(tmp_path / "home"),
           # A database URL that would fail if anything tried to use it.
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/missing/dir/airflow.db"}
    done = subprocess.run([sys.executable, "-c", _GUARDED_IMPORT, *map(str, _dag_files())], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert {dag_id for ids in result.values() for dag_id in ids} == set(LAYER_DAGS) | MANUAL_DAGS | HOUSEKEEPING_DAGS | MONITOR_DAGS
    assert all(len(ids) == 1 for ids in result.values()), result


def test_dagbag_loads_every_dag_without_errors(dagbag: Any) -> None:  # noqa: F811
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(LAYER_DAGS) | MANUAL_DAGS | HOUSEKEEPING_DAGS | MONITOR_DAGS


def test_every_dag_has_tags_owner_docs_retries_timeout_pool_and_failure_alert(dagbag: Any) -> None:  # noqa: F811
    settings = load_settings()
    for dag in dagbag.dags.values():
        assert "lakehouse" in dag.tags, dag.dag_id
        assert "When it fails" in (dag.doc_md or ""), dag.dag_id
        assert dag.catchup is False and dag.max_active_runs == 1, dag.dag_id
        assert dag.tasks, dag.dag_id
        if dag.dag_id in MONITOR_DAGS:
            continue
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.owner == "lakehouse", where
            assert task.retries == settings.airflow_task_retries >= 1, where
            assert task.retry_exponential_backoff > 1, where
            assert task.max_retry_delay == dt.timedelta(seconds=settings.airflow_max_retry_delay_s), where
            assert task.execution_timeout is not None and task.execution_timeout > dt.timedelta(0), where
            assert task.pool == names.SPARK_POOL, where
            assert task.doc_md, where
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert [f"{type(c).__module__}.{type(c).__name__}" for c in callbacks] == [NOTIFIER], where
            assert callbacks[0].event == "task_failed", where


def test_layer_dags_run_every_minute_with_a_deadline_from_settings(dagbag: Any) -> None:  # noqa: F811
    from airflow.sdk import AsyncCallback, DeadlineReference

    settings = load_settings()
    for dag_id, layer in LAYER_DAGS.items():
        dag = dagbag.dags[dag_id]
        if layer == "bronze":
            assert dag.schedule == "* * * * *", dag_id
        else:
            assert dag.timetable.timetable.expression == "* * * * *", dag_id
        assert layer in dag.tags, dag_id
        assert dag.task_dict[next(iter(dag.task_dict))].execution_timeout == dt.timedelta(
            seconds=settings.airflow_task_timeout_s)
        [deadline] = dag.deadline
        assert deadline.reference == DeadlineReference.DAGRUN_QUEUED_AT, dag_id
        assert deadline.interval == dt.timedelta(seconds=getattr(settings, f"deadline_{layer}_s")), dag_id
        assert isinstance(deadline.callback, AsyncCallback), dag_id
        assert deadline.callback.path == NOTIFIER, dag_id
        assert deadline.callback.kwargs["event"] == "deadline_missed", dag_id
        assert deadline.callback.kwargs["layer"] == layer, dag_id


def test_default_deadlines_are_90s_2min_3min(dagbag: Any) -> None:  # noqa: F811
    intervals = {dag_id: dagbag.dags[dag_id].deadline[0].interval for dag_id in LAYER_DAGS}
    assert intervals == {names.BRONZE_DAG: dt.timedelta(seconds=90), names.SILVER_DAG: dt.timedelta(minutes=2),
                         names.GOLD_DAG: dt.timedelta(minutes=3)}


def test_manual_dags_are_unscheduled_and_have_no_deadline(dagbag: Any) -> None:  # noqa: F811
    for dag_id in MANUAL_DAGS:
        dag = dagbag.dags[dag_id]
        assert dag.schedule is None and not dag.timetable.can_be_scheduled, dag_id
        assert not dag.deadline, dag_id
        assert "manual" in dag.tags, dag_id


def test_one_spark_application_per_layer_writing_every_exchanges_tables_as_assets(dagbag: Any) -> None:  # noqa: F811
    from lakehouse.orchestration.operators import LakehouseSparkSubmitOperator

    settings = load_settings()
    expected = {
        names.BRONZE_DAG: {*(names.bronze_table(ex) for ex in settings.exchanges), names.AUDIT_TABLE},
        names.SILVER_DAG: {*(names.silver_table(ex) for ex in settings.exchanges), names.DLQ_TABLE},
        names.GOLD_DAG: {names.GOLD_TABLE, names.OHLCV_TABLE},
    }
    for dag_id, tables in expected.items():
        dag = dagbag.dags[dag_id]
        layer = LAYER_DAGS[dag_id]
        assert dag.task_ids == [layer], dag_id
        task = dag.task_dict[layer]
        assert isinstance(task, LakehouseSparkSubmitOperator)
        assert task._conn_id == names.SPARK_CONN_ID
        assert task.job == layer and task.job_args == []
        assert {a.uri for a in task.outlets} == {names.asset_uri(settings, t) for t in tables}, dag_id
        assert {a.name for a in task.outlets} == {names.qualified(settings, t) for t in tables}, dag_id


def test_silver_and_gold_also_start_on_their_upstream_tables_assets(dagbag: Any) -> None:  # noqa: F811
    from airflow.sdk import AssetOrTimeSchedule

    settings = load_settings()
    upstream = {names.SILVER_DAG: [names.bronze_table(e) for e in settings.exchanges],
                names.GOLD_DAG: [names.silver_table(e) for e in settings.exchanges]}
    for dag_id, tables in upstream.items():
        dag = dagbag.dags[dag_id]
        assert isinstance(dag.timetable, AssetOrTimeSchedule), dag_id
        condition = dag.timetable.asset_condition
        assert type(condition).__name__ == "AssetAny", dag_id
        assert {a.uri for a in condition.objects} == {names.asset_uri(settings, t) for t in tables}, dag_id


def test_outlets_and_triggers_follow_the_exchange_setting(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from airflow.sdk import DAG

    monkeypatch.setenv("LAKEHOUSE_EXCHANGES", "binance,kraken,coinbase")
    settings = load_settings()
    for file, table in (("bronze_ingestion.py", names.bronze_table), ("silver_transformation.py", names.silver_table)):
        namespace = runpy.run_path(str(DAGS_FOLDER / file), run_name="dag_file")
        [dag] = [v for v in namespace.values() if isinstance(v, DAG)]
        [task] = dag.tasks
        uris = {a.uri for a in task.outlets}
        assert {names.asset_uri(settings, table(e)) for e in ("binance", "kraken", "coinbase")} <= uris
    namespace = runpy.run_path(str(DAGS_FOLDER / "gold_aggregation.py"), run_name="dag_file")
    [dag] = [v for v in namespace.values() if isinstance(v, DAG)]
    assert len(dag.timetable.asset_condition.objects) == 3


def test_deadline_interval_follows_the_setting(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from airflow.sdk import DAG

    monkeypatch.setenv("LAKEHOUSE_DEADLINE_GOLD_S", "45")
    namespace = runpy.run_path(str(DAGS_FOLDER / "gold_aggregation.py"), run_name="dag_file")
    [dag] = [v for v in namespace.values() if isinstance(v, DAG)]
    assert dag.deadline[0].interval == dt.timedelta(seconds=45)
    assert dag.deadline[0].callback.kwargs["deadline_s"] == 45


def test_every_dag_runs_when_triggered_not_left_paused(dagbag: Any) -> None:  # noqa: F811
    """A run of a paused DAG stays queued forever. The project's Airflow home pauses new DAGs
    (``DAGS_ARE_PAUSED_AT_CREATION``), so every DAG must be created unpaused or be unpaused by
    ``make run`` (the layer DAGs, which would otherwise start running with any Airflow process)."""
    from lakehouse.orchestration.environment import LAYER_DAG_IDS

    assert set(LAYER_DAG_IDS) == set(LAYER_DAGS)
    for dag_id, dag in dagbag.dags.items():
        if dag_id in LAYER_DAG_IDS:
            continue
        assert dag.is_paused_upon_creation is False, f"{dag_id} is created paused; its triggered runs stay queued"
    assert MANUAL_DAGS <= set(dagbag.dags)


def test_dlq_retention_runs_daily_unpaused_as_one_command(dagbag: Any) -> None:  # noqa: F811
    from lakehouse.orchestration.operators import LakehouseCommandOperator

    settings = load_settings()
    dag = dagbag.dags[names.DLQ_RETENTION_DAG]
    assert dag.schedule == settings.dlq_retention_schedule == "@daily"
    assert dag.is_paused_upon_creation is False and not dag.deadline
    [task] = dag.tasks
    assert isinstance(task, LakehouseCommandOperator) and task.arguments == ["dlq", "retention"]
    assert {a.uri for a in task.outlets} == {names.asset_uri(settings, t) for t in
                                             (names.DLQ_TABLE, names.DLQ_ARCHIVE_TABLE, names.AUDIT_TABLE)}


def test_maintenance_dag_runs_unpaused_on_its_schedule_one_spark_task_per_table(dagbag: Any) -> None:  # noqa: F811
    from lakehouse.orchestration.operators import LakehouseSparkSubmitOperator
    from lakehouse.tables import table_defs

    settings = load_settings()
    dag = dagbag.dags[names.MAINTENANCE_DAG]
    assert dag.schedule == settings.maintenance_schedule == "@hourly"
    assert dag.is_paused_upon_creation is False
    assert "maintenance" in dag.tags and "dags trigger iceberg_maintenance" in dag.doc_md
    tables = [d.name for d in table_defs(settings)]
    assert dag.task_ids == [t.rpartition(".")[2] for t in tables]
    for task, table in zip(dag.tasks, tables):
        assert isinstance(task, LakehouseSparkSubmitOperator), task.task_id
        assert task.job == "maintenance" and task.job_args == ["--table", table], task.task_id
        assert task.check_pending is False, task.task_id  # never skipped for lack of new upstream data
        assert task.trigger_rule == "all_done", task.task_id  # one table's failure does not stop the next
        assert task.execution_timeout <= dt.timedelta(hours=settings.orphan_min_age_hours), task.task_id


def test_maintenance_schedule_follows_the_setting(airflow_home: Path,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import DAG

    monkeypatch.setenv("LAKEHOUSE_MAINTENANCE_SCHEDULE", "15 */6 * * *")
    namespace = runpy.run_path(str(DAGS_FOLDER / "iceberg_maintenance.py"), run_name="dag_file")
    [dag] = [v for v in namespace.values() if isinstance(v, DAG)]
    assert dag.schedule == "15 */6 * * *"


def test_maintenance_task_submits_its_tables_job_without_the_pending_check(dagbag: Any,  # noqa: F811
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    from lakehouse.orchestration import pending
    from lakehouse.orchestration.environment import spark_connection

    settings = load_settings()
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", spark_connection(settings))
    monkeypatch.setattr(pending, "pending_work", lambda s, layer: pytest.fail("maintenance checked pending work"))
    captured: dict[str, Any] = {}

    def fake_submit(hook: SparkSubmitHook, application: str = "", **kwargs: Any) -> None:
        captured["argv"] = hook._build_spark_submit_command(application)

    monkeypatch.setattr(SparkSubmitHook, "submit", fake_submit)
    table = names.bronze_table(settings.exchanges[0])
    dagbag.dags[names.MAINTENANCE_DAG].task_dict[table.rpartition(".")[2]].execute(context={})
    argv = captured["argv"]
    app = next(i for i, a in enumerate(argv) if a.endswith("maintenance_job.py"))
    assert argv[app + 1:app + 3] == ["--table", table]
    report = Path(argv[argv.index("--report") + 1])
    assert report.parent == names.run_report_dir(settings, "maintenance") / table.rpartition(".")[2]


def test_the_monitor_runs_every_minute_unpaused_outside_the_spark_pool_without_retries_or_alert_storms(
        dagbag: Any) -> None:  # noqa: F811
    """A monitor queued behind Spark jobs would be late exactly when it matters; retried or alerting
    on its own failure, a monitor that cannot reach Kafka would alert every minute."""
    dag = dagbag.dags[names.MONITOR_DAG]
    assert dag.is_paused_upon_creation is False
    assert dag.schedule == "* * * * *"
    (task,) = dag.tasks
    assert task.pool != names.SPARK_POOL and task.retries == 0 and task.owner == "lakehouse"
    assert task.execution_timeout is not None and task.execution_timeout < dt.timedelta(minutes=1)
    assert not task.on_failure_callback
    assert task.doc_md and "When it fails" in (dag.doc_md or "")
