"""Checks and stand-ins several test tiers share (importable as ``local_checks``: ``tests/`` is on
the path, as for ``conftest``): the plain-SQL recomputation of Gold's minute bars, a local HTTP
server, the rows of Silver and the dead-letter table by lineage, Avro values in the wire format, and
valid trades produced to Kafka."""

from __future__ import annotations

import datetime as dt
import io
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import fastavro
from confluent_kafka import Producer

from lakehouse import avro, names
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver.synthetic import trade

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The one-minute bars recomputed from Gold in plain SQL (window ranks for open/close, no min_by),
# independently of lakehouse.gold.transforms.
BARS_SQL = """
WITH t AS (
  SELECT exchange, instrument, timestamp_micros(`timestamp` - `timestamp` % 60000000) AS minute,
         price, quantity, side,
         row_number() OVER (PARTITION BY exchange, instrument, `timestamp` DIV 60000000
                            ORDER BY `timestamp`, source_sequence, length(trade_id), trade_id,
                                     message_id) AS first_rank,
         row_number() OVER (PARTITION BY exchange, instrument, `timestamp` DIV 60000000
                            ORDER BY `timestamp` DESC, source_sequence DESC, length(trade_id) DESC, trade_id DESC,
                                     message_id DESC) AS last_rank
  FROM {gold})
SELECT exchange, instrument, minute,
       max(CASE WHEN first_rank = 1 THEN price END) AS open, max(price) AS high, min(price) AS low,
       max(CASE WHEN last_rank = 1 THEN price END) AS close, sum(quantity) AS volume,
       CAST(round(sum(price * quantity) / sum(quantity), 8) AS DECIMAL(18,8)) AS vwap, count(*) AS trade_count,
       coalesce(sum(CASE WHEN side = 'BUY' THEN quantity END), 0) AS buy_volume,
       coalesce(sum(CASE WHEN side = 'SELL' THEN quantity END), 0) AS sell_volume
FROM t GROUP BY exchange, instrument, minute
"""
BAR_COLUMNS = "exchange, instrument, minute, open, high, low, close, volume, vwap, trade_count, buy_volume, sell_volume"


def assert_bars_match_gold(spark: SparkSession, settings: Settings) -> int:
    """Every bar equals the plain-SQL recomputation from Gold, and every Gold minute has a bar."""
    gold = names.qualified(settings, names.GOLD_TABLE)
    ohlcv = names.qualified(settings, names.OHLCV_TABLE)
    expected = spark.sql(BARS_SQL.format(gold=gold))
    actual = spark.sql(f"SELECT {BAR_COLUMNS} FROM {ohlcv}")
    assert expected.exceptAll(actual).collect() == []
    assert actual.exceptAll(expected).collect() == []
    return actual.count()


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """``handler`` served on a free local port in a thread (HTTPS with ``tls``); yields the root URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def silver_rows(spark: SparkSession, settings: Settings, exchange: str) -> list[tuple[int, str]]:
    """(Bronze offset, trade id) of every Silver row of ``exchange``."""
    rows = spark.table(names.qualified(settings, names.silver_table(exchange))).collect()
    return sorted((r["bronze_offset"], r["trade_id"]) for r in rows)


def dlq_rows(spark: SparkSession, settings: Settings) -> list[tuple[int, str, bool]]:
    """(Bronze offset, error type, replayed) of every dead-letter row."""
    rows = spark.table(names.qualified(settings, names.DLQ_TABLE)).collect()
    return sorted((r["bronze_offset"], r["error_type"], bool(r["replayed"])) for r in rows)


def encode_with(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """``record`` in the Confluent wire format under ``schema_id``, written with ``schema`` (which
    may be one the registry does not hold: the record is then an unknown-schema dead letter)."""
    buf = io.BytesIO()
    buf.write(avro.HEADER.pack(avro.MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def produce_trades(settings: Settings, exchange: str, trade_ids: range) -> None:
    """Valid trades (Avro, the registered schema) to ``exchange``'s topic, spread over its partitions."""
    topic = names.topic(settings, exchange)
    schema_id, _ = registry_from_settings(settings).latest(names.value_subject(topic))
    parsed = avro.parsed_trade_schema()
    at = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000) - 20_000_000
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
    for i in trade_ids:
        producer.produce(topic, avro.encode(schema_id, parsed, trade(i, at)), partition=i % settings.topic_partitions)
    assert producer.flush(30) == 0
