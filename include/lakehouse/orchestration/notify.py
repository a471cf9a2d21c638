"""The Airflow side of alerting: one notifier for deadline misses and task failures.

:class:`LakehouseNotifier` is an Airflow ``BaseNotifier``. The layer DAGs use it twice:

* as the ``on_failure_callback`` of every task (called with the full task context, in the task's
  own process, once its retries are exhausted);
* as the ``AsyncCallback`` of every ``DeadlineAlert``: the scheduler marks the deadline missed and
  the triggerer awaits the notifier with ``context = {"dag_run": {...}, "deadline": {...}}``. (The
  triggerer, unlike an executor callback process in Airflow 3.3, can read connections stored in
  the metadata database, so a ``lakehouse_alerts`` connection made in the UI works there too.)

Both build an :class:`~lakehouse.orchestration.alerts.Alert` and hand it to
:func:`~lakehouse.orchestration.alerts.deliver`, which writes the log line, the StatsD counter and,
when the Airflow connection ``lakehouse_alerts`` exists, POSTs the webhook with the HTTP provider's
``HttpHook`` (chosen over the Apprise/Slack notifiers: our JSON payload is read by scripts and
Alertmanager-style receivers, one ``http`` connection serves them all, and the hook retries).

The connection is a standard HTTP-provider connection: the whole URL in ``host``
(``{"conn_type": "http", "host": "https://hooks.example.com/services/..."}``), or host, port and
``schema`` http/https; login/password are basic auth; the keys of ``extra`` are headers (besides
the hook's own options such as ``verify`` or ``proxies``). Changed from the former hand-built
client, and refused with a message saying so: the ``extra`` keys ``headers`` and ``endpoint`` (the
hook would send them as headers) and URIs such as ``https://host/path`` (the hook reads a URI's
path as the URL scheme and ignores conn_type https); give such a URL as ``host`` instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseNotifier

from lakehouse import names
from lakehouse.orchestration.alerts import DEADLINE_MISSED, EVENTS, TASK_FAILED, Alert, Webhook, deliver
from lakehouse.settings import Settings, load_settings

_MAX_ERROR_CHARS = 2000


def resolve_webhook(settings: Settings, conn_id: str = names.ALERTS_CONN_ID) -> Webhook:
    """The webhook of connection ``conn_id`` with the configured timeout.

    The connection itself is read when an alert is sent (:func:`~lakehouse.orchestration.alerts.open_webhook`):
    a missing one then means no webhook, one this process may not read fails the alert loudly.
    """
    return Webhook(conn_id=conn_id, timeout_s=settings.alert_webhook_timeout_s)


def _field(obj: Any, *keys: str) -> Any:
    """First present key/attribute of a dict (deadline context) or an object (task context)."""
    for key in keys:
        value = obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
        if value is not None:
            return value
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def alert_from_context(event: str, context: Mapping[str, Any], layer: str | None = None,
                       deadline_s: int | None = None) -> Alert:
    """Build the alert from an Airflow callback context (task failure or deadline miss)."""
    dag_run = context.get("dag_run") or {}
    ti = context.get("ti") or context.get("task_instance")
    dag_id = _field(dag_run, "dag_id") or _field(ti, "dag_id") or "unknown"
    run_id = _text(_field(dag_run, "run_id", "dag_run_id") or _field(ti, "run_id"))
    details: dict[str, Any] = {}
    task_id: str | None = None
    if event == DEADLINE_MISSED:
        deadline = context.get("deadline") or {}
        details = {"deadline_time": _text(_field(deadline, "deadline_time")),
                   "queued_at": _text(_field(dag_run, "queued_at")),
                   "state": _text(_field(dag_run, "state")),
                   "deadline_s": deadline_s}
        summary = (f"run {run_id} not finished {deadline_s}s after it was queued" if deadline_s
                   else f"run {run_id} missed its deadline")
    else:
        task_id = _text(_field(ti, "task_id"))
        error = context.get("exception")
        details = {"try_number": _field(ti, "try_number"), "map_index": _field(ti, "map_index"),
                   "log_url": _text(_field(ti, "log_url")),
                   "error": (f"{type(error).__name__}: {error}"[:_MAX_ERROR_CHARS] if error else None)}
        summary = f"task {task_id} of run {run_id} failed" + (f": {type(error).__name__}" if error else "")
    return Alert(event=event, dag_id=str(dag_id), run_id=run_id, task_id=task_id, layer=layer,
                 summary=summary, details={k: v for k, v in details.items() if v is not None})


class LakehouseNotifier(BaseNotifier):
    """Sends one lakehouse alert per call: log line + StatsD counter + webhook (if configured).

    Settings are loaded when the notifier fires (not when the DAG is parsed), in the process that
    runs it: the task process for failures, the triggerer for deadline misses.
    """

    template_fields = ()

    def __init__(self, event: str, layer: str | None = None, deadline_s: int | None = None,
                 context: Any = None) -> None:
        super().__init__(context=context)
        if event not in EVENTS:
            raise ValueError(f"unknown alert event {event!r}; expected one of {EVENTS}")
        self.event = event
        self.layer = layer
        self.deadline_s = deadline_s

    def _alert(self, context: Any) -> Alert:
        return alert_from_context(self.event, context, layer=self.layer, deadline_s=self.deadline_s)

    def notify(self, context: Any) -> None:
        """Sync path: task failure callbacks (task process)."""
        settings = load_settings()
        deliver(settings, self._alert(context), resolve_webhook(settings))

    async def async_notify(self, context: Any) -> None:
        """Async path: deadline callbacks (triggerer), run as :meth:`notify` in a worker thread.

        ``HttpHook`` is blocking and reads the connection with the Task SDK's sync call, which the
        triggerer serves from a worker thread (its comms send the request to the event loop and
        wait). ``HttpAsyncHook`` would need a second implementation: its own retries cover only
        5xx answers, with a fixed wait, not connection errors or timeouts.
        """
        await asyncio.to_thread(self.notify, context)


def failure_notifier(layer: str | None) -> LakehouseNotifier:
    """The ``on_failure_callback`` of a lakehouse task."""
    return LakehouseNotifier(event=TASK_FAILED, layer=layer)

