"""Alert rules and their state across monitor runs: once when firing, once per severity change,
repeats on the slow clock, one resolved message, state kept across restarts (a file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lakehouse.monitor import rules as rules_module
from lakehouse.monitor.alerting import (FIRING, REPEAT, RESOLVED, Figure, evaluate, load_state, save_state,
                                        state_path)
from lakehouse.monitor.rules import ALL_ERROR_TYPES, CRITICAL, WARNING, rules
from lakehouse.settings import SettingsError, load_settings

SETTINGS = load_settings({})
RULES = rules(SETTINGS)
REPEAT_S = 3600.0


def lag(value: float, exchange: str = "binance") -> Figure:
    return Figure(rules_module.KAFKA_LAG_SECONDS, {"exchange": exchange}, value, {"records": 10})


def run(values: list[float | None], start: float = 0.0, step: float = 60.0, repeat_s: float = REPEAT_S,
        rule_set: tuple[rules_module.AlertRule, ...] = RULES) -> list[list[tuple[str, str]]]:
    """Evaluate one lag value per minute (None: the series is not measured); (kind, severity) per run."""
    state: dict = {}
    out = []
    for i, value in enumerate(values):
        figures = [] if value is None else [lag(value)]
        state, notes = evaluate(rule_set, figures, state, start + i * step, repeat_s)
        out.append([(n.kind, n.state.severity) for n in notes])
    return out


def test_the_defaults_are_the_seeds_thresholds() -> None:
    by_name = {r.name: r for r in RULES}
    assert (by_name["kafka_lag"].warning, by_name["kafka_lag"].critical) == (120, 300)
    assert (by_name["dlq_rate"].warning, by_name["dlq_rate"].critical) == (0.01, 0.05)
    assert (by_name["job_down"].warning, by_name["job_down"].critical) == (120, 300)
    assert all(r.runbook and r.summary for r in RULES)


def test_settings_override_the_thresholds_and_bad_ones_fail_naming_the_variable() -> None:
    custom = rules(load_settings({"LAKEHOUSE_ALERT_LAG_WARNING_S": "5", "LAKEHOUSE_ALERT_LAG_CRITICAL_S": "10"}))
    assert {r.name: (r.warning, r.critical) for r in custom}["kafka_lag"] == (5, 10)
    with pytest.raises(SettingsError, match="LAKEHOUSE_ALERT_LAG_CRITICAL_S"):
        load_settings({"LAKEHOUSE_ALERT_LAG_WARNING_S": "500"})
    with pytest.raises(SettingsError, match="LAKEHOUSE_ALERT_REPEAT_MINUTES"):
        load_settings({"LAKEHOUSE_ALERT_REPEAT_MINUTES": "0"})


def test_a_growing_lag_fires_a_warning_then_a_critical_once_each_then_resolves_once() -> None:
    runs = run([10, 130, 140, 150, 310, 320, 330, 100, 90])
    assert runs == [[], [(FIRING, WARNING)], [], [], [(FIRING, CRITICAL)], [], [], [(RESOLVED, CRITICAL)], []]


def test_a_firing_alert_repeats_on_the_repeat_clock_only() -> None:
    runs = run([400] * 7, repeat_s=180)  # one run a minute, repeat every 3 minutes
    assert [kinds for kinds in runs] == [[(FIRING, CRITICAL)], [], [], [(REPEAT, CRITICAL)], [], [],
                                         [(REPEAT, CRITICAL)]]


def test_the_for_duration_holds_an_alert_back_until_it_has_lasted() -> None:
    held = tuple(rules_module.AlertRule(**{**r.__dict__, "for_s": 120}) for r in RULES)
    assert run([130, 130, 10, 130, 130, 130], rule_set=held) == [[], [], [], [], [], [(FIRING, WARNING)]]


def test_a_series_no_longer_measured_resolves() -> None:
    assert run([400, None, None]) == [[(FIRING, CRITICAL)], [(RESOLVED, CRITICAL)], []]


def test_each_exchange_is_its_own_alert_and_the_message_names_it() -> None:
    state, notes = evaluate(RULES, [lag(200, "binance"), lag(5, "kraken")], {}, 0, REPEAT_S)
    assert [(n.state.labels["exchange"], n.kind) for n in notes] == [("binance", FIRING)]
    assert "binance" in notes[0].text and "200 s" in notes[0].text and "10 records" in notes[0].text
    state, notes = evaluate(RULES, [lag(200, "binance"), lag(400, "kraken")], state, 60, REPEAT_S)
    assert [(n.state.labels["exchange"], n.state.severity) for n in notes] == [("kraken", CRITICAL)]


def test_the_dlq_rule_watches_the_total_and_names_the_error_types() -> None:
    figures = [Figure(rules_module.DLQ_RATE, {"exchange": "binance", "error_type": ALL_ERROR_TYPES}, 0.06,
                      {"window": 15, "error_types": "invalid_price 6.0%"}),
               Figure(rules_module.DLQ_RATE, {"exchange": "binance", "error_type": "invalid_price"}, 0.06)]
    _, notes = evaluate(RULES, figures, {}, 0, REPEAT_S)
    assert len(notes) == 1 and notes[0].state.severity == CRITICAL
    assert "invalid_price" in notes[0].text and "6.0%" in notes[0].text


def test_the_state_survives_a_restart_through_its_file(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path)})
    path = state_path(settings)
    state, notes = evaluate(RULES, [lag(200)], load_state(path), 0, REPEAT_S)
    save_state(path, state)
    assert [n.kind for n in notes] == [FIRING]
    state, notes = evaluate(RULES, [lag(200)], load_state(path), 60, REPEAT_S)  # a new process
    assert notes == [] and state == load_state(path)
    save_state(path, state)
    _, notes = evaluate(RULES, [lag(0)], load_state(path), 120, REPEAT_S)
    assert [n.kind for n in notes] == [RESOLVED]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_an_unreadable_state_file_starts_afresh_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "alert-state.json"
    path.write_text("{not json")
    assert load_state(path) == {}
    path.write_text(json.dumps({"version": 99}))
    assert load_state(path) == {}
    assert sum("starting afresh" in r.getMessage() for r in caplog.records) == 2


def test_an_unmeasured_figure_keeps_its_alerts_as_they_were() -> None:
    state, _ = evaluate(RULES, [lag(400)], {}, 0, REPEAT_S)
    kept, notes = evaluate(RULES, [], state, 60, REPEAT_S, unmeasured={rules_module.KAFKA_LAG_SECONDS})
    assert notes == [] and kept == state  # Kafka could not be read: no "resolved"
    _, notes = evaluate(RULES, [], kept, 120, REPEAT_S)
    assert [n.kind for n in notes] == [RESOLVED]
