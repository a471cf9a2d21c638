"""One monitor run: measure, publish, decide which alerts changed, notify, remember.

The ``pipeline_monitor`` DAG calls :func:`run_monitor` every minute; ``lakehouse monitor`` runs the
same from a shell. Figures go to StatsD on every run whatever the layer jobs do, so a stopped job
shows as a growing lag, never as a missing series. A part that could not be measured (Kafka down)
keeps its alerts as they were, and the run fails at the end with one line naming it, after
everything else was published and notified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from lakehouse import names
from lakehouse.monitor import rules as rule_defs
from lakehouse.monitor.alerting import (RESOLVED, AlertState, Notification, evaluate, load_state, save_state,
                                        state_path)
from lakehouse.monitor.figures import Health, collect, publish
from lakehouse.orchestration.alerts import RULE_FIRING, RULE_RESOLVED, Alert, AlertDeliveryError, Webhook, deliver
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

MONITOR_DAG = names.MONITOR_DAG


class MonitorError(RuntimeError):
    """Some figures could not be measured; the message names each part in one line."""


@dataclass
class MonitorRun:
    health: Health
    alerts: dict[str, AlertState]
    notifications: list[Notification] = field(default_factory=list)


def alert_of(note: Notification) -> Alert:
    """The notifier's alert for a rule transition (alert log line, StatsD counter, webhook)."""
    state = note.state
    return Alert(event=RULE_RESOLVED if note.kind == RESOLVED else RULE_FIRING, dag_id=MONITOR_DAG,
                 summary=note.text, layer=state.labels.get("layer"), level=None if note.kind == RESOLVED else state.severity,
                 details={"rule": note.rule.name, "transition": note.kind, "labels": dict(state.labels),
                          "value": state.value, "runbook": note.rule.runbook})


def publish_alerts(settings: Settings, alerts: dict[str, AlertState], rules: tuple[rule_defs.AlertRule, ...]) -> None:
    """``monitor.alert_firing`` 1 for every firing alert, 0 for every rule and severity not firing."""
    from lakehouse.metrics import StatsD

    statsd = StatsD.from_settings(settings)
    try:
        for rule in rules:
            firing = {a.severity for a in alerts.values() if a.rule == rule.name and a.firing}
            for severity in rule_defs.SEVERITIES:
                statsd.gauge("monitor.alert_firing", int(severity in firing), {"alert": rule.name, "severity": severity})
    finally:
        statsd.close()


def run_monitor(settings: Settings, webhook: Webhook | None = None, now: float | None = None) -> MonitorRun:
    """Measure every figure, publish it, move the alert state and send the transitions.

    Raises :class:`MonitorError` (after publishing and notifying) when a part could not be measured,
    and :class:`~lakehouse.orchestration.alerts.AlertDeliveryError` when a notification could not be
    delivered (the state is saved first, so a retry does not repeat what was delivered).
    """
    health = collect(settings, now)
    publish(settings, health)
    rules = rule_defs.rules(settings)
    path = state_path(settings)
    previous = load_state(path)
    alerts, notes = evaluate(rules, health.figures, previous, health.at, settings.alert_repeat_minutes * 60,
                             unmeasured=health.unmeasured)
    save_state(path, alerts)
    publish_alerts(settings, alerts, rules)
    failures: list[str] = []
    for note in notes:
        try:
            deliver(settings, alert_of(note), webhook)
        except AlertDeliveryError as err:
            failures.append(str(err))
    log.info("monitor run: %d figures, %d alerts firing, %d notifications", len(health.figures),
             sum(a.firing for a in alerts.values()), len(notes))
    if failures:
        raise AlertDeliveryError("; ".join(failures))
    if health.errors:
        raise MonitorError("not measured: " + "; ".join(health.errors))
    return MonitorRun(health, alerts, notes)


__all__ = ["MONITOR_DAG", "MonitorError", "MonitorRun", "alert_of", "publish_alerts", "run_monitor"]
