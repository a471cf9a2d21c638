"""``lakehouse dlq replay`` marks a dead-letter row replayed only when Silver committed its trade.

After the embedded broker restarts, its topics start again at offset 0, so Bronze lineage
(topic, partition, offset) repeats: Silver and the dead-letter table can hold other records at the
lineage of a row being replayed. Neither may stop that row reaching Silver, nor have it mark (or
hide) another record's dead-letter row; and a row that passes but is not written stays unreplayed.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest
from pyspark.sql import SparkSession

from local_checks import dlq_rows, encode_with, silver_rows

from lakehouse import avro, names
from lakehouse.registry import SchemaRegistry, registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver import replay
from lakehouse.silver.job import run
from lakehouse.silver.replay import replay_dlq
from lakehouse.silver.synthetic import bronze_frame, trade
from lakehouse.spark import session

pytestmark = [pytest.mark.integration, pytest.mark.fault]

EX = "binance"
NEWER = copy.deepcopy(avro.load_schema())
NEWER["fields"].append({"name": "venue", "type": ["null", "string"], "default": None})


def _append(spark: SparkSession, settings: Settings, values: list[bytes], first_offset: int) -> None:
    bronze_frame(spark, values, names.topic(settings, EX), dt.datetime.now(dt.timezone.utc), first_offset) \
        .coalesce(1).writeTo(names.qualified(settings, names.bronze_table(EX))).append()


def _future_id(registry: SchemaRegistry) -> int:
    """The id the next new schema gets (the local registry hands out ids in order)."""
    probe = {"type": "record", "name": "Probe", "fields": [{"name": "x", "type": "long"}]}
    return registry.register("probe-value", probe) + 1


def _not_yet_decodable(schema_id: int, i: int) -> bytes:
    """Trade ``i`` written with a schema id the registry does not know yet: dead-lettered as unknown."""
    at_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000) - 60_000_000
    return encode_with(schema_id, NEWER, {**trade(i, at_us), "venue": "spot"})


def test_dlq_replay_after_a_topic_reset_writes_and_marks_by_record_not_by_lineage(isolated: Settings) -> None:
    spark = session(isolated, "dlq-replay-reset-test")
    registry = registry_from_settings(isolated)
    subject = names.value_subject(names.topic(isolated, EX))
    sid = registry.register(subject, avro.load_schema())
    future_id = _future_id(registry)
    at_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000) - 60_000_000

    # The first topic: offsets 0 and 1 hold trades of a schema not registered yet.
    _append(spark, isolated, [_not_yet_decodable(future_id, 0), _not_yet_decodable(future_id, 1)], 0)
    run(spark, isolated, EX)
    # The broker restarted on empty storage: offsets 0 and 1 again, a valid trade and garbage.
    _append(spark, isolated, [avro.encode(sid, avro.parsed_trade_schema(), trade(100, at_us)), b"\x05junk"], 0)
    run(spark, isolated, EX)
    assert silver_rows(spark, isolated, EX) == [(0, "100")]
    assert dlq_rows(spark, isolated) == [(0, "unknown_schema_id", False), (1, "bad_magic_byte", False),
                                     (1, "unknown_schema_id", False)]
    assert registry.register(subject, NEWER) == future_id  # the producer's schema gets registered

    summary = replay_dlq(spark, isolated, exchange=EX)

    assert summary.valid == 2 and summary.dead_lettered == {"bad_magic_byte": 1}
    # Trade 0 is written although Silver holds trade 100 at its lineage ...
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "100"), (1, "1")]
    # ... and the garbage at trade 1's lineage is not marked replayed with it.
    assert dlq_rows(spark, isolated) == [(0, "unknown_schema_id", True), (1, "bad_magic_byte", False),
                                     (1, "unknown_schema_id", True)]

    again = replay_dlq(spark, isolated, exchange=EX)  # idempotent: only the garbage is left to re-validate
    assert again.considered == 1 and again.valid == 0
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "100"), (1, "1")]


def test_a_row_that_passes_but_is_not_written_to_silver_is_not_marked_replayed(
        isolated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    spark = session(isolated, "dlq-replay-reset-test")
    registry = registry_from_settings(isolated)
    subject = names.value_subject(names.topic(isolated, EX))
    registry.register(subject, avro.load_schema())
    future_id = _future_id(registry)
    _append(spark, isolated, [_not_yet_decodable(future_id, i) for i in range(3)], 0)
    run(spark, isolated, EX)
    assert registry.register(subject, NEWER) == future_id

    def silver_write_skipped(*args: Any, **kwargs: Any) -> None:
        """The Silver write of the passing rows commits nothing (skipped or deduplicated away)."""

    monkeypatch.setattr(replay, "_insert_passing", silver_write_skipped)
    skipped = replay_dlq(spark, isolated, exchange=EX)

    assert skipped.valid == 3 and silver_rows(spark, isolated, EX) == []
    assert dlq_rows(spark, isolated) == [(i, "unknown_schema_id", False) for i in range(3)]  # still to replay

    monkeypatch.undo()
    written = replay_dlq(spark, isolated, exchange=EX)

    assert written.valid == 3 and silver_rows(spark, isolated, EX) == [(i, str(i)) for i in range(3)]
    assert dlq_rows(spark, isolated) == [(i, "unknown_schema_id", True) for i in range(3)]
