"""Paths of the files under ``monitoring/`` and small readers the monitoring tests share.

The PromQL reader is deliberately small: it only has to find which metric names a dashboard query
or an alert expression reads, and which numbers a metric is compared with. Its own tests (in
test_metric_names.py) pin what it recognises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
STATSD_MAPPING = MONITORING / "statsd" / "mapping.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
PROMETHEUS_RULES = MONITORING / "prometheus" / "rules" / "lakehouse.yml"
PROMETHEUS_RULE_TESTS = MONITORING / "prometheus" / "tests" / "lakehouse_test.yml"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
GRAFANA_DATASOURCE = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDER = MONITORING / "grafana" / "provisioning" / "dashboards" / "lakehouse.yml"
GRAFANA_DASHBOARD = MONITORING / "grafana" / "dashboards" / "lakehouse.json"
COMPOSE_FILE = REPO / "docker-compose.yaml"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule of the Prometheus rules file."""

    group: str
    alert: str
    expr: str
    for_: str
    labels: dict[str, str]
    annotations: dict[str, str]


@cache
def alert_rules() -> tuple[AlertRule, ...]:
    out = []
    for group in load_yaml(PROMETHEUS_RULES)["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                out.append(AlertRule(group["name"], rule["alert"], str(rule["expr"]), str(rule.get("for", "0s")),
                                     dict(rule.get("labels") or {}), dict(rule.get("annotations") or {})))
    return tuple(out)


# --- PromQL, just enough to name the metrics an expression reads --------------------------------
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w(])(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                       "offset", "bool", "inf", "nan", "Inf", "NaN"})
_SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def metric_names(expr: str) -> set[str]:
    """The metric names an instant/range PromQL expression selects (functions, keywords, label
    names, strings, durations and numbers left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {m for m in _IDENTIFIER.findall(text) if m not in _KEYWORDS}


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: matcher value}) of each ``name{...}`` selector in an expression."""
    out = []
    for match in _SELECTOR.finditer(expr):
        labels = {k: v[1:-1] for k, _, v in _MATCHER.findall(match.group(2))}
        out.append((match.group(1), labels))
    return out


def comparisons(expr: str, metric: str) -> set[tuple[str, float]]:
    """(operator, number) of every comparison of ``metric`` (with or without label matchers)
    against a number, e.g. ``{(">", 120.0), ("<=", 300.0)}``."""
    pattern = re.compile(rf"(?<![\w:]){re.escape(metric)}(?:\s*\{{[^{{}}]*\}})?\s*(>=|<=|==|!=|>|<)\s*(?:bool\s+)?"
                         r"([0-9][0-9.eE+-]*)")
    return {(op, float(number)) for op, number in pattern.findall(expr)}


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration such as ``5m``, ``1h30m`` or ``0s``."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"not a duration this test understands: {text!r}")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds
