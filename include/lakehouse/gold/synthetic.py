"""Synthetic Silver trades for Gold's tests and benchmark (generated at run time, never stored).

``silver_record`` builds one exact row (tests state every field that matters); ``silver_range``
builds millions of rows with Spark ``range()`` without leaving the JVM (the benchmark).
Copies of one trade share exchange, symbol, trade id, hence message_id and timestamp, as the
real producers guarantee.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from lakehouse import tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SYMBOLS: dict[str, tuple[tuple[str, str], ...]] = {
    "binance": (("BTCUSDT", "USDT"), ("ETHUSDT", "USDT"), ("SOLUSDT", "USDT")),
    "kraken": (("BTC/USDT", "USDT"), ("ETH/USD", "USD"), ("SOL/USD", "USD")),
}


def message_id(exchange: str, symbol: str, trade_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{exchange.upper()}:{symbol}:{trade_id}"))


def silver_record(exchange: str, trade_id: int, ts: int, price: str = "100", qty: str = "1", side: str = "BUY",
                  symbol: str = "BTCUSDT", currency: str = "USDT", seq: int | None = None,
                  ingested: int | None = None, vendor: dict[str, str] | None = None) -> dict[str, Any]:
    """One Silver row as a dict keyed by column name (``ts`` in microseconds)."""
    return {
        "message_id": message_id(exchange, symbol, str(trade_id)), "trade_id": str(trade_id), "symbol": symbol,
        "exchange": exchange.upper(), "asset_class": "crypto", "timestamp": ts, "price": Decimal(price),
        "quantity": Decimal(qty), "currency": currency, "side": side, "trade_conditions": [],
        "source_sequence": seq,
        "ingestion_timestamp": ts + 1000 if ingested is None else ingested, "platform_sequence": trade_id,
        "vendor_data": vendor, "validation_timestamp": dt.datetime.now(dt.timezone.utc),
        "exchange_date": dt.datetime.fromtimestamp(ts / 1e6, dt.timezone.utc).date(),
        "bronze_topic": f"crypto.trades.{exchange}", "bronze_partition": 0, "bronze_offset": trade_id, "schema_id": 1,
    }


def silver_frame(spark: SparkSession, records: list[dict[str, Any]]) -> DataFrame:
    """A DataFrame with the Silver schema from :func:`silver_record` dicts."""
    schema = tables.spark_schema(tables.silver_def("any"))
    return spark.createDataFrame([tuple(r[f.name] for f in schema) for r in records], schema)


def silver_range(spark: SparkSession, exchange: str, first_trade_id: int, count: int, epoch_us: int,
                 step_us: int, partitions: int | None = None) -> DataFrame:
    """``count`` Silver trades of ``exchange`` with ids from ``first_trade_id``; the k-th happens at
    ``epoch_us + k * step_us``.

    Every field is a function of the arguments and the trade id, so generating the same range
    again gives exact copies (same message_id and timestamp), the way a replayed trade looks.
    """
    from pyspark.sql import functions as F

    symbols = SYMBOLS.get(exchange, SYMBOLS["binance"])
    tid = F.col("tid")
    pick = (F.pmod(tid, F.lit(len(symbols))) + 1).cast("int")
    symbol = F.element_at(F.array(*[F.lit(s) for s, _ in symbols]), pick)
    currency = F.element_at(F.array(*[F.lit(c) for _, c in symbols]), pick)
    ts = F.col("trade_time")
    # UUID-shaped, deterministic (the same exchange and trade id give the same message id), cheap.
    digest = F.concat(*[F.lpad(F.hex(F.xxhash64(F.lit(f"{exchange.upper()}:{seed}"), tid)), 16, "0")
                        for seed in (1, 2)])
    cols = {
        "message_id": F.concat_ws("-", *[digest.substr(pos, n) for pos, n in ((1, 8), (9, 4), (13, 4), (17, 4),
                                                                              (21, 12))]),
        "trade_id": tid.cast("string"), "symbol": symbol, "exchange": F.lit(exchange.upper()),
        "asset_class": F.lit("crypto"), "timestamp": ts,
        "price": F.lit(100) + F.pmod(F.xxhash64(tid), F.lit(1_000_000)) / F.lit(10_000),
        "quantity": (F.lit(1) + F.pmod(F.xxhash64(tid, F.lit(1)), F.lit(10_000))) / F.lit(1000),
        "currency": currency, "side": F.when(F.pmod(tid, F.lit(2)) == 0, "BUY").otherwise("SELL"),
        "trade_conditions": F.array(), "source_sequence": tid,
        "ingestion_timestamp": ts + F.lit(50_000), "platform_sequence": tid,
        "vendor_data": F.when(F.pmod(tid, F.lit(10)) == 0, F.create_map(F.lit("is_best_match"), F.lit("true"))),
        "validation_timestamp": F.current_timestamp(),
        "exchange_date": F.expr("date_from_unix_date(CAST(trade_time DIV 86400000000 AS INT))"),
        "bronze_topic": F.lit(f"crypto.trades.{exchange}"), "bronze_partition": F.lit(0), "bronze_offset": tid,
        "schema_id": F.lit(1),
    }
    schema = tables.spark_schema(tables.silver_def(exchange))
    base = spark.range(0, count, numPartitions=partitions or spark.sparkContext.defaultParallelism)
    rows = (base.select((F.col("id") + F.lit(first_trade_id)).alias("tid"))
            .withColumn("trade_time", F.lit(epoch_us) + (F.col("tid") - F.lit(first_trade_id)) * F.lit(step_us)))
    return rows.select([cols[f.name].cast(f.dataType).alias(f.name) for f in schema])
