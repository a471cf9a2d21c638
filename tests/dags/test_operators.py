"""The operators: Airflow submits exactly what ``lakehouse run`` submits; manual DAGs turn params
into ``lakehouse`` argv entries, validated, never shell text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from airflow_fixtures import airflow_home, dagbag  # noqa: F401 - fixtures

from lakehouse import names, runreport
from lakehouse.orchestration import pending
from lakehouse.orchestration.environment import spark_connection
from lakehouse.settings import load_settings
from lakehouse.spark import spark_submit_binary, submit_spec


def _parse_submit(argv: list[str]) -> dict[str, Any]:
    """spark-submit argv -> options (conf as a dict) and the application with its arguments."""
    out: dict[str, Any] = {"binary": argv[0], "conf": {}}
    i = 1
    while i < len(argv) and argv[i].startswith("--"):
        key, value = argv[i], argv[i + 1]
        if key == "--conf":
            k, _, v = value.partition("=")
            out["conf"][k] = v
        else:
            out[key] = value
        i += 2
    out["application"] = argv[i]
    out["args"] = argv[i + 1:]
    return out


@pytest.mark.parametrize(("dag_id", "job"), [
    (names.BRONZE_DAG, "bronze"),
    (names.SILVER_DAG, "silver"),
    (names.GOLD_DAG, "gold"),
])
def test_spark_task_submits_exactly_what_lakehouse_run_submits(dagbag: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                              dag_id: str, job: str) -> None:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    settings = load_settings()
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", spark_connection(settings))
    monkeypatch.setattr(pending, "pending_work", lambda s, layer: {"binance": "new data"})
    captured: dict[str, Any] = {}

    def fake_submit(hook: SparkSubmitHook, application: str = "", **kwargs: Any) -> None:
        captured["argv"] = hook._build_spark_submit_command(application)
        captured["env"] = hook._env

    monkeypatch.setattr(SparkSubmitHook, "submit", fake_submit)
    task = dagbag.dags[dag_id].task_dict[job]
    task.execute(context={})

    airflow = _parse_submit(captured["argv"])
    assert airflow["args"][:1] == ["--report"] and len(airflow["args"]) == 2
    report = Path(airflow["args"][1])
    assert report.parent == names.run_report_dir(settings, job)
    spec = submit_spec(settings, job, ["--report", str(report)], name=f"lakehouse-{job}")
    assert airflow == _parse_submit(spec.argv(spark_submit_binary()))
    assert airflow["--master"] == settings.spark_master == "local[*]"
    env = dict(captured["env"])
    load_settings(env)  # the job loads its settings from exactly this environment: nothing unknown in it
    assert float(env.pop(runreport.SUBMITTED_AT_ENV)) > 0
    assert env == spec.env


def test_a_run_with_nothing_new_upstream_is_skipped_before_spark_starts(dagbag: Any,  # noqa: F811
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
    from airflow.sdk.exceptions import AirflowSkipException

    monkeypatch.setattr(pending, "pending_work", lambda s, layer: {})
    monkeypatch.setattr(SparkSubmitHook, "submit", lambda *a, **k: pytest.fail("spark-submit started"))
    with pytest.raises(AirflowSkipException, match="nothing new upstream"):
        dagbag.dags[names.SILVER_DAG].task_dict["silver"].execute(context={})


def test_the_task_returns_each_exchanges_outcome_and_names_the_failed_one(dagbag: Any,  # noqa: F811
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
    from airflow.sdk.exceptions import AirflowException

    settings = load_settings()
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", spark_connection(settings))
    monkeypatch.setattr(pending, "pending_work", lambda s, layer: {"binance": "new data"})
    outcome = {"kraken": "noop"}

    def fake_submit(hook: SparkSubmitHook, application: str = "", **kwargs: Any) -> None:
        argv = hook._build_spark_submit_command(application)
        report = runreport.RunReport(layer="bronze", submitted_at=1.0, session_ready_at=5.0, finished_at=9.0)
        report.outcome("binance").status, report.outcome("binance").records = "committed", 12
        report.outcome("kraken").status = outcome["kraken"]
        report.outcome("kraken").error = "topic missing" if outcome["kraken"] == "failed" else ""
        report.add("work", 2.0, "binance")
        report.write(Path(argv[-1]))
        if outcome["kraken"] == "failed":
            raise AirflowException("Cannot execute: spark-submit. Error code is: 1.")

    class DagRun:
        run_id = "scheduled__2026-01-01T00:00:00+00:00"
        queued_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=3)

    monkeypatch.setattr(SparkSubmitHook, "submit", fake_submit)
    task = dagbag.dags[names.BRONZE_DAG].task_dict["bronze"]
    result = task.execute(context={"dag_run": DagRun()})
    assert result["exchanges"]["binance"] == {"status": "committed", "records": 12, "error": ""}
    assert result["exchanges"]["kraken"]["status"] == "noop"
    assert result["phases"]["work"] == 2.0 and result["phases"]["startup"] == 4.0
    assert 3.0 <= result["phases"]["handoff"] < 60 and result["phases"]["exit"] > 0
    outcome["kraken"] = "failed"
    with pytest.raises(AirflowException, match="bronze failed for kraken: topic missing"):
        task.execute(context={"dag_run": DagRun()})


def test_silver_replay_renders_params_into_cli_arguments(dagbag: Any) -> None:  # noqa: F811
    dag = dagbag.dags[names.SILVER_REPLAY_DAG]
    task = dag.task_dict["replay_silver"]
    params = {"exchange": "kraken", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}
    task.render_template_fields({"params": params, "dag": dag})
    assert task.arguments == ["replay", "silver", "--exchange", "kraken",
                              "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T01:00:00Z"]


def test_dlq_replay_renders_the_error_type(dagbag: Any) -> None:  # noqa: F811
    dag = dagbag.dags[names.DLQ_REPLAY_DAG]
    task = dag.task_dict["replay_dlq"]
    task.render_template_fields({"params": {"error_type": "unknown_schema"}, "dag": dag})
    assert task.arguments == ["dlq", "replay", "--error-type", "unknown_schema"]


@pytest.mark.parametrize(("dag_id", "param", "value"), [
    (names.SILVER_REPLAY_DAG, "from", "--help"),
    (names.SILVER_REPLAY_DAG, "to", "yesterday; rm -rf /"),
    (names.SILVER_REPLAY_DAG, "exchange", "nasdaq"),
    (names.DLQ_REPLAY_DAG, "error_type", "--all"),
    (names.DLQ_REPLAY_DAG, "error_type", "a b"),
])
def test_manual_dag_params_reject_values_that_are_not_data(dagbag: Any, dag_id: str, param: str,  # noqa: F811
                                                           value: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dagbag.dags[dag_id].params.get_param(param).resolve(value)


@pytest.mark.parametrize(("dag_id", "param", "value"), [
    (names.SILVER_REPLAY_DAG, "from", "2026-01-01T00:00:00Z"),
    (names.SILVER_REPLAY_DAG, "to", "2026-01-01 12:30:00.123456+02:00"),
    (names.SILVER_REPLAY_DAG, "from", "2026-01-01"),
    (names.SILVER_REPLAY_DAG, "exchange", "kraken"),
    (names.DLQ_REPLAY_DAG, "error_type", "invalid_price"),
])
def test_manual_dag_params_accept_timestamps_and_known_names(dagbag: Any, dag_id: str, param: str,  # noqa: F811
                                                             value: str) -> None:
    assert dagbag.dags[dag_id].params.get_param(param).resolve(value) == value


def test_command_operator_runs_the_lakehouse_cli_and_logs_its_output(airflow_home: Path,  # noqa: F811
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    from lakehouse.orchestration.operators import LakehouseCommandOperator

    task = LakehouseCommandOperator(task_id="config", arguments=["config", "--json"])
    task.execute(context={})
    # The command's own output (settings as JSON) went through the task logger.
    assert json.dumps({"home": str(load_settings().home)})[1:-1] in capfd.readouterr().out


def test_command_operator_fails_the_task_on_a_non_zero_exit(airflow_home: Path) -> None:  # noqa: F811
    from airflow.sdk.exceptions import AirflowException

    from lakehouse.orchestration.operators import LakehouseCommandOperator

    task = LakehouseCommandOperator(task_id="bad", arguments=["run", "bronze", "--exchange", "nasdaq"])
    with pytest.raises(AirflowException, match="exited with code 2"):
        task.execute(context={})


@pytest.mark.parametrize(("run_type", "param", "expected"), [
    ("manual", True, ["--accept-data-loss"]),
    ("manual", False, []),
    ("scheduled", False, []),
])
def test_only_a_manual_bronze_run_passes_accept_data_loss(dagbag: Any, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                          run_type: str, param: bool, expected: list[str]) -> None:
    from types import SimpleNamespace

    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    settings = load_settings()
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", spark_connection(settings))
    monkeypatch.setattr(pending, "pending_work", lambda s, layer: {"binance": "new data"})
    captured: dict[str, Any] = {}
    monkeypatch.setattr(SparkSubmitHook, "submit",
                        lambda hook, application="", **kw: captured.update(argv=hook._build_spark_submit_command(
                            application)))
    dag = dagbag.dags[names.BRONZE_DAG]
    assert dag.params["accept_data_loss"] is False  # what every scheduled run gets
    context = {"params": {"accept_data_loss": param}, "dag_run": SimpleNamespace(run_type=run_type)}
    dag.task_dict["bronze"].execute(context=context)
    args = _parse_submit(captured["argv"])["args"]
    assert args[:-2] == expected and args[-2] == "--report"


def test_a_scheduled_run_cannot_accept_a_data_loss(dagbag: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowException

    monkeypatch.setattr(pending, "pending_work", lambda s, layer: {"binance": "new data"})
    context = {"params": {"accept_data_loss": True}, "dag_run": SimpleNamespace(run_type="scheduled")}
    with pytest.raises(AirflowException, match="manual run only"):
        dagbag.dags[names.BRONZE_DAG].task_dict["bronze"].execute(context=context)
