"""Replays on the embedded stack: rebuild a Bronze range after a rule change, re-validate the DLQ
after a schema is registered; both idempotent, both keep every Bronze row in exactly one place."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
from typing import Any

import pyarrow.compute as pc
import pytest
from pyspark.sql import SparkSession

from local_checks import encode_with
from lakehouse import avro, names
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver import rules
from lakehouse.silver.job import run
from lakehouse.silver.replay import ReplayError, replay_dlq, replay_silver
from lakehouse.silver.synthetic import bronze_frame, trade
from lakehouse.spark import session

pytestmark = pytest.mark.integration

EX = "binance"
NEWER = copy.deepcopy(avro.load_schema())
NEWER["fields"].append({"name": "venue", "type": ["null", "string"], "default": None})
ODD_RULE = rules.Rule("platform_sequence_even", "odd_sequence",
                      pc.bit_wise_and(rules.col("platform_sequence"), 1) == 0,
                      "platform_sequence must be even", "platform_sequence")


def _append(spark: SparkSession, settings: Settings, values: list[bytes], first_offset: int,
            ingested: dt.datetime) -> None:
    bronze_frame(spark, values, names.topic(settings, EX), ingested, first_offset).coalesce(1) \
        .writeTo(names.qualified(settings, names.bronze_table(EX))).append()


def _trades(sid: int, first: int, n: int, at: dt.datetime, **kw: Any) -> list[bytes]:
    at_us = int(at.timestamp() * 1_000_000) - 1_000_000
    return [avro.encode(sid, avro.parsed_trade_schema(), trade(first + i, at_us, **kw)) for i in range(n)]


def _state(spark: SparkSession, settings: Settings) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Silver rows and *current* (not replayed) dead-letter rows by offset; fails on any duplicate."""
    silver = [r.asDict() for r in spark.table(names.qualified(settings, names.silver_table(EX))).collect()]
    dlq = [r.asDict() for r in spark.table(names.qualified(settings, names.DLQ_TABLE)).collect()]
    by_offset = {r["bronze_offset"]: r for r in silver}
    dlq_by_offset = {r["bronze_offset"]: r for r in dlq}
    assert len(by_offset) == len(silver) and len(dlq_by_offset) == len(dlq), "duplicate lineage"
    current = {o: r for o, r in dlq_by_offset.items() if not r["replayed"]}
    assert set(by_offset).isdisjoint(current), "a row is in Silver and in the DLQ"
    assert all(o in by_offset for o, r in dlq_by_offset.items() if r["replayed"]), "replayed but not in Silver"
    return by_offset, current


@pytest.mark.slow  # ~40 s: 'make test-slow' (CI runs it after 'make test')
def test_replay_silver_after_a_rule_change_moves_rows_both_ways(isolated: Settings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spark = session(isolated, "silver-replay-test")
    sid = registry_from_settings(isolated).register(names.value_subject(names.topic(isolated, EX)), avro.load_schema())
    t1 = dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc)
    t2 = t1 + dt.timedelta(hours=1)
    _append(spark, isolated, _trades(sid, 0, 10, t1) + [b"\x05junk"], 0, t1)
    _append(spark, isolated, _trades(sid, 100, 10, t2) + [b"\x05junk"], 100, t2)
    run(spark, isolated, EX)
    silver, dlq = _state(spark, isolated)
    assert len(silver) == 20 and sorted(dlq) == [10, 110]

    # A stricter rule, replayed for the second hour only: its odd trades leave Silver for the DLQ.
    monkeypatch.setattr(rules, "RULES", (*rules.RULES, ODD_RULE))
    summary = replay_silver(spark, isolated, EX, start=t2)
    assert summary.considered == 11 and summary.valid == 5 and summary.dead_lettered == {"odd_sequence": 5,
                                                                                          "bad_magic_byte": 1}
    silver, dlq = _state(spark, isolated)
    assert sorted(dlq) == [10, 101, 103, 105, 107, 109, 110]
    assert {dlq[o]["error_type"] for o in (101, 103)} == {"odd_sequence"}
    assert "platform_sequence_even: platform_sequence must be even (got 101)" == dlq[101]["error_reason"]
    assert set(silver) == set(range(10)) | {100, 102, 104, 106, 108}  # the first hour untouched
    assert replay_silver(spark, isolated, EX, start=t2).considered == 11  # idempotent
    silver_again, dlq_again = _state(spark, isolated)
    assert silver_again.keys() == silver.keys()
    assert {o: r["error_type"] for o, r in dlq_again.items()} == {o: r["error_type"] for o, r in dlq.items()}

    # The rule is withdrawn: replaying puts the trades back and marks their dead-letter rows replayed.
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r is not ODD_RULE))
    replay_silver(spark, isolated, EX, start=t2, end=t2 + dt.timedelta(minutes=1))
    silver, dlq = _state(spark, isolated)
    assert len(silver) == 20 and sorted(dlq) == [10, 110]
    replayed = spark.table(names.qualified(isolated, names.DLQ_TABLE)).where("replayed").collect()
    assert sorted(r["bronze_offset"] for r in replayed) == [101, 103, 105, 107, 109]
    assert all(r["replayed_at"] is not None for r in replayed)

    # Bronze rows the stream has not reached yet are left to the stream (no double insert).
    t3 = t2 + dt.timedelta(hours=1)
    _append(spark, isolated, _trades(sid, 200, 4, t3), 200, t3)
    assert replay_silver(spark, isolated, EX).considered == 22
    assert run(spark, isolated, EX).read == 4
    silver, _ = _state(spark, isolated)
    assert len(silver) == 24
    events = [r["event"] for r in spark.table(names.qualified(isolated, names.AUDIT_TABLE)).collect()]
    assert events.count("replay_silver") == 4


