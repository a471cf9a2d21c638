"""Replays and compaction between layer runs, end to end on the embedded stack: Bronze rows ->
Silver -> Gold, then a Silver or DLQ replay, or a compaction, and the next runs. Gold keeps
running, holds every trade Silver holds exactly once (and none a replay removed), and its bars
agree with it."""

from __future__ import annotations

import copy
import datetime as dt
import io
from typing import Any

import fastavro
import pyarrow.compute as pc
import pytest
from local_checks import assert_bars_match_gold
from pyspark.sql import SparkSession

from lakehouse import avro, names
from lakehouse.catalog import load_catalog
from lakehouse.gold import job as gold_job
from lakehouse.orchestration.pending import stream_behind
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver import rules
from lakehouse.silver.job import run as silver_run
from lakehouse.silver.replay import replay_dlq, replay_silver
from lakehouse.silver.synthetic import bronze_frame, trade
from lakehouse.spark import session

pytestmark = pytest.mark.integration

EX = "binance"
MINUTE_US = 60_000_000
ODD_RULE = rules.Rule("platform_sequence_even", "odd_sequence",
                      pc.bit_wise_and(rules.col("platform_sequence"), 1) == 0,
                      "platform_sequence must be even", "platform_sequence")


def _recent_hour() -> dt.datetime:
    """A whole hour two hours ago: trades in it are in the past and younger than a year."""
    now = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    return now - dt.timedelta(hours=2)


def _append(spark: SparkSession, settings: Settings, values: list[bytes], first_offset: int,
            hour: dt.datetime) -> None:
    """Bronze rows ingested (and Kafka-stamped) at the end of ``hour``, after every trade of it:
    Silver rejects trades later than their Kafka timestamp."""
    ingested = hour + dt.timedelta(minutes=59)
    bronze_frame(spark, values, names.topic(settings, EX), ingested, first_offset).coalesce(1) \
        .writeTo(names.qualified(settings, names.bronze_table(EX))).append()


def _trades(sid: int, first: int, n: int, at: dt.datetime) -> list[bytes]:
    """``n`` trades from number ``first``, one a minute from ``at``: each minute holds one trade."""
    at_us = int(at.timestamp() * 1_000_000)
    return [avro.encode(sid, avro.parsed_trade_schema(), trade(first + i, at_us + (first + i) * MINUTE_US))
            for i in range(n)]


def _gold_trade_ids(spark: SparkSession, settings: Settings) -> list[int]:
    """Trade ids of Gold's Binance rows, sorted, repeats kept (a repeat is a duplicate)."""
    rows = spark.table(names.qualified(settings, names.GOLD_TABLE)).where("exchange = 'BINANCE'").collect()
    return sorted(int(r.trade_id) for r in rows)


def _silver_trade_ids(spark: SparkSession, settings: Settings) -> list[int]:
    return sorted(int(r.trade_id) for r in spark.table(names.qualified(settings, names.silver_table(EX))).collect())


def _gold_runs_cleanly(spark: SparkSession, settings: Settings) -> None:
    gold_job.run(spark, settings)  # raises GoldRunError when a Silver stream fails


def _gold_pending(settings: Settings) -> str | None:
    """Why the Gold run's pre-start check would start Gold for ``EX`` (None: nothing to read)."""
    silver = load_catalog(settings).load_table(names.silver_table(EX))
    return stream_behind(silver, names.gold_checkpoint(settings, EX))


def _operations(spark: SparkSession, settings: Settings, table: str) -> list[str]:
    snapshots = spark.sql(f"SELECT operation FROM {names.qualified(settings, table)}.snapshots "
                          "ORDER BY committed_at").collect()
    return [r.operation for r in snapshots]


