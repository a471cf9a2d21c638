"""One alert path for the whole product: a structured alert log line, a StatsD counter, a webhook.

Deadline misses and task failures both end here (through :mod:`lakehouse.orchestration.notify`),
so an operator watches one file, one metric and one webhook. This module has no Airflow import:
it is plain Python that unit tests drive directly.

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
from typing import Any
from urllib.parse import urlsplit

import requests

from lakehouse.metrics import StatsD
from lakehouse.settings import Settings

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
    """Where alerts are POSTed as JSON (built from the ``lakehouse_alerts`` Airflow connection)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None
    timeout_s: float = 10.0


def redact_url(url: str) -> str:
    """Scheme, host and port only: webhook paths often embed a secret token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "") + "/..."


def alerts_log_path(settings: Settings) -> Path:
    """The JSON-lines file every alert is appended to (``tail -f`` it while ``make run`` runs)."""
    return settings.log_dir / "alerts.jsonl"


def webhook_payload(alert: Alert) -> dict[str, Any]:
    """The alert as JSON, plus a ``text`` line so chat webhooks (Slack, Mattermost) show it as is."""
    where = alert.dag_id + (f".{alert.task_id}" if alert.task_id else "")
    return {"text": f"[lakehouse {alert.severity}] {alert.event} {where}: {alert.summary}", **alert.as_dict()}


def deliver(settings: Settings, alert: Alert, webhook: Webhook | None = None) -> None:
    """Send ``alert`` to every channel: log line, alert file, StatsD counter, webhook (if configured)."""
    payload = alert.as_dict()
    log.warning("ALERT %s %s: %s", alert.event, alert.dag_id, alert.summary, extra={"alert": payload})

    statsd = StatsD.from_settings(settings)
    try:
        statsd.incr(ALERT_METRIC, tags={"event": alert.event, "dag_id": alert.dag_id,
                                        "layer": alert.layer or "none", "severity": alert.severity})
    finally:
        statsd.close()

    failures: list[str] = []
    path = alerts_log_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:  # one short write per line: appends stay whole lines
            out.write(json.dumps(payload, sort_keys=True, default=str) + "\n")
    except OSError as err:
        failures.append(f"alert file {path}: {err}")

    if webhook is not None:
        try:
            response = requests.post(webhook.url, json=webhook_payload(alert), headers=dict(webhook.headers),
                                     auth=webhook.auth, timeout=webhook.timeout_s)
            response.raise_for_status()
        except requests.HTTPError as err:
            failures.append(f"webhook {redact_url(webhook.url)}: HTTP {err.response.status_code}")
        except requests.RequestException as err:  # the URL may hold a token: report the error type only
            failures.append(f"webhook {redact_url(webhook.url)}: {type(err).__name__}")

    if failures:
        raise AlertDeliveryError(f"alert {alert.event} for {alert.dag_id} not fully delivered: " + "; ".join(failures))
