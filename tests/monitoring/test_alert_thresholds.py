"""The Prometheus alert rules and the Python alert rules agree.

Two evaluators watch the same figures: the pipeline_monitor DAG (include/lakehouse/monitor/rules.py)
and Prometheus (monitoring/prometheus/rules/lakehouse.yml). If their thresholds drift apart the
dashboard and the webhook disagree about what is wrong. The Python defaults are the reference.
"""

from __future__ import annotations

import re

import pytest
from monitoring_files import AlertRule, alert_rules, comparisons, duration_seconds, metric_names, selectors

from lakehouse.monitor.rules import CRITICAL, WARNING, rules
from lakehouse.monitor.rules import AlertRule as PythonRule
from lakehouse.settings import load_settings

PYTHON_RULES = rules(load_settings({}))


def prometheus_alerts_of(rule: PythonRule) -> dict[str, AlertRule]:
    """The Prometheus alerts on the rule's figure (``lakehouse_monitor_<figure>``), by severity."""
    metric = f"lakehouse_monitor_{rule.figure}"
    found: dict[str, AlertRule] = {}
    for alert in alert_rules():
        if metric in metric_names(alert.expr) and comparisons(alert.expr, metric):
            severity = alert.labels.get("severity", "")
            assert severity not in found, f"two {severity} alerts on {metric}: {found[severity].alert}, {alert.alert}"
            found[severity] = alert
    return found


def camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("rule", PYTHON_RULES, ids=lambda r: r.name)
def test_prometheus_thresholds_equal_the_python_defaults(rule: PythonRule) -> None:
    """Warning fires above the warning value up to the critical value (the two never fire
    together), critical above the critical value, as AlertRule.severity decides."""
    metric = f"lakehouse_monitor_{rule.figure}"
    alerts = prometheus_alerts_of(rule)
    expected = {s for s, v in ((WARNING, rule.warning), (CRITICAL, rule.critical)) if v is not None}
    assert set(alerts) == expected, (f"{metric}: Prometheus alerts for severities {sorted(alerts)}, "
                                     f"Python {sorted(expected)}")
    if rule.warning is not None:
        wanted = {(">", rule.warning)} | ({("<=", rule.critical)} if rule.critical is not None else set())
        got = comparisons(alerts[WARNING].expr, metric)
        assert got == wanted, f"{alerts[WARNING].alert} warning compares {metric} with {got}, Python says {wanted}"
    if rule.critical is not None:
        got = comparisons(alerts[CRITICAL].expr, metric)
        assert got == {(">", rule.critical)}, (f"{alerts[CRITICAL].alert} critical compares with {got}, "
                                               f"Python says > {rule.critical}")


@pytest.mark.parametrize("rule", PYTHON_RULES, ids=lambda r: r.name)
def test_prometheus_alerts_mirror_the_rest_of_the_python_rule(rule: PythonRule) -> None:
    """Same name (Lakehouse + CamelCase), same hold time, same series filter, same runbook."""
    metric = f"lakehouse_monitor_{rule.figure}"
    for severity, alert in prometheus_alerts_of(rule).items():
        where = f"{alert.alert} ({severity})"
        assert alert.alert == "Lakehouse" + camel(rule.name), where
        assert alert.labels.get("rule") == rule.name, where
        assert duration_seconds(alert.for_) == rule.for_s, f"{where}: for {alert.for_}, Python for_s {rule.for_s}"
        for name, matchers in selectors(alert.expr):
            if name == metric:
                assert all(matchers.get(k) == v for k, v in rule.only), f"{where}: must select {dict(rule.only)}"
        if rule.only:
            assert any(name == metric for name, _ in selectors(alert.expr)), f"{where}: must select {dict(rule.only)}"
        assert _normal(alert.annotations.get("runbook", "")) == _normal(rule.runbook), f"{where}: runbook differs"
        summary = alert.annotations.get("summary", "")
        for label in re.findall(r"\{(\w+)\}", rule.summary):
            if label in ("exchange", "layer", "topic", "error_type"):
                assert f"$labels.{label}" in summary, f"{where}: summary does not name {label}"


def test_every_figure_alert_in_prometheus_has_a_python_rule() -> None:
    """No threshold alert on a monitor figure exists only on the Prometheus side."""
    watched = {f"lakehouse_monitor_{rule.figure}" for rule in PYTHON_RULES}
    for alert in alert_rules():
        compared = {name for name in metric_names(alert.expr)
                    if name.startswith("lakehouse_monitor_") and comparisons(alert.expr, name)}
        assert compared <= watched, f"{alert.alert} compares {compared - watched}, which no Python rule watches"


def test_the_monitor_down_alert_watches_the_monitor_itself() -> None:
    """An absent() over the monitor's gauges held for 5 minutes: fires when the DAG stops."""
    [alert] = [a for a in alert_rules() if a.alert == "LakehouseMonitorDown"]
    assert alert.expr.lstrip().startswith("absent(")
    assert "lakehouse_monitor_alert_firing" in metric_names(alert.expr)
    assert duration_seconds(alert.for_) == 300


def test_warning_and_critical_labels_and_annotations() -> None:
    """Every alert has a severity Alertmanager routes and inhibits by, a summary and a runbook."""
    for alert in alert_rules():
        assert alert.alert.startswith("Lakehouse"), alert.alert
        assert alert.labels.get("severity") in (WARNING, CRITICAL), alert.alert
        assert alert.annotations.get("summary") and alert.annotations.get("runbook"), alert.alert
