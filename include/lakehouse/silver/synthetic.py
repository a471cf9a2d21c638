"""Synthetic Bronze input for Silver's tests and benchmark (generated at run time, never stored).

:func:`trade` is one valid V2 record (tests override the fields that matter), :func:`bronze_frame`
wraps Kafka values into Bronze rows with Spark, and :func:`bronze_arrow` builds the same rows as
an Arrow table for pyiceberg (the benchmark appends a million rows without Spark's row path).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lakehouse import tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def trade(i: int, at_us: int, exchange: str = "binance", **overrides: Any) -> dict[str, Any]:
    """A valid V2 trade number ``i`` at ``at_us`` (microseconds); ``overrides`` replace fields."""
    symbol = "BTCUSDT" if exchange == "binance" else "BTC/USD"
    record = {
        "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{exchange.upper()}:{symbol}:{i}")),
        "trade_id": str(i), "symbol": symbol, "exchange": exchange.upper(), "asset_class": "crypto",
        "timestamp": at_us, "price": Decimal("42000.12345678") + i % 1000, "quantity": Decimal("0.00100000"),
        "currency": "USDT" if exchange == "binance" else "USD", "side": "BUY" if i % 2 else "SELL",
        "trade_conditions": [] if i % 3 else ["market"], "source_sequence": i if i % 5 else None,
        "ingestion_timestamp": at_us + 1000, "platform_sequence": i,
        "vendor_data": {"is_buyer_maker": str(i % 2 == 0).lower()} if i % 4 else None,
    }
    record.update(overrides)
    return record


def bronze_frame(spark: SparkSession, values: Sequence[bytes | None], topic: str, ingested_at: dt.datetime,
                 first_offset: int = 0, partition: int = 0) -> DataFrame:
    """Bronze rows holding ``values`` at consecutive offsets of one topic partition."""
    rows = [(None, value, topic, partition, first_offset + i, ingested_at, 0, [], ingested_at)
            for i, value in enumerate(values)]
    return spark.createDataFrame(rows, tables.spark_schema(tables.bronze_def("any")))


def bronze_arrow(values: Sequence[bytes], topic: str, ingested_at: dt.datetime, first_offset: int = 0,
                 partition: int = 0) -> pa.Table:
    """The same rows as :func:`bronze_frame`, as an Arrow table matching the Bronze Iceberg schema."""
    n = len(values)
    ts = pa.array([ingested_at] * n, pa.timestamp("us", tz="UTC"))
    header = pa.struct([pa.field("key", pa.string()), pa.field("value", pa.binary())])
    schema = pa.schema([
        pa.field("key", pa.binary()), pa.field("value", pa.binary()),
        pa.field("topic", pa.string(), nullable=False), pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False), pa.field("timestamp", pa.timestamp("us", tz="UTC")),
        pa.field("timestampType", pa.int32()), pa.field("headers", pa.list_(header)),
        pa.field("ingestion_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
    ])
    return pa.Table.from_arrays([
        pa.nulls(n, pa.binary()), pa.array(values, pa.binary()), pa.array([topic] * n, pa.string()),
        pa.array([partition] * n, pa.int32()), pa.array(range(first_offset, first_offset + n), pa.int64()), ts,
        pa.array([0] * n, pa.int32()), pa.array([[]] * n, pa.list_(header)), ts,
    ], schema=schema)


__all__ = ["bronze_arrow", "bronze_frame", "trade"]