@pytest.mark.slow
def test_silver_replay_both_ways_reaches_gold(isolated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    spark = session(isolated, "replay-gold-test")
    sid = registry_from_settings(isolated).register(names.value_subject(names.topic(isolated, EX)), avro.load_schema())
    hour = _recent_hour()
    _append(spark, isolated, _trades(sid, 0, 10, hour), 0, hour)
    silver_run(spark, isolated, EX)
    _gold_runs_cleanly(spark, isolated)
    assert _gold_trade_ids(spark, isolated) == list(range(10))

    # A stricter rule: the odd trades leave Silver for the DLQ, and Gold (with their bars).
    monkeypatch.setattr(rules, "RULES", (*rules.RULES, ODD_RULE))
    replay_silver(spark, isolated, EX, start=hour)
    assert _silver_trade_ids(spark, isolated) == [0, 2, 4, 6, 8]
    _gold_runs_cleanly(spark, isolated)  # the replay's delete/overwrite snapshot is skipped
    assert _gold_pending(isolated) is None
    assert _gold_trade_ids(spark, isolated) == [0, 2, 4, 6, 8]
    assert assert_bars_match_gold(spark, isolated) == 5  # the emptied minutes lost their bars
    replay_silver(spark, isolated, EX, start=hour)  # idempotent
    _gold_runs_cleanly(spark, isolated)
    assert _gold_trade_ids(spark, isolated) == [0, 2, 4, 6, 8]

    # The rule is withdrawn: the odd trades come back to Silver in an append the Gold stream reads.
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r is not ODD_RULE))
    replay_silver(spark, isolated, EX, start=hour)
    assert _silver_trade_ids(spark, isolated) == list(range(10))
    assert _gold_pending(isolated) is not None  # the pre-start check sees the replay's append
    _gold_runs_cleanly(spark, isolated)
    assert _gold_pending(isolated) is None
    assert _gold_trade_ids(spark, isolated) == list(range(10))
    assert assert_bars_match_gold(spark, isolated) == 10
    # New Bronze rows after the replays still flow through.
    _append(spark, isolated, _trades(sid, 10, 2, hour), 10, hour)
    silver_run(spark, isolated, EX)
    _gold_runs_cleanly(spark, isolated)
    assert _gold_trade_ids(spark, isolated) == list(range(12))
    assert assert_bars_match_gold(spark, isolated) == 12


def _encode_with(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(avro.HEADER.pack(avro.MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def test_dlq_replay_reaches_gold_once(isolated: Settings) -> None:
    spark = session(isolated, "replay-gold-test")
    registry = registry_from_settings(isolated)
    subject = names.value_subject(names.topic(isolated, EX))
    sid = registry.register(subject, avro.load_schema())
    newer = copy.deepcopy(avro.load_schema())
    newer["fields"].append({"name": "venue", "type": ["null", "string"], "default": None})
    probe = {"type": "record", "name": "Probe", "fields": [{"name": "x", "type": "long"}]}
    future_id = registry.register("probe-value", probe) + 1  # the local registry hands out ids in order
    hour = _recent_hour()
    at_us = int(hour.timestamp() * 1_000_000)
    early = [_encode_with(future_id, newer, {**trade(i, at_us + i * MINUTE_US), "venue": "spot"}) for i in range(3)]
    _append(spark, isolated, early + _trades(sid, 3, 3, hour), 0, hour)
    silver_run(spark, isolated, EX)
    _gold_runs_cleanly(spark, isolated)
    assert _gold_trade_ids(spark, isolated) == [3, 4, 5]

    assert registry.register(subject, newer) == future_id  # the producer's schema gets registered
    assert replay_dlq(spark, isolated, error_type="unknown_schema_id").valid == 3
    assert _operations(spark, isolated, names.silver_table(EX))[-1] == "append"
    _gold_runs_cleanly(spark, isolated)
    assert _gold_trade_ids(spark, isolated) == list(range(6))
    assert replay_dlq(spark, isolated, error_type="unknown_schema_id").considered == 0
    _gold_runs_cleanly(spark, isolated)
    assert _gold_trade_ids(spark, isolated) == list(range(6))
    assert assert_bars_match_gold(spark, isolated) == 6


def _compact(spark: SparkSession, settings: Settings, table: str) -> None:
    spark.sql(f"CALL {settings.catalog_name}.system.rewrite_data_files("
              f"table => '{table}', options => map('rewrite-all', 'true'))").collect()
    assert _operations(spark, settings, table)[-1] == "replace", table


def test_compaction_between_runs_loses_and_repeats_nothing(isolated: Settings) -> None:
    spark = session(isolated, "replay-gold-test")
    sid = registry_from_settings(isolated).register(names.value_subject(names.topic(isolated, EX)), avro.load_schema())
    hour = _recent_hour()
    _append(spark, isolated, _trades(sid, 0, 4, hour), 0, hour)
    _append(spark, isolated, _trades(sid, 4, 4, hour), 4, hour)
    silver_run(spark, isolated, EX)
    _gold_runs_cleanly(spark, isolated)
    _append(spark, isolated, _trades(sid, 8, 2, hour), 8, hour)  # not yet in Silver when Bronze is compacted

    _compact(spark, isolated, names.bronze_table(EX))
    _compact(spark, isolated, names.silver_table(EX))
    silver_run(spark, isolated, EX)
    _gold_runs_cleanly(spark, isolated)
    assert _silver_trade_ids(spark, isolated) == list(range(10))
    assert _gold_trade_ids(spark, isolated) == list(range(10))

    _append(spark, isolated, _trades(sid, 10, 2, hour), 10, hour)
    silver_run(spark, isolated, EX)
    _compact(spark, isolated, names.silver_table(EX))  # Silver compacted with an append Gold has not read
    _gold_runs_cleanly(spark, isolated)
    assert _silver_trade_ids(spark, isolated) == list(range(12))
    assert _gold_trade_ids(spark, isolated) == list(range(12))
    assert assert_bars_match_gold(spark, isolated) == 12
