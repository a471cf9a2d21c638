"""One alert path for the whole product: a structured alert log line, a StatsD counter, a webhook.

Deadline misses and task failures both end here (through :mod:`lakehouse.orchestration.notify`),
so an operator watches one file, one metric and one webhook. Airflow is imported only when a
webhook is given: the log line, the alert file and the counter are plain Python that unit tests
and ``lakehouse monitor`` drive without it.

The webhook is the Airflow HTTP provider's ``HttpHook`` (POST to connection ``lakehouse_alerts``,
retried with backoff on connection errors, timeouts and 5xx), not the Apprise or Slack notifiers:
our JSON payload is read by scripts and Alertmanager-style receivers, not only by chat, and one
standard ``http`` connection plus the hook's retries covers every receiver.

Every channel is attempted even when an earlier one fails; a failed channel then raises
:class:`AlertDeliveryError`, so Airflow records the callback as failed instead of the alert
vanishing silently.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from lakehouse import names
from lakehouse.metrics import StatsD
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from airflow.providers.http.hooks.http import HttpHook

log = logging.getLogger(__name__)

# StatsD counter (prefixed by settings.statsd_prefix): lakehouse.alerts, tagged event/dag_id/layer.
ALERT_METRIC = "alerts"
DEADLINE_MISSED = "deadline_missed"
TASK_FAILED = "task_failed"
# The pipeline monitor's rules (lakehouse.monitor): an alert starts, keeps or stops firing.
RULE_FIRING = "rule_firing"
RULE_RESOLVED = "rule_resolved"
EVENTS = (DEADLINE_MISSED, TASK_FAILED, RULE_FIRING, RULE_RESOLVED)
SEVERITY = {DEADLINE_MISSED: "warning", TASK_FAILED: "error", RULE_FIRING: "warning", RULE_RESOLVED: "info"}


class AlertDeliveryError(RuntimeError):
    """An alert channel (alert file or webhook) could not be written; the message names it."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Alert:
    """What happened, where, and what an operator needs to act on it."""

    event: str
    dag_id: str
    summary: str
    run_id: str | None = None
    task_id: str | None = None
    layer: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    emitted_at: str = field(default_factory=_now)
    host: str = field(default_factory=socket.gethostname)
    level: str | None = None  # the severity, when the event does not fix it (a rule's warning or critical)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown alert event {self.event!r}; expected one of {EVENTS}")

    @property
    def severity(self) -> str:
        return self.level or SEVERITY[self.event]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["details"] = dict(self.details)
        out["severity"] = self.severity
        out["source"] = "lakehouse"
        return out


@dataclass(frozen=True)
class Webhook:
    """The Airflow HTTP connection alerts are POSTed to as JSON, and how hard to try.

    The connection is read when an alert is sent (by ``HttpHook``); when it does not exist there
    is no webhook. ``attempts`` counts the first POST; the waits between them double from
    ``backoff_s`` (1 s, 2 s, ... capped at 30 s).
    """

    conn_id: str = names.ALERTS_CONN_ID
    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 1.0


def alerts_log_path(settings: Settings) -> Path:
    """The JSON-lines file every alert is appended to (``tail -f`` it while ``make run`` runs)."""
    return settings.log_dir / "alerts.jsonl"


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """The alert as JSON, plus a ``text`` line so chat webhooks (Slack, Mattermost) show it as is."""
    where = alert.dag_id + (f".{alert.task_id}" if alert.task_id else "")
    return {"text": f"[lakehouse {alert.severity}] {alert.event} {where}: {alert.summary}", **alert.as_dict()}


def deliver(settings: Settings, alert: Alert, webhook: Webhook | None = None) -> None:
    """Send ``alert`` to every channel: log line, alert file, StatsD counter, webhook (if configured).

    The webhook's connection is read before anything is written, so once the alert is logged its
    targets are settled: a connection added later (its first read in a fresh triggerer can take
    many seconds) does not apply to it.
    """
    failures: list[str] = []
    hook: HttpHook | None = None
    if webhook is not None:
        hook, failure = open_webhook(webhook)
        if failure:
            failures.append(failure)

    payload = alert.as_dict()
    log.warning("ALERT %s %s: %s", alert.event, alert.dag_id, alert.summary, extra={"alert": payload})

    statsd = StatsD.from_settings(settings)
    try:
        statsd.incr(ALERT_METRIC, tags={"event": alert.event, "dag_id": alert.dag_id,
                                        "layer": alert.layer or "none", "severity": alert.severity})
    finally:
        statsd.close()

    path = alerts_log_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:  # one short write per line: appends stay whole lines
            out.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    except OSError as err:
        failures.append(f"alert file {path}: {err}")

    if webhook is not None and hook is not None:
        failure = post_webhook(hook, webhook, webhook_payload(alert))
        if failure:
            failures.append(failure)

    if failures:
        raise AlertDeliveryError(f"alert {alert.event} for {alert.dag_id} not fully delivered: " + "; ".join(failures))