def test_replay_silver_rejects_an_empty_range(isolated: Settings) -> None:
    spark = session(isolated, "silver-replay-test")
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(ReplayError, match="empty range"):
        replay_silver(spark, isolated, EX, start=at, end=at)


def test_dlq_replay_moves_rows_that_now_decode_into_silver_once(isolated: Settings) -> None:
    spark = session(isolated, "silver-replay-test")
    registry = registry_from_settings(isolated)
    subject = names.value_subject(names.topic(isolated, EX))
    sid = registry.register(subject, avro.load_schema())
    probe = {"type": "record", "name": "Probe", "fields": [{"name": "x", "type": "long"}]}
    future_id = registry.register("probe-value", probe) + 1  # the local registry hands out ids in order
    now = dt.datetime.now(dt.timezone.utc)
    at_us = int(now.timestamp() * 1_000_000) - 1_000_000
    early = [encode_with(future_id, NEWER, {**trade(i, at_us), "venue": "spot"}) for i in range(3)]
    breakers = _trades(sid, 3, 2, now, asset_class="fx")
    _append(spark, isolated, early + breakers, 0, now)
    run(spark, isolated, EX)
    _, dlq = _state(spark, isolated)
    assert {o: r["error_type"] for o, r in dlq.items()} == {0: "unknown_schema_id", 1: "unknown_schema_id",
                                                            2: "unknown_schema_id", 3: "invalid_asset_class",
                                                            4: "invalid_asset_class"}
    assert registry.register(subject, NEWER) == future_id  # the producer's schema gets registered

    summary = replay_dlq(spark, isolated, error_type="unknown_schema_id")

    assert summary.considered == 3 and summary.valid == 3 and summary.dead_lettered == {}
    silver, dlq = _state(spark, isolated)
    assert sorted(silver) == [0, 1, 2] and {r["schema_id"] for r in silver.values()} == {future_id}
    assert sorted(dlq) == [3, 4]  # rule breakers were not in scope and stay dead-lettered
    assert replay_dlq(spark, isolated, error_type="unknown_schema_id").considered == 0

    # Died after the Silver insert, before marking: the rerun marks without inserting again.
    spark.sql(f"UPDATE {names.qualified(isolated, names.DLQ_TABLE)} SET replayed = false, replayed_at = NULL "
              f"WHERE error_type = 'unknown_schema_id'")
    again = replay_dlq(spark, isolated)
    assert again.valid == 3 and again.dead_lettered == {"invalid_asset_class": 2}
    assert _state(spark, isolated)[0].keys() == silver.keys()


@pytest.mark.slow  # ~30 s: 'make test-slow' (CI runs it after 'make test'), keeping 'make test' under 15 min
def test_lakehouse_replay_silver_command(isolated: Settings) -> None:
    spark = session(isolated, "silver-replay-test")
    sid = registry_from_settings(isolated).register(names.value_subject(names.topic(isolated, EX)), avro.load_schema())
    now = dt.datetime.now(dt.timezone.utc)
    _append(spark, isolated, _trades(sid, 0, 3, now) + [b"\x05junk"], 0, now)
    run(spark, isolated, EX)
    env = {**os.environ, **isolated.env(), "LAKEHOUSE_SPARK_DRIVER_MEMORY": "1g"}
    since = (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")

    done = subprocess.run([sys.executable, "-m", "lakehouse", "replay", "silver", "--exchange", EX, "--from", since,
                           "--json"], env=env, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"kind": "silver", "considered": 4, "valid": 3, "dead_lettered": {"bad_magic_byte": 1},
                      "exchanges": [EX]}
    silver, dlq = _state(spark, isolated)
    assert len(silver) == 3 and len(dlq) == 1
