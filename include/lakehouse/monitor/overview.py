"""The health report ``lakehouse health --json`` prints and the Lakehouse page shows: one place.

:func:`report` is the figures of :func:`lakehouse.monitor.figures.collect`, the rules' verdict on
them (:func:`assess`: status, thresholds passed now, alerts the ``pipeline_monitor`` DAG has
firing) and, for the page, the same figures arranged per exchange and layer and per table, plus
the last hours from Iceberg metadata (:mod:`lakehouse.monitor.history`). Nothing here measures
anything: it only arranges what the monitor measured, so the page, the JSON endpoint and the CLI
cannot disagree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lakehouse import names
from lakehouse.monitor import figures as F
from lakehouse.monitor import history as H
from lakehouse.monitor.cli import CRITICAL as CRITICAL_CODE
from lakehouse.monitor.cli import HEALTHY, WARNINGS
from lakehouse.monitor.alerting import AlertState, Breach, breaches, load_state, state_path
from lakehouse.monitor.rules import CRITICAL, KAFKA_LAG_SECONDS, rules
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.table import Table

STATUSES = ("healthy", "warning", "critical")
# Each layer's lag: the figures (records, seconds) and the labels that select the layer's series.
LAG_FIGURES: dict[str, tuple[str, str, dict[str, str]]] = {
    "bronze": (F.KAFKA_LAG_RECORDS, KAFKA_LAG_SECONDS, {}),
    "silver": (F.LAYER_LAG_RECORDS, F.LAYER_LAG_SECONDS, {"layer": "silver"}),
    "gold": (F.LAYER_LAG_RECORDS, F.LAYER_LAG_SECONDS, {"layer": "gold"}),
}


@dataclass(frozen=True)
class Assessment:
    """The rules' verdict: exit code (0 healthy, 1 warnings, 2 critical or unmeasured), what is past
    a threshold now, and the alerts the monitor DAG has firing (its state file)."""

    code: int
    breaches: list[Breach]
    firing: dict[str, AlertState]

    @property
    def status(self) -> str:
        return STATUSES[self.code]


def assess(settings: Settings, health: F.Health) -> Assessment:
    found = breaches(rules(settings), health.figures)
    firing = {k: a for k, a in load_state(state_path(settings)).items() if a.firing}
    if any(b.severity == CRITICAL for b in found) or health.errors:
        code = CRITICAL_CODE
    else:
        code = WARNINGS if found else HEALTHY
    return Assessment(code, found, firing)


def health_json(health: F.Health, verdict: Assessment) -> dict[str, Any]:
    """What ``lakehouse health --json`` prints."""
    return {**F.as_json(health), "status": verdict.status,
            "breaches": [{"rule": b.rule.name, "severity": b.severity, "labels": dict(b.figure.labels),
                          "value": b.figure.value, "text": b.text} for b in verdict.breaches],
            "firing": [{"key": k, "rule": a.rule, "severity": a.severity, "labels": a.labels,
                        "since": a.since, "summary": a.summary} for k, a in sorted(verdict.firing.items())]}


def lag(health: F.Health, exchange: str) -> dict[str, dict[str, float | None]]:
    """Per layer, the records and seconds its input holds that it has not read (None: not measured)."""
    out = {}
    for layer, (records, seconds, labels) in LAG_FIGURES.items():
        out[layer] = {"records": health.value(records, exchange=exchange, **labels),
                      "seconds": health.value(seconds, exchange=exchange, **labels)}
    return out


def tables(health: F.Health, settings: Settings) -> list[dict[str, Any]]:
    """Per table (every table of the product, in creation order): freshness and size figures."""
    rows = []
    for name in names.all_tables(settings):
        row: dict[str, Any] = {"table": name, "layer": None, "exchange": None}
        for figure_name, key in ((F.COMMIT_AGE_SECONDS, "commit_age_seconds"),
                                 (F.EVENT_AGE_SECONDS, "event_age_seconds"), (F.TABLE_BYTES, "bytes"),
                                 (F.TABLE_DATA_FILES, "data_files"), (F.TABLE_SNAPSHOTS, "snapshots")):
            figure = next((f for f in health.figures if f.name == figure_name and f.labels.get("table") == name), None)
            row[key] = None if figure is None else figure.value
            if figure is not None:
                row["layer"], row["exchange"] = figure.labels.get("layer"), figure.labels.get("exchange")
        rows.append(row)
    return rows


def report(settings: Settings, now: float | None = None) -> dict[str, Any]:
    """Everything the Lakehouse page shows that the lakehouse measures (the Airflow part, the
    maintenance DAGs' runs, is added by the page's app): one monitor run and its history."""
    loaded: dict[str, Table] = {}
    health = F.collect(settings, now, loaded=loaded)
    verdict = assess(settings, health)
    past = H.history(settings.exchanges, loaded, health.at)
    return {**health_json(health, verdict),
            "generated_at": dt.datetime.fromtimestamp(health.at, dt.timezone.utc).isoformat(),
            "exchanges": {ex: {"lag": lag(health, ex),
                               "end_to_end_seconds": health.value(F.END_TO_END_SECONDS, exchange=ex)}
                          for ex in settings.exchanges},
            "tables": tables(health, settings),
            "history": past.as_json()}


__all__ = ["LAG_FIGURES", "STATUSES", "Assessment", "assess", "health_json", "lag", "report", "tables"]
