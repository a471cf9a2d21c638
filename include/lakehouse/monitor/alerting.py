"""Alert state across monitor runs: fire once, repeat on a slow clock, resolve once.

The monitor runs every minute; notifying on every run would bury the person on call. So each
alert (a rule and one series of its figure, e.g. ``kafka_lag`` for ``exchange=binance``) moves
through pending -> firing -> resolved, and :func:`evaluate` returns only the transitions worth a
message: it starts firing (or changes severity), it still fires after
``LAKEHOUSE_ALERT_REPEAT_MINUTES``, it stops. The state is a small JSON file under the lakehouse
home, written whole (temporary file and rename), so it survives scheduler restarts and a killed
task never leaves half of it.

Pure functions over plain data: unit tests drive :func:`evaluate` with made-up figures and clocks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lakehouse.monitor.rules import AlertRule
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

FIRING = "firing"
REPEAT = "repeat"
RESOLVED = "resolved"
STATE_VERSION = 1


@dataclass(frozen=True)
class Figure:
    """One value of one figure for one label set (e.g. kafka_lag_seconds{exchange=binance} = 42)."""

    name: str
    labels: Mapping[str, str]
    value: float
    context: Mapping[str, Any] = field(default_factory=dict)  # more words for messages, not labels

    def key(self) -> str:
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) + "}"


@dataclass(frozen=True)
class AlertState:
    """Where one alert stands between runs (times are epoch seconds)."""

    rule: str
    labels: dict[str, str]
    severity: str  # the severity its figure reached
    since: float  # when the figure first reached it (the for-duration counts from here)
    firing: bool = False
    notified_at: float | None = None
    value: float = 0.0
    summary: str = ""


@dataclass(frozen=True)
class Notification:
    """A transition worth a message: an alert fires, still fires, or resolved."""

    kind: str  # FIRING, REPEAT or RESOLVED
    rule: AlertRule
    state: AlertState

    @property
    def text(self) -> str:
        if self.kind == RESOLVED:
            return f"resolved: {self.rule.name} {_where(self.state.labels)}: {self.state.summary}"
        again = " (still firing)" if self.kind == REPEAT else ""
        return f"{self.state.severity}: {self.rule.name} {_where(self.state.labels)}{again}: {self.state.summary}"


def _where(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def alert_key(rule: AlertRule, labels: Mapping[str, str]) -> str:
    return rule.name + "{" + _where(labels) + "}"


def summarize(rule: AlertRule, figure: Figure) -> str:
    """The rule's summary for this series: its labels, its context, and its value in the rule's unit."""
    words: dict[str, Any] = {**figure.context, **figure.labels, "value": rule.format(figure.value)}
    try:
        return rule.summary.format(**words)
    except (KeyError, IndexError, ValueError) as err:  # a missing word must not lose the alert
        return f"{figure.key()} = {rule.format(figure.value)} (summary template: {err})"


def evaluate(rules: Iterable[AlertRule], figures: Iterable[Figure], previous: Mapping[str, AlertState],
             now: float, repeat_s: float, unmeasured: Collection[str] = ()
             ) -> tuple[dict[str, AlertState], list[Notification]]:
    """The alerts' new state and the notifications this run sends.

    A series above a threshold is pending until it has been above one for ``rule.for_s`` seconds,
    then fires (one FIRING); while it fires, a change of severity (warning to critical or back)
    sends one FIRING at the new severity at once, and the alert is repeated every ``repeat_s``; one that drops below every threshold, or whose series is gone,
    sends one RESOLVED and leaves the state. Alerts on a figure in ``unmeasured`` (its source could
    not be read this run) stay as they were: an outage of Kafka must not "resolve" the lag alert.
    """
    figures = list(figures)
    rules = list(rules)
    by_name = {r.name: r for r in rules}
    state: dict[str, AlertState] = {}
    notes: list[Notification] = []
    for rule in rules:
        for figure in figures:
            if figure.name != rule.figure or not rule.watches(dict(figure.labels)):
                continue
            key = alert_key(rule, figure.labels)
            before = previous.get(key)
            severity = rule.severity(figure.value)
            if severity is None:
                if before is not None and before.firing:
                    resolved = replace(before, value=figure.value, summary=summarize(rule, figure))
                    notes.append(Notification(RESOLVED, rule, resolved))
                continue
            summary = summarize(rule, figure)
            if before is None or not before.firing:  # pending: above a threshold for rule.for_s yet?
                since = before.since if before is not None else now
                current = AlertState(rule.name, dict(figure.labels), severity, since, value=figure.value,
                                     summary=summary)
                if now - since >= rule.for_s:
                    current = replace(current, firing=True, notified_at=now)
                    notes.append(Notification(FIRING, rule, current))
            elif severity != before.severity:  # firing, and escalated (or eased): say so once, at once
                current = replace(before, severity=severity, notified_at=now, value=figure.value, summary=summary)
                notes.append(Notification(FIRING, rule, current))
            else:
                current = replace(before, value=figure.value, summary=summary)
                if before.notified_at is None or now - before.notified_at >= repeat_s:
                    current = replace(current, notified_at=now)
                    notes.append(Notification(REPEAT, rule, current))
            state[key] = current
    for key, before in previous.items():  # series that vanished (or rules that were removed)
        if key in state:
            continue
        rule = by_name.get(before.rule)
        if rule is None:
            continue
        if rule.figure in unmeasured:
            state[key] = before
            continue
        if not before.firing:
            continue
        seen = any(alert_key(rule, f.labels) == key for f in figures if f.name == rule.figure)
        if not seen:
            notes.append(Notification(RESOLVED, rule, replace(before, summary=before.summary + " (no longer measured)")))
    return state, notes


@dataclass(frozen=True)
class Breach:
    """A figure past one of a rule's thresholds right now (no for-duration, no state)."""

    rule: AlertRule
    figure: Figure
    severity: str

    @property
    def text(self) -> str:
        return f"{self.severity}: {self.rule.name} {_where(self.figure.labels)}: {summarize(self.rule, self.figure)}"