def connection_problem(conn: Any) -> str | None:
    """Why ``HttpHook`` would misread ``conn``, for shapes the former hand-built client accepted.

    The hook takes ``schema`` as the URL scheme (so the path of a URI such as
    ``https://host/path`` is lost and ``conn_type`` https is ignored) and sends every key of
    ``extra`` other than its own options as a header.
    """
    extra = conn.extra_dejson or {}
    if "headers" in extra or "endpoint" in extra:
        return ("extra 'headers' and 'endpoint' are not read: put the headers themselves at the top level "
                "of extra and the whole URL in host")
    if "://" not in (conn.host or "") and (conn.conn_type == "https" or conn.schema not in (None, "", "http", "https")):
        return ("the HTTP provider reads a URI's path as the URL scheme: give the whole URL as host, "
                '{"conn_type": "http", "host": "https://host/path"}')
    return None


def _where(webhook: Webhook) -> str:
    return f"webhook (connection {webhook.conn_id!r})"


def open_webhook(webhook: Webhook) -> tuple[HttpHook | None, str | None]:
    """The ``HttpHook`` of ``webhook`` once its connection is read, or the failure as one line.

    (None, None) when the connection does not exist: no webhook is configured.
    """
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowSecretsBackendAccessDenied

    hook = HttpHook(method="POST", http_conn_id=webhook.conn_id)
    try:
        conn = hook.get_connection(webhook.conn_id)
    except AirflowNotFoundException:
        log.debug("no connection %r: alert not sent to a webhook", webhook.conn_id)
        return None, None
    except AirflowSecretsBackendAccessDenied as err:
        return None, (f"{_where(webhook)} cannot be read from this process ({err}); define it as "
                      f"AIRFLOW_CONN_{webhook.conn_id.upper()} or in a secrets backend")
    problem = connection_problem(conn)
    if problem:
        return None, f"{_where(webhook)}: {problem}"
    return hook, None


def post_webhook(hook: HttpHook, webhook: Webhook, payload: Mapping[str, Any]) -> str | None:
    """POST ``payload`` as JSON through ``hook``; the failure as one line, or None when sent.

    Retries connection errors, timeouts and 5xx answers (exponential backoff); a 4xx is final.
    Failures name the connection, never the URL: webhook paths often embed a secret token.
    """
    import tenacity

    where = _where(webhook)
    tries: list[int] = []
    retry_args = {
        "stop": tenacity.stop_after_attempt(webhook.attempts),
        "wait": tenacity.wait_exponential(multiplier=webhook.backoff_s, max=30),
        "retry": (tenacity.retry_if_exception_type((requests.ConnectionError, requests.Timeout))
                  | tenacity.retry_if_result(lambda response: response.status_code >= 500)),
        "before": lambda state: tries.append(state.attempt_number),
        "before_sleep": lambda state: log.warning("%s: attempt %d of %d failed (%s), retrying", where,
                                                  state.attempt_number, webhook.attempts, _outcome(state)),
        # Out of attempts: hand back the last answer (or raise the last error) instead of RetryError.
        "retry_error_callback": lambda state: state.outcome.result(),
    }
    try:
        response = hook.run_with_advanced_retry(retry_args, json=dict(payload),
                                                extra_options={"timeout": webhook.timeout_s, "check_response": False})
    except (requests.RequestException, ValueError) as err:  # messages may hold the URL: the type only
        return f"{where}: {type(err).__name__}{_after(tries)}"
    if not response.ok:
        return f"{where}: HTTP {response.status_code}{_after(tries)}"
    return None


def _outcome(state: Any) -> str:
    if state.outcome.failed:
        return type(state.outcome.exception()).__name__
    return f"HTTP {state.outcome.result().status_code}"


def _after(tries: list[int]) -> str:
    return f" after {len(tries)} attempts" if len(tries) > 1 else ""
