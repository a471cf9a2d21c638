"""The pipeline monitor on the embedded stack: its figures follow Kafka and the layers (lag, stall,
end to end, freshness, producer idle), and a 3% then 6% dead-letter share fires the warning, then
the critical alert naming the error type, once each, then resolves."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from local_checks import produce_trades
from lakehouse import avro, names
from lakehouse.catalog import load_catalog
from lakehouse.monitor import figures as F
from lakehouse.monitor.alerting import FIRING, RESOLVED
from lakehouse.monitor.run import run_monitor
from lakehouse.monitor.rules import ALL_ERROR_TYPES, CRITICAL, DLQ_RATE, KAFKA_LAG_SECONDS, STALLED_SECONDS, WARNING
from lakehouse.orchestration.alerts import alerts_log_path
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver.synthetic import bronze_arrow, trade
from lakehouse.spark import session

pytestmark = pytest.mark.integration

EX = "binance"
# Label keys of each figure (tests/monitoring/test_metric_names.py holds the same contract).
LABELS = {F.KAFKA_LAG_RECORDS: {"exchange"}, KAFKA_LAG_SECONDS: {"exchange"},
          F.COMMIT_AGE_SECONDS: {"layer", "exchange", "table"}, F.EVENT_AGE_SECONDS: {"layer", "exchange", "table"},
          F.END_TO_END_SECONDS: {"exchange"}, DLQ_RATE: {"exchange", "error_type"},
          STALLED_SECONDS: {"layer", "exchange"}, "producer_idle_seconds": {"exchange", "topic"},
          F.LAYER_LAG_RECORDS: {"layer", "exchange"}, F.LAYER_LAG_SECONDS: {"layer", "exchange"},
          **{name: {"layer", "exchange", "table"} for name in (F.TABLE_BYTES, F.TABLE_DATA_FILES, F.TABLE_SNAPSHOTS)}}
LATER = 100.0  # seconds the figures are taken after now: ages are then at least this


def test_figures_follow_kafka_and_each_layer(isolated: Settings) -> None:
    from lakehouse.bronze.run import run_bronze
    from lakehouse.silver.job import run as run_silver

    spark = session(isolated, "monitor-test")
    code, report = _health(isolated)
    assert (code, report["status"], report["breaches"]) == (0, "healthy", [])
    produce_trades(isolated, EX, range(30))
    produced = time.time()

    health = F.collect(isolated, now=produced + LATER)
    assert health.errors == []
    assert health.value(F.KAFKA_LAG_RECORDS, exchange=EX) == 30
    assert LATER <= health.value(KAFKA_LAG_SECONDS, exchange=EX) <= LATER + 60  # type: ignore[operator]
    assert health.value(STALLED_SECONDS, layer="bronze", exchange=EX) == health.value(KAFKA_LAG_SECONDS, exchange=EX)
    assert health.value(F.END_TO_END_SECONDS, exchange=EX) == health.value(KAFKA_LAG_SECONDS, exchange=EX)
    assert LATER <= health.value("producer_idle_seconds", exchange=EX) <= LATER + 60  # type: ignore[operator]
    assert health.value(F.KAFKA_LAG_RECORDS, exchange="kraken") == 0  # nothing produced there
    assert health.value(KAFKA_LAG_SECONDS, exchange="kraken") == 0

    assert run_bronze(spark, isolated, EX).records == 30
    health = F.collect(isolated, now=time.time() + LATER)
    assert health.value(F.KAFKA_LAG_RECORDS, exchange=EX) == 0 and health.value(KAFKA_LAG_SECONDS, exchange=EX) == 0
    assert health.value(STALLED_SECONDS, layer="bronze", exchange=EX) == 0
    silver_stall = health.value(STALLED_SECONDS, layer="silver", exchange=EX)
    assert silver_stall is not None and silver_stall >= LATER  # Bronze has an append Silver has not read
    assert health.value(F.END_TO_END_SECONDS, exchange=EX) == silver_stall
    assert health.value(F.LAYER_LAG_RECORDS, layer="silver", exchange=EX) == 30  # Bronze holds 30 Silver has not read
    assert health.value(F.LAYER_LAG_SECONDS, layer="silver", exchange=EX) == silver_stall
    assert health.value(F.TABLE_SNAPSHOTS, table=names.bronze_table(EX)) >= 1  # type: ignore[operator]
    bronze_table = names.bronze_table(EX)
    assert health.value(F.COMMIT_AGE_SECONDS, table=bronze_table) >= LATER  # type: ignore[operator]
    assert health.value(F.EVENT_AGE_SECONDS, table=bronze_table) >= LATER  # type: ignore[operator]

    assert run_silver(spark, isolated, EX).valid == 30
    health = F.collect(isolated, now=time.time() + LATER)
    assert health.value(STALLED_SECONDS, layer="silver", exchange=EX) == 0
    assert health.value(F.LAYER_LAG_RECORDS, layer="silver", exchange=EX) == 0
    assert health.value(F.LAYER_LAG_RECORDS, layer="gold", exchange=EX) == 30
    assert health.value(STALLED_SECONDS, layer="gold", exchange=EX) >= LATER  # type: ignore[operator]
    event_age = health.value(F.EVENT_AGE_SECONDS, table=names.silver_table(EX))
    assert event_age is not None and event_age >= LATER + 20  # the trades are 20 s older than their production
    assert health.value(DLQ_RATE, exchange=EX, error_type=ALL_ERROR_TYPES) == 0
    shared = {f.labels["table"] for f in health.figures if f.name == F.COMMIT_AGE_SECONDS}
    catalog = load_catalog(isolated)
    committed = {t for t in names.all_tables(isolated) if catalog.load_table(t).current_snapshot() is not None}
    assert committed <= shared and len(committed) >= 2  # every table with a commit, shared ones too
    for figure in health.figures:  # the labels the statsd-exporter mapping and the dashboard expect
        assert set(figure.labels) == LABELS[figure.name], figure


def _health(settings: Settings) -> tuple[int, dict]:
    """``lakehouse health --json`` as a probe runs it: exit code and report."""
    done = subprocess.run([sys.executable, "-m", "lakehouse", "health", "--json"], env={**os.environ, **settings.env()}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode in (0, 1, 2), done.stderr[-2000:]
    return done.returncode, json.loads(done.stdout)


def _bronze_batch(settings: Settings, first: int, valid: int, bad: int) -> None:
    """``valid`` trades and ``bad`` zero-price trades (invalid_price) committed to Bronze."""
    topic = names.topic(settings, EX)
    sid, _ = registry_from_settings(settings).latest(names.value_subject(topic))
    at = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000) - 5_000_000
    parsed = avro.parsed_trade_schema()
    values = [avro.encode(sid, parsed, trade(first + i, at)) for i in range(valid)]
    values += [avro.encode(sid, parsed, trade(first + valid + i, at, price=Decimal(0))) for i in range(bad)]
    load_catalog(settings).load_table(names.bronze_table(EX)).append(
        bronze_arrow(values, topic, dt.datetime.now(dt.timezone.utc), first))


def test_a_3_then_6_percent_dead_letter_share_warns_then_goes_critical_naming_the_error_type(
        isolated: Settings) -> None:
    from lakehouse.silver.job import run as run_silver

    settings = isolated.replace(exchanges=(EX,))
    spark = session(settings, "monitor-test")
    _bronze_batch(settings, 0, 97, 3)  # 3%
    run_silver(spark, settings, EX)
    first = run_monitor(settings)
    dlq = [n for n in first.notifications if n.rule.name == "dlq_rate"]
    assert [(n.kind, n.state.severity) for n in dlq] == [(FIRING, WARNING)]
    assert "invalid_price" in dlq[0].text and "3.0%" in dlq[0].text

    again = run_monitor(settings)  # the same share a minute later: no second message
    assert [n for n in again.notifications if n.rule.name == "dlq_rate"] == []

    _bronze_batch(settings, 1000, 470, 30)  # 6%: over the window, 33 of 600 rows = 5.5%
    run_silver(spark, settings, EX)
    third = run_monitor(settings)
    dlq = [n for n in third.notifications if n.rule.name == "dlq_rate"]
    assert [(n.kind, n.state.severity) for n in dlq] == [(FIRING, CRITICAL)]
    assert "invalid_price 5.5%" in dlq[0].text
    assert third.health.value(F.COMMIT_AGE_SECONDS, table=names.DLQ_TABLE, exchange="all") is not None
    assert third.health.value(F.EVENT_AGE_SECONDS, table=names.DLQ_TABLE, layer="dlq") is not None

    code, report = _health(settings)
    assert (code, report["status"]) == (2, "critical")
    assert [(b["rule"], b["severity"], b["labels"]["exchange"]) for b in report["breaches"]] == [
        ("dlq_rate", "critical", EX)]
    assert [a["rule"] for a in report["firing"]] == ["dlq_rate"]  # what pipeline_monitor decided

    past_window = time.time() + (settings.alert_dlq_window_minutes + 1) * 60
    resolved = run_monitor(settings, now=past_window)
    assert [(n.kind, n.rule.name) for n in resolved.notifications if n.rule.name == "dlq_rate"] == [
        (RESOLVED, "dlq_rate")]

    lines = [json.loads(ln) for ln in alerts_log_path(settings).read_text().splitlines()]
    dlq_lines = [ln for ln in lines if ln["details"].get("rule") == "dlq_rate"]
    assert [(ln["event"], ln["severity"]) for ln in dlq_lines] == [
        ("rule_firing", "warning"), ("rule_firing", "critical"), ("rule_resolved", "info")]
    assert all(ln["dag_id"] == names.MONITOR_DAG and ln["details"]["runbook"] for ln in dlq_lines)


def test_kafka_down_fails_the_run_in_one_line_after_publishing_the_rest_and_keeps_its_alerts(
        isolated: Settings) -> None:
    from lakehouse import stack
    from lakehouse.monitor.alerting import load_state, state_path
    from lakehouse.monitor.run import MonitorError

    settings = isolated.replace(exchanges=(EX,), alert_lag_warning_s=1, alert_lag_critical_s=2)
    produce_trades(settings, EX, range(5))
    fired = run_monitor(settings, now=time.time() + LATER)  # Bronze never ran: the lag is critical
    assert [(n.rule.name, n.state.severity) for n in fired.notifications] == [("kafka_lag", CRITICAL)]

    stack.down(settings)
    with pytest.raises(MonitorError) as failed:
        run_monitor(settings, now=time.time() + LATER)
    message = str(failed.value)
    assert "\n" not in message and f"kafka {EX}" in message
    kept = load_state(state_path(settings))
    assert [(a.rule, a.severity, a.firing) for a in kept.values()] == [("kafka_lag", CRITICAL, True)]
    lines = alerts_log_path(settings).read_text().splitlines()
    assert not any('"rule_resolved"' in line for line in lines)  # an outage is not a recovery