def breaches(rules: Iterable[AlertRule], figures: Iterable[Figure]) -> list[Breach]:
    """Every figure past a threshold of a rule watching it, critical first."""
    figures = list(figures)
    found = [Breach(rule, f, severity) for rule in rules for f in figures
             if f.name == rule.figure and rule.watches(dict(f.labels))
             and (severity := rule.severity(f.value)) is not None]
    return sorted(found, key=lambda b: (b.severity != "critical", b.rule.name, b.figure.key()))


def state_path(settings: Settings) -> Path:
    """Where the alert state lives: under the lakehouse home, beside the logs."""
    return settings.home / "monitor" / "alert-state.json"


def load_state(path: Path) -> dict[str, AlertState]:
    """The saved alert state; empty when there is none. A file that cannot be read is reported in
    one line and treated as empty: firing alerts then fire again, which is better than silence."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("alert state %s unreadable, starting afresh: %s", path, err)
        return {}
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        log.warning("alert state %s has an unknown format, starting afresh", path)
        return {}
    try:
        return {key: AlertState(**value) for key, value in raw.get("alerts", {}).items()}
    except TypeError as err:
        log.warning("alert state %s has an unknown format (%s), starting afresh", path, err)
        return {}


def save_state(path: Path, state: Mapping[str, AlertState]) -> None:
    """Write the state whole: a temporary file beside it, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {"version": STATE_VERSION, "alerts": {k: asdict(v) for k, v in sorted(state.items())}}
    temporary.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)


__all__ = ["FIRING", "REPEAT", "RESOLVED", "AlertState", "Breach", "Figure", "breaches", "Notification", "alert_key", "evaluate",
           "load_state", "save_state", "state_path", "summarize"]
