"""The one notifier: alert content from both callback contexts, every channel delivered, the
webhook POSTed through the HTTP provider's ``HttpHook`` (retried on 5xx and connection errors, not
on 4xx) from the ``lakehouse_alerts`` connection, and loud failure when a channel fails."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow_fixtures import airflow_home, statsd, statsd_lines  # noqa: F401 - fixtures
from local_checks import http_server
from support import make_env

from lakehouse.metrics import parse_line
from lakehouse.orchestration.alerts import (Alert, AlertDeliveryError, Webhook, alerts_log_path, deliver,
                                            webhook_payload)
from lakehouse.settings import Settings, load_settings

CONN_ENV = "AIRFLOW_CONN_LAKEHOUSE_ALERTS"
FAST = {"timeout_s": 2, "backoff_s": 0.01}  # three attempts, 10 ms then 20 ms apart


@dataclass
class Receiver:
    """A local webhook: answers ``statuses`` in turn (then 204), each after its entry of ``delays_s``
    (then at once), and records every POST."""

    url: str
    port: int
    statuses: list[int]
    delays_s: list[float] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    box = Receiver(url="", port=0, statuses=[])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                box.calls.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                  "authorization": self.headers.get("Authorization"),
                                  "x_team": self.headers.get("X-Team"), "json": json.loads(body)})
                status = box.statuses.pop(0) if box.statuses else 204
                delay = box.delays_s.pop(0) if box.delays_s else 0.0
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as root:
        box.port = int(root.rsplit(":", 1)[1])
        box.url = f"{root}/hooks/lakehouse"
        yield box


def _settings(tmp_path: Path, statsd_sock: socket.socket) -> Settings:
    return load_settings(make_env(tmp_path / "home", LAKEHOUSE_STATSD_PORT=str(statsd_sock.getsockname()[1])))


def _connection(monkeypatch: pytest.MonkeyPatch, **conn: Any) -> None:
    monkeypatch.setenv(CONN_ENV, json.dumps({"conn_type": "http", **conn}))


def _alert() -> Alert:
    return Alert(event="task_failed", dag_id="bronze_ingestion", task_id="bronze_binance", layer="bronze",
                 run_id="r1", summary="task bronze_binance of run r1 failed")


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


def _assert_log_and_counter(settings: Settings, statsd_sock: socket.socket, event: str) -> None:
    [line] = alerts_log_path(settings).read_text().splitlines()
    assert json.loads(line)["event"] == event
    samples = [parse_line(ln, "lakehouse") for ln in statsd_lines(statsd_sock)]
    assert any(s.name == "alerts" and s.value == 1 and s.tags["event"] == event for s in samples), samples


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


def test_deliver_writes_the_log_line_the_counter_and_posts_the_webhook(
        tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    settings = _settings(tmp_path, statsd)
    _connection(monkeypatch, host=receiver.url, login="bot", password="s3cret", extra={"X-Team": "data"})
    deliver(settings, _alert(), Webhook(**FAST))

    [call] = receiver.calls
    assert call["path"] == "/hooks/lakehouse" and call["content_type"] == "application/json"
    assert call["json"]["event"] == "task_failed" and call["json"]["task_id"] == "bronze_binance"
    assert call["json"]["text"].startswith("[lakehouse error] task_failed bronze_ingestion.bronze_binance")
    assert call["authorization"].startswith("Basic ") and call["x_team"] == "data"
    _assert_log_and_counter(settings, statsd, "task_failed")


def test_host_port_and_scheme_connection(tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    # The HTTP provider's other shape: host, port and the URL scheme in schema (no path).
    _connection(monkeypatch, host="127.0.0.1", port=receiver.port, schema="http")
    deliver(_settings(tmp_path, statsd), _alert(), Webhook(**FAST))
    assert [c["path"] for c in receiver.calls] == ["/"]


def test_5xx_answers_are_retried_until_accepted(tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                               airflow_home: Path) -> None:  # noqa: F811
    settings = _settings(tmp_path, statsd)
    _connection(monkeypatch, host=receiver.url)
    receiver.statuses = [503, 503]
    alert = _alert()
    with caplog.at_level(logging.WARNING, logger="lakehouse.orchestration.alerts"):
        deliver(settings, alert, Webhook(**FAST))  # the third attempt is accepted: no error

    assert len(receiver.calls) == 3
    expected = json.loads(json.dumps(webhook_payload(alert)))
    assert all(c["json"] == expected for c in receiver.calls)  # the same JSON payload each time
    assert [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()] == [
        "webhook (connection 'lakehouse_alerts'): attempt 1 of 3 failed (HTTP 503), retrying",
        "webhook (connection 'lakehouse_alerts'): attempt 2 of 3 failed (HTTP 503), retrying"]


def test_5xx_on_every_attempt_raises_after_them(
        tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    settings = _settings(tmp_path, statsd)
    _connection(monkeypatch, host=receiver.url)
    receiver.statuses = [500, 502, 503, 504]
    with pytest.raises(AlertDeliveryError) as err:
        deliver(settings, _alert(), Webhook(**FAST))
    assert len(receiver.calls) == 3
    assert str(err.value) == ("alert task_failed for bronze_ingestion not fully delivered: "
                              "webhook (connection 'lakehouse_alerts'): HTTP 503 after 3 attempts")


def test_a_post_slower_than_the_timeout_is_retried(tmp_path: Path, receiver: Receiver,
                                                   statsd: socket.socket,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   airflow_home: Path) -> None:  # noqa: F811
    _connection(monkeypatch, host=receiver.url)
    receiver.delays_s = [1.5]  # the first answer comes after the 0.3 s timeout
    deliver(_settings(tmp_path, statsd), _alert(), Webhook(timeout_s=0.3, backoff_s=0.01))
    assert len(receiver.calls) == 2


def test_a_4xx_is_not_retried(tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
                              monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    settings = _settings(tmp_path, statsd)
    _connection(monkeypatch, host=receiver.url)
    receiver.statuses = [400]
    with pytest.raises(AlertDeliveryError) as err:
        deliver(settings, _alert(), Webhook(**FAST))
    assert len(receiver.calls) == 1
    assert str(err.value) == ("alert task_failed for bronze_ingestion not fully delivered: "
                              "webhook (connection 'lakehouse_alerts'): HTTP 400")
    _assert_log_and_counter(settings, statsd, "task_failed")


def test_a_webhook_that_is_down_raises_after_the_retries_and_the_other_channels(
        tmp_path: Path, statsd: socket.socket, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        caplog: pytest.LogCaptureFixture, airflow_home: Path) -> None:  # noqa: F811
    settings = _settings(tmp_path, statsd)
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        _connection(monkeypatch, host=f"http://127.0.0.1:{closed.getsockname()[1]}/hook/T0KEN")
    alert = Alert(event="deadline_missed", dag_id="gold_aggregation", summary="late")
    with caplog.at_level(logging.WARNING, logger="lakehouse.orchestration.alerts"), \
            pytest.raises(AlertDeliveryError) as err:
        deliver(settings, alert, Webhook(**FAST))

    assert str(err.value) == ("alert deadline_missed for gold_aggregation not fully delivered: "
                              "webhook (connection 'lakehouse_alerts'): ConnectionError after 3 attempts")
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2
    assert any(r.getMessage() == "ALERT deadline_missed gold_aggregation: late" for r in caplog.records)
    _assert_log_and_counter(settings, statsd, "deadline_missed")


def test_no_webhook_without_the_connection(tmp_path: Path, statsd: socket.socket,  # noqa: F811
                                          monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    from lakehouse.orchestration.notify import resolve_webhook

    monkeypatch.delenv(CONN_ENV, raising=False)
    settings = _settings(tmp_path, statsd)
    deliver(settings, _alert(), resolve_webhook(settings))  # no error: nothing to POST to
    _assert_log_and_counter(settings, statsd, "task_failed")
    assert resolve_webhook(settings) == Webhook(conn_id="lakehouse_alerts", timeout_s=settings.alert_webhook_timeout_s)


def test_the_connection_is_read_before_the_alert_is_logged(
        tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    # Once an alert is in the log its targets are settled: a connection added meanwhile (the first
    # read in a fresh triggerer can take many seconds) does not apply to it.
    from airflow.sdk import Connection

    settings = _settings(tmp_path, statsd)
    _connection(monkeypatch, host=receiver.url)
    logged_at_read: list[bool] = []
    real_get = Connection.get

    def get(conn_id: str) -> Connection:
        logged_at_read.append(alerts_log_path(settings).exists())
        return real_get(conn_id)

    monkeypatch.setattr(Connection, "get", get)
    deliver(settings, _alert(), Webhook(**FAST))
    assert logged_at_read[0] is False and len(receiver.calls) == 1


def test_a_connection_this_process_may_not_read_fails_with_the_fix(
        tmp_path: Path, statsd: socket.socket, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        airflow_home: Path) -> None:  # noqa: F811
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

    def denied(conn_id: str) -> None:
        raise AirflowSecretsBackendAccessDenied(f"connection {conn_id} is not readable from callbacks")

    monkeypatch.setattr(Connection, "get", denied)
    settings = _settings(tmp_path, statsd)
    with pytest.raises(AlertDeliveryError) as err:
        deliver(settings, _alert(), Webhook(**FAST))
    assert str(err.value) == (
        "alert task_failed for bronze_ingestion not fully delivered: webhook (connection 'lakehouse_alerts') "
        "cannot be read from this process (connection lakehouse_alerts is not readable from callbacks); "
        "define it as AIRFLOW_CONN_LAKEHOUSE_ALERTS or in a secrets backend")
    _assert_log_and_counter(settings, statsd, "task_failed")


@pytest.mark.parametrize(("uri", "conn", "hint"), [
    ("https://bot:pw@hooks.example.com:8443/services/T1/B2", None, "reads a URI's path as the URL scheme"),
    (None, {"host": "http://127.0.0.1:9/hook", "extra": {"headers": {"Authorization": "Bearer t"}}},
     "'headers' and 'endpoint' are not read"),
    (None, {"host": "http://127.0.0.1:9/hook", "extra": {"endpoint": "lakehouse"}}, "'headers' and 'endpoint'"),
])
def test_shapes_the_http_provider_would_misread_are_refused(
        uri: str | None, conn: dict[str, Any] | None, hint: str, tmp_path: Path, statsd: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    if uri:
        monkeypatch.setenv(CONN_ENV, uri)
    else:
        _connection(monkeypatch, **(conn or {}))
    settings = _settings(tmp_path, statsd)
    with pytest.raises(AlertDeliveryError, match="webhook \\(connection 'lakehouse_alerts'\\): ") as err:
        deliver(settings, _alert(), Webhook(**FAST))
    assert hint in str(err.value) and "\n" not in str(err.value)
    _assert_log_and_counter(settings, statsd, "task_failed")


def test_notifier_as_a_failure_callback_alerts_through_every_channel(
        tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    from lakehouse.orchestration.notify import failure_notifier

    for key, value in make_env(tmp_path / "home", LAKEHOUSE_STATSD_PORT=str(statsd.getsockname()[1])).items():
        monkeypatch.setenv(key, value)
    _connection(monkeypatch, host=receiver.url)
    failure_notifier("silver")(_task_failure_context())  # how the task runner calls on_failure_callback

    [call] = receiver.calls
    alert = call["json"]
    assert (alert["event"], alert["task_id"], alert["layer"]) == ("task_failed", "silver_kraken", "silver")
    _assert_log_and_counter(load_settings(), statsd, "task_failed")


def test_notifier_in_the_triggerer_retries_from_its_worker_thread(
        tmp_path: Path, receiver: Receiver, statsd: socket.socket,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, airflow_home: Path) -> None:  # noqa: F811
    from lakehouse.orchestration.notify import LakehouseNotifier

    for key, value in make_env(tmp_path / "home", LAKEHOUSE_STATSD_PORT=str(statsd.getsockname()[1])).items():
        monkeypatch.setenv(key, value)
    _connection(monkeypatch, host=receiver.url)
    receiver.statuses = [503]  # one retry, after the default 1 s backoff
    notifier = LakehouseNotifier(event="deadline_missed", layer="gold", deadline_s=180, context=_deadline_context())

    async def triggerer() -> None:  # the triggerer awaits the notifier on its event loop
        await notifier

    asyncio.run(triggerer())

    assert len(receiver.calls) == 2
    alert = receiver.calls[-1]["json"]
    assert (alert["event"], alert["dag_id"], alert["layer"]) == ("deadline_missed", "gold_aggregation", "gold")
    assert alert["details"]["deadline_s"] == 180
    _assert_log_and_counter(load_settings(), statsd, "deadline_missed")
