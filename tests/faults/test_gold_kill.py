"""Gold SIGKILLed between its trades commit and its bars commit; the next run heals the bars.

Trades go through Kafka, Bronze and Silver (in this process's Spark session), then Gold runs as
the real job (``lakehouse run gold`` -> spark-submit, what Airflow runs) with
``LAKEHOUSE_GOLD_CRASH_POINT=after_trades``: the driver and its JVM are killed right after the
trades MERGE committed, before the bars MERGE. A first, clean Gold run before it leaves bars for
the same minutes, so the kill leaves them stale rather than missing. The re-run without the crash
point must leave every bar equal to its plain-SQL recomputation from Gold, and Gold without copies.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import urllib.parse
import uuid
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Producer

from local_checks import assert_bars_match_gold

from lakehouse import avro, names
from lakehouse.bronze.run import run_bronze
from lakehouse.catalog import load_catalog
from lakehouse.gold import job as gold_job
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver import job as silver_job
from lakehouse.silver.synthetic import trade
from lakehouse.spark import session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

N = 300  # trades per exchange per round
STEP_US = 500_000
SYMBOLS = {"binance": (("BTCUSDT", "USDT"), ("ETHUSDT", "USDT")), "kraken": (("BTC/USD", "USD"), ("ETH/USD", "USD"))}
KILLED = 256 - 9  # spark-submit died of SIGKILL: the CLI exits with its -9 as a byte


def records(exchange: str, first: int, base_us: int, offset_us: int) -> list[dict[str, Any]]:
    """``N`` valid V2 trades numbered from ``first``, two symbols, one every ``STEP_US`` from ``base_us + offset_us``.

    Round two interleaves round one's minutes (same base, half a step later), so the bars the first
    Gold run wrote are the ones the killed run leaves stale.
    """
    out = []
    for k in range(N):
        i = first + k
        symbol, currency = SYMBOLS[exchange][i % 2]
        at = base_us + offset_us + k * STEP_US
        out.append(trade(i, at, exchange, symbol=symbol, currency=currency, source_sequence=i,
                         side="BUY" if (i // 2) % 2 else "SELL",
                         message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{exchange.upper()}:{symbol}:{i}")),
                         price=Decimal(100 + (i * 37) % 101) + Decimal(i % 7) / 8,
                         quantity=Decimal(1 + i % 13) / 1000))
    return out


def produce(settings: Settings, round_no: int, base_us: int) -> None:
    """One round of trades into every exchange's topic, in the Confluent wire format the producer writes."""
    parsed = avro.parsed_trade_schema()
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 20})
    for exchange in settings.exchanges:
        topic = names.topic(settings, exchange)
        schema_id = registry_from_settings(settings).register(names.value_subject(topic), avro.load_schema())
        for i, record in enumerate(records(exchange, round_no * N, base_us, round_no * STEP_US // 2)):
            producer.produce(topic, value=avro.encode(schema_id, parsed, record), partition=i % settings.topic_partitions)
    assert producer.flush(30) == 0


def bronze_and_silver(spark: SparkSession, settings: Settings) -> None:
    for exchange in settings.exchanges:
        assert run_bronze(spark, settings, exchange).records == N
        assert silver_job.run(spark, settings, exchange).valid == N


def run_gold(settings: Settings, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.env(), **extra}
    return subprocess.run([sys.executable, "-m", "lakehouse", "run", "gold"], env=env, capture_output=True,
                          text=True, timeout=600)


def snapshot_id(settings: Settings, table: str) -> int | None:
    """The table's current snapshot id (None before its first commit)."""
    return load_catalog(settings).load_table(table).metadata.current_snapshot_id


def checkpoint_batches(settings: Settings, exchange: str) -> tuple[set[int], set[int]]:
    """(batch ids in the offsets log, batch ids in the commits log) of Gold's stream over ``exchange``."""
    root = Path(urllib.parse.urlparse(names.gold_checkpoint(settings, exchange)).path)

    def ids(log: str) -> set[int]:
        return {int(p.name) for p in (root / log).iterdir() if p.name.isdigit()}

    return ids("offsets"), ids("commits")


def totals(spark: SparkSession, settings: Settings) -> tuple[int, int]:
    """(Gold rows, sum of trade_count over the bars)."""
    gold = spark.table(names.qualified(settings, names.GOLD_TABLE)).count()
    bars = spark.sql(f"SELECT coalesce(sum(trade_count), 0) AS n FROM {names.qualified(settings, names.OHLCV_TABLE)}")
    return gold, int(bars.first().n)


def test_kill_between_trades_and_bars_commits_then_rerun_heals_the_bars(isolated: Settings) -> None:
    spark = session(isolated, "goldkill-test")
    gold = names.qualified(isolated, names.GOLD_TABLE)
    ohlcv = names.qualified(isolated, names.OHLCV_TABLE)
    now_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)
    base_us = now_us - now_us % 60_000_000 - 4 * 60_000_000  # whole minutes; both rounds end before now
    exchanges = len(isolated.exchanges)

    # Round one, all the way through Gold: the bars agree with the trades.
    produce(isolated, 0, base_us)
    bronze_and_silver(spark, isolated)
    gold_job.run(spark, isolated)
    assert totals(spark, isolated) == (exchanges * N, exchanges * N)

    # Round two, same minutes; Gold killed after its first batch's trades MERGE committed.
    produce(isolated, 1, base_us)
    bronze_and_silver(spark, isolated)
    gold_before, bars_before = snapshot_id(isolated, names.GOLD_TABLE), snapshot_id(isolated, names.OHLCV_TABLE)
    killed = run_gold(isolated, LAKEHOUSE_GOLD_CRASH_POINT="after_trades")
    assert killed.returncode == KILLED, (killed.stdout + killed.stderr)[-3000:]
    assert "fault injection: SIGKILL at after_trades" in killed.stdout + killed.stderr
    assert snapshot_id(isolated, names.GOLD_TABLE) != gold_before  # the trades MERGE committed ...
    assert snapshot_id(isolated, names.OHLCV_TABLE) == bars_before  # ... the bars MERGE never ran
    gold_rows, bar_trades = totals(spark, isolated)
    assert gold_rows == exchanges * N + N and bar_trades == exchanges * N  # the first source's new trades lack bars
    # The stream logged the batch's offsets but never committed it: the next run re-runs that batch.
    first = isolated.exchanges[0]
    offsets, commits = checkpoint_batches(isolated, first)
    assert offsets - commits == {max(offsets)}

    healed = run_gold(isolated)
    assert healed.returncode == 0, (healed.stdout + healed.stderr)[-3000:]
    offsets_after, commits_after = checkpoint_batches(isolated, first)
    assert offsets_after == offsets and commits_after == offsets  # re-ran under the same batch id
    rows = spark.sql(f"SELECT count(*) AS n, count(DISTINCT message_id) AS ids FROM {gold}").first()
    assert (rows.n, rows.ids) == (2 * exchanges * N, 2 * exchanges * N)
    assert totals(spark, isolated) == (2 * exchanges * N, 2 * exchanges * N)
    assert_bars_match_gold(spark, isolated)
    # Volumes per (exchange, instrument, minute) equal the trades' sums, and every minute has one bar.
    volumes = spark.sql(f"SELECT exchange, instrument, timestamp_micros(`timestamp` - `timestamp` % 60000000) AS minute, "
                        f"sum(quantity) AS volume, count(*) AS trade_count FROM {gold} GROUP BY 1, 2, 3")
    bars = spark.sql(f"SELECT exchange, instrument, minute, volume, trade_count FROM {ohlcv}")
    assert sorted(volumes.collect()) == sorted(bars.collect())
    assert bars.count() == bars.select("exchange", "instrument", "minute").distinct().count() >= 4 * exchanges
