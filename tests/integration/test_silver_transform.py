"""Silver's transform on inline Bronze rows: each row becomes exactly one Silver or dead-letter row.

Integration tier: the tests run on the session's SparkSession and its embedded stack's registry.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from pyspark.sql import SparkSession

from lakehouse import avro, names, tables
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver.transform import dlq_rows, from_bronze, silver_rows, transform
from lakehouse.silver.synthetic import bronze_frame, trade

pytestmark = pytest.mark.integration

INGESTED = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
AT_US = int(INGESTED.timestamp() * 1_000_000) - 60_000_000


def _schema_id(settings: Settings) -> int:
    return registry_from_settings(settings).register("silver-transform-test-value", avro.load_schema())


def test_rows_split_into_silver_and_dead_letter_with_table_schemas(spark: SparkSession,
                                                                   stack_settings: Settings) -> None:
    sid = _schema_id(stack_settings)
    parsed = avro.parsed_trade_schema()
    values = [
        avro.encode(sid, parsed, trade(1, AT_US)),                                 # valid
        avro.encode(sid, parsed, trade(2, AT_US, asset_class="fx", price=Decimal(0))),  # two rules
        b"\x07garbage",                                                            # bad magic byte
        avro.encode(sid, parsed, trade(3, AT_US))[:25],                            # truncated Avro
    ]
    bronze = bronze_frame(spark, values, "crypto.trades.binance", INGESTED, first_offset=100, partition=2)
    validated = transform(from_bronze(bronze), stack_settings).cache()
    now = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    silver = silver_rows(validated, now)
    dlq = dlq_rows(validated, "binance", now)

    assert [(f.name, f.dataType) for f in silver.schema] == \
        [(f.name, f.dataType) for f in tables.spark_schema(tables.silver_def("binance"))]
    assert [(f.name, f.dataType) for f in dlq.schema] == \
        [(f.name, f.dataType) for f in tables.spark_schema(tables.DLQ_DEF)]
    required = {c.name for c in tables.DLQ_DEF.columns if c.required}
    assert {f.name for f in dlq.schema if not f.nullable} >= required  # Iceberg accepts the write

    (good,) = [r.asDict() for r in silver.collect()]
    assert good["trade_id"] == "1" and good["price"] == trade(1, AT_US)["price"]
    assert (good["bronze_topic"], good["bronze_partition"], good["bronze_offset"]) == ("crypto.trades.binance", 2, 100)
    assert good["schema_id"] == sid and good["exchange_date"] == dt.date(2025, 12, 31)
    assert good["validation_timestamp"].replace(tzinfo=None) == now.replace(tzinfo=None)

    bad = {r["bronze_offset"]: r.asDict() for r in dlq.collect()}
    assert sorted(bad) == [101, 102, 103]
    assert bad[101]["error_type"] == "invalid_price" and "asset_class_crypto" in bad[101]["error_reason"]
    assert bad[101]["message_id"] == trade(2, AT_US)["message_id"] and bad[101]["schema_id"] == sid
    assert bad[102]["error_type"] == "bad_magic_byte" and bad[102]["raw_bytes"] == values[2]
    assert bad[103]["error_type"] == "truncated" and bad[103]["raw_bytes"] == values[3]
    assert bad[103]["schema_id"] == sid and bad[103]["message_id"] is None
    for row in bad.values():
        assert row["bronze_source"] == names.bronze_table("binance")
        assert row["replayed"] is False and row["replayed_at"] is None
        assert row["dlq_date"] == dt.date(2026, 1, 2)
    validated.unpersist()


def test_time_rules_use_the_bronze_ingestion_time_not_the_clock(spark: SparkSession, stack_settings: Settings) -> None:
    sid = _schema_id(stack_settings)
    parsed = avro.parsed_trade_schema()
    long_ago = dt.datetime(2020, 6, 1, tzinfo=dt.timezone.utc)
    trade_us = int(long_ago.timestamp() * 1_000_000) - 1_000_000
    bronze = bronze_frame(spark, [avro.encode(sid, parsed, trade(1, trade_us))], "t", long_ago)
    (row,) = transform(from_bronze(bronze), stack_settings).collect()
    assert row["error_type"] is None  # a 2020 trade that reached Bronze in 2020 stays valid on replay
