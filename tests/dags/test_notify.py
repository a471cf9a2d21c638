"""The one notifier: alert content from both callback contexts, every channel delivered, webhook
configuration from the ``lakehouse_alerts`` connection, and loud failure when a channel fails."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow_fixtures import Webhook, airflow_home, statsd, statsd_lines, webhook  # noqa: F401 - fixtures
from conftest import make_env

from lakehouse.orchestration.alerts import Alert, AlertDeliveryError, alerts_log_path, deliver
from lakehouse.orchestration.alerts import Webhook as WebhookTarget
from lakehouse.settings import Settings, load_settings


def _settings(tmp_path: Path, statsd_sock: socket.socket) -> Settings:
    return load_settings(make_env(tmp_path / "home", LAKEHOUSE_STATSD_PORT=str(statsd_sock.getsockname()[1])))


def _task_failure_context() -> dict[str, object]:
    ti = SimpleNamespace(dag_id="silver_transformation", run_id="scheduled__2026-01-01T00:01:00+00:00",
                         task_id="silver_kraken", try_number=3, map_index=-1, log_url="http://localhost:8080/log")
    return {"ti": ti, "dag_run": SimpleNamespace(dag_id=ti.dag_id, run_id=ti.run_id),
            "exception": RuntimeError("spark-submit exited with 1")}


def _deadline_context() -> dict[str, object]:
    # What the scheduler hands a deadline callback: the DAG run as JSON plus the deadline.
    return {"dag_run": {"dag_id": "gold_aggregation", "dag_run_id": "scheduled__2026-01-01T00:05:00+00:00",
                        "queued_at": "2026-01-01T00:05:00.100000Z", "state": "running"},
            "deadline": {"id": "0198", "deadline_time": dt.datetime(2026, 1, 1, 0, 8, tzinfo=dt.timezone.utc)}}


def test_alert_from_a_task_failure_context(airflow_home: Path) -> None:  # noqa: F811
    from lakehouse.orchestration.notify import alert_from_context

    alert = alert_from_context("task_failed", _task_failure_context(), layer="silver")
    assert (alert.event, alert.dag_id, alert.task_id, alert.layer) == (
        "task_failed", "silver_transformation", "silver_kraken", "silver")
    assert alert.run_id == "scheduled__2026-01-01T00:01:00+00:00"
    assert alert.severity == "error"
    assert alert.details["try_number"] == 3
    assert alert.details["error"] == "RuntimeError: spark-submit exited with 1"
    assert "silver_kraken" in alert.summary and "RuntimeError" in alert.summary


def test_alert_from_a_deadline_context(airflow_home: Path) -> None:  # noqa: F811
    from lakehouse.orchestration.notify import alert_from_context

    alert = alert_from_context("deadline_missed", _deadline_context(), layer="gold", deadline_s=180)
    assert (alert.event, alert.dag_id, alert.task_id, alert.layer) == ("deadline_missed", "gold_aggregation", None, "gold")
    assert alert.run_id == "scheduled__2026-01-01T00:05:00+00:00"
    assert alert.severity == "warning"
    assert alert.details == {"deadline_time": "2026-01-01T00:08:00+00:00", "queued_at": "2026-01-01T00:05:00.100000Z",
                             "state": "running", "deadline_s": 180}
    assert "180s" in alert.summary


def test_deliver_writes_the_log_line_the_counter_and_posts_the_webhook(tmp_path: Path, webhook: Webhook,  # noqa: F811
                                                                       statsd: socket.socket) -> None:  # noqa: F811
    settings = _settings(tmp_path, statsd)
    alert = Alert(event="task_failed", dag_id="bronze_ingestion", task_id="bronze_binance", layer="bronze",
                  run_id="r1", summary="task bronze_binance of run r1 failed")
    deliver(settings, alert, WebhookTarget(url=webhook.url, headers={"X-Team": "data"}, auth=("bot", "s3cret")))

    call = webhook.received.get(timeout=5)
    assert call["json"]["event"] == "task_failed" and call["json"]["task_id"] == "bronze_binance"
    assert call["json"]["text"].startswith("[lakehouse error] task_failed bronze_ingestion.bronze_binance")
    assert call["authorization"].startswith("Basic ")
    [line] = alerts_log_path(settings).read_text().splitlines()
    assert json.loads(line)["summary"] == "task bronze_binance of run r1 failed"
    assert any(ln.startswith("lakehouse.alerts:1|c|#") and "event:task_failed" in ln and "dag_id:bronze_ingestion" in ln
               for ln in statsd_lines(statsd))


def test_a_failing_webhook_raises_after_the_other_channels_delivered(tmp_path: Path,
                                                                     statsd: socket.socket) -> None:  # noqa: F811
    settings = _settings(tmp_path, statsd)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook?token=secret"
    alert = Alert(event="deadline_missed", dag_id="gold_aggregation", summary="late")
    with pytest.raises(AlertDeliveryError, match="webhook") as err:
        deliver(settings, alert, WebhookTarget(url=url, timeout_s=2))
    assert "secret" not in str(err.value)
    assert alerts_log_path(settings).read_text().count("\n") == 1
    assert any("event:deadline_missed" in ln for ln in statsd_lines(statsd))


def test_webhook_from_uri_and_json_connections(airflow_home: Path) -> None:  # noqa: F811
    from airflow.sdk import Connection

    from lakehouse.orchestration.notify import webhook_from_connection

    uri = Connection.from_uri("https://bot:pw@hooks.example.com:8443/services/T1/B2", conn_id="lakehouse_alerts")
    target = webhook_from_connection(uri, timeout_s=3)
    assert target.url == "https://hooks.example.com:8443/services/T1/B2"
    assert target.auth == ("bot", "pw") and target.timeout_s == 3

    as_json = Connection(conn_id="lakehouse_alerts", conn_type="http", host="http://alerts.internal/hook",
                         extra=json.dumps({"headers": {"Authorization": "Bearer t"}, "endpoint": "lakehouse"}))
    target = webhook_from_connection(as_json, timeout_s=10)
    assert target.url == "http://alerts.internal/hook/lakehouse"
    assert target.headers == {"Authorization": "Bearer t"} and target.auth is None


def test_no_webhook_without_the_connection(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from lakehouse.orchestration.notify import resolve_webhook

    monkeypatch.delenv("AIRFLOW_CONN_LAKEHOUSE_ALERTS", raising=False)
    assert resolve_webhook(load_settings()) is None
    monkeypatch.setenv("AIRFLOW_CONN_LAKEHOUSE_ALERTS", "http://127.0.0.1:9/alerts")
    target = resolve_webhook(load_settings())
    assert target is not None and target.url == "http://127.0.0.1:9/alerts"


def test_notifier_as_a_failure_callback_alerts_through_every_channel(tmp_path: Path, webhook: Webhook,  # noqa: F811
                                                                     statsd: socket.socket,  # noqa: F811
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     airflow_home: Path) -> None:  # noqa: F811
    from lakehouse.orchestration.notify import failure_notifier

    for key, value in make_env(tmp_path / "home", LAKEHOUSE_STATSD_PORT=str(statsd.getsockname()[1])).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIRFLOW_CONN_LAKEHOUSE_ALERTS", json.dumps({"conn_type": "http", "host": webhook.url}))
    failure_notifier("silver")(_task_failure_context())  # how the task runner calls on_failure_callback

    alert = webhook.received.get(timeout=5)["json"]
    assert (alert["event"], alert["task_id"], alert["layer"]) == ("task_failed", "silver_kraken", "silver")
    assert json.loads(alerts_log_path(load_settings()).read_text())["task_id"] == "silver_kraken"
    assert any("event:task_failed" in ln for ln in statsd_lines(statsd))
