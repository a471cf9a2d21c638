"""Gold benchmark: throughput for 1,000,000 Silver rows against a plain-append floor, and the cost
of a small incremental run when Gold already holds 10,000,000 rows.

Everything runs on an isolated stack (temporary LAKEHOUSE_HOME, free ports, own catalog) with
data generated at run time by Spark ``range()``. The floor is a plain batch append of the same
Silver rows, projected to Gold columns, into a table shaped like Gold: no dedupe, no bars.
The same incremental run (2,000 new trades plus 20 copies of trades from the last hours) is timed
with ~1M rows in Gold and again after 10M older rows were loaded, to show that the per-run cost
does not grow with Gold; the Gold files its MERGE read are reported with it. A last run brings
copies of trades days old, spread over many hour partitions: its cost follows the partitions it
touches, not the size of Gold.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lakehouse import names, stack, tables
from lakehouse.bench import free_port, report
from lakehouse.catalog import load_catalog
from lakehouse.gold import job
from lakehouse.gold.synthetic import silver_range
from lakehouse.gold.transforms import ohlcv_1m, to_gold
from lakehouse.gold.writer import GoldBatchStats
from lakehouse.settings import Settings, load_settings
from lakehouse.spark import session

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

THROUGHPUT_ROWS = 1_000_000
GOLD_BASE_ROWS = 10_000_000
INCREMENT_ROWS = 2_000   # new trades per incremental run (all exchanges)
INCREMENT_COPIES = 20    # copies of already-stored trades per incremental run
DUPLICATE_EVERY = 100    # 1% of the throughput rows arrive twice
INCREMENTAL_REPEATS = 3  # identical incremental runs per measurement at full scale (median reported)
BASE_ROWS_PER_APPEND = 500_000  # the 10M base is appended in chunks: bounded memory on a 2 GB local driver
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US


@dataclasses.dataclass(frozen=True)
class Trades:
    """A generated range of one exchange's trades; the same range regenerated gives exact copies."""

    exchange: str
    first_id: int
    count: int
    epoch_us: int
    step_us: int

    def frame(self, spark: SparkSession, partitions: int | None = None) -> DataFrame:
        return silver_range(spark, self.exchange, self.first_id, self.count, self.epoch_us, self.step_us, partitions)

    def copies(self, spark: SparkSession, n: int) -> DataFrame:
        """``n`` trades of this range spread over all of it (so hours to weeks old), regenerated."""
        stride = max(self.count // max(n, 1), 1)
        return self.frame(spark).where(f"(CAST(trade_id AS BIGINT) - {self.first_id}) % {stride} = 0").limit(n)




def _settings(home: Path) -> Settings:
    return load_settings({"LAKEHOUSE_HOME": str(home), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
                          "LAKEHOUSE_STATSD_PORT": str(free_port()), "LAKEHOUSE_CATALOG_NAME": "bench_gold",
                          "LAKEHOUSE_LOG_LEVEL": "WARNING"})


def _append_silver(spark: SparkSession, settings: Settings, exchange: str, df: DataFrame) -> None:
    df.writeTo(names.qualified(settings, names.silver_table(exchange))).append()


def _timed_run(spark: SparkSession, settings: Settings, expected_written: int,
               what: str) -> tuple[float, list[GoldBatchStats]]:
    """One Gold run, timed; fails if dedupe let a copy through or lost a trade (a broken run measures nothing)."""
    started = time.monotonic()
    stats = job.run(spark, settings)
    elapsed = time.monotonic() - started
    written = sum(s.rows_written for s in stats)
    if written != expected_written:
        raise RuntimeError(f"{what}: Gold wrote {written} rows, expected {expected_written}")
    return elapsed, stats


def _create_floor_table(settings: Settings) -> str:
    floor_def = dataclasses.replace(tables.GOLD_DEF, name=names.BENCH_GOLD_FLOOR_TABLE)
    schema = floor_def.schema()
    load_catalog(settings).create_table(floor_def.name, schema, partition_spec=floor_def.partition_spec(schema),
                                        properties={**tables.COMMON_PROPERTIES, **floor_def.properties})
    return names.qualified(settings, floor_def.name)


def _increment(spark: SparkSession, settings: Settings, first_id: int, old: list[Trades]) -> int:
    """Append new trades of the last minutes plus copies of ``old`` trades to Silver; return the new count."""
    per_exchange = max(INCREMENT_ROWS // len(old), 1)
    start = int(time.time() * 1_000_000) - 2 * MINUTE_US
    for trades in old:
        new = Trades(trades.exchange, first_id, per_exchange, start, MINUTE_US // per_exchange)
        _append_silver(spark, settings, trades.exchange, new.frame(spark, partitions=1))
        _append_silver(spark, settings, trades.exchange, trades.copies(spark, INCREMENT_COPIES // len(old)))
    return per_exchange * len(old)


def _measure(spark: SparkSession, settings: Settings, scale: float) -> None:
    from pyspark.sql import functions as F

    exchanges = settings.exchanges
    per_exchange = max(int(THROUGHPUT_ROWS * scale), 10_000) // len(exchanges)
    base_each = max(int(GOLD_BASE_ROWS * scale), 100_000) // len(exchanges)
    recent_start = int(time.time() * 1_000_000) - 6 * HOUR_US - 10 * MINUTE_US
    gold = names.qualified(settings, names.GOLD_TABLE)

    # 1. Silver: trades over the last 6 hours, 1% of them appended twice (in-batch duplicates).
    recent = [Trades(ex, 0, per_exchange, recent_start, 6 * HOUR_US // per_exchange) for ex in exchanges]
    for trades in recent:
        df = trades.frame(spark)
        _append_silver(spark, settings, trades.exchange, df)
        _append_silver(spark, settings, trades.exchange, df.where(f"CAST(trade_id AS BIGINT) % {DUPLICATE_EVERY} = 0"))
    unique_in = per_exchange * len(exchanges)
    total_in = unique_in + len(exchanges) * ((per_exchange + DUPLICATE_EVERY - 1) // DUPLICATE_EVERY)

    # 2. Floor: the same Silver rows projected to Gold columns, appended with no dedupe and no bars.
    floor = _create_floor_table(settings)
    silver = spark.table(names.qualified(settings, names.silver_table(exchanges[0])))
    for ex in exchanges[1:]:
        silver = silver.unionByName(spark.table(names.qualified(settings, names.silver_table(ex))))
    to_gold(silver.limit(10_000)).writeTo(floor).append()  # JVM warm-up, not timed
    started = time.monotonic()
    to_gold(silver).writeTo(floor).append()
    floor_rate = total_in / (time.monotonic() - started)

    # 3. Gold over the same rows.
    gold_s, stats = _timed_run(spark, settings, unique_in, "throughput run")
    rows_in = sum(s.rows_in for s in stats)
    if rows_in != total_in:
        raise RuntimeError(f"Gold read {rows_in} Silver rows, expected {total_in}")
    report("gold_records_per_s", rows_in / gold_s, "records/s")
    report("gold_floor_records_per_s", floor_rate, "records/s")
    report("gold_vs_floor", rows_in / gold_s / floor_rate, "ratio")

    # 4. Small incremental runs with ~1M rows in Gold.
    repeats = INCREMENTAL_REPEATS if scale >= 1 else 1
    _incremental_runs(spark, settings, 2_000_000_000, recent, "1m", repeats)

    # 5. Load 10M older trades straight into Gold (and their bars), over the 10 days before the recent ones.
    span = 10 * DAY_US
    base = [Trades(ex, 1_000_000_000, base_each, recent_start - span - HOUR_US, span // base_each) for ex in exchanges]
    started = time.monotonic()
    for trades in base:
        for first in range(0, trades.count, BASE_ROWS_PER_APPEND):
            chunk = Trades(trades.exchange, trades.first_id + first, min(BASE_ROWS_PER_APPEND, trades.count - first),
                           trades.epoch_us + first * trades.step_us, trades.step_us)
            to_gold(chunk.frame(spark)).writeTo(gold).append()
    base_ids = F.col("trade_id").cast("bigint").between(base[0].first_id, base[0].first_id + base_each - 1)
    ohlcv_1m(spark.table(gold).where(base_ids)).writeTo(names.qualified(settings, names.OHLCV_TABLE)).append()
    report("gold_base_load_s", time.monotonic() - started, "s")
    report("gold_rows_before_incremental", spark.table(gold).count(), "rows")
    report("gold_files_before_incremental", spark.sql(f"SELECT count(*) AS n FROM {gold}.files").first().n, "files")

    # 6. The same incremental runs as in 4 (new trades, copies from the last hours), now with 11M rows in Gold.
    _incremental_runs(spark, settings, 2_100_000_000, recent, "10m", repeats)

    # 7. Late copies: new trades plus copies of trades up to 10 days old, spread over many hour partitions.
    written = _increment(spark, settings, 2_200_000_000, base)
    late_s, stats = _timed_run(spark, settings, written, "late-copies run at 10M")
    report("gold_late_copies_run_s_at_10m", late_s, "s")
    report("gold_late_copies_partitions_at_10m", sum(s.partitions for s in stats), "partitions")
    report("gold_late_copies_files_scanned_at_10m", sum(s.gold_files_scanned for s in stats), "files")


def _incremental_runs(spark: SparkSession, settings: Settings, first_id: int, old: list[Trades], at: str,
                      repeats: int) -> None:
    """Median of a few identical small runs: one run on a shared 2-core machine is too noisy to compare."""
    runs = []
    for i in range(repeats):
        written = _increment(spark, settings, first_id + i * INCREMENT_ROWS, old)
        runs.append(_timed_run(spark, settings, written, f"incremental run at {at}"))
    report(f"gold_incremental_run_s_at_{at}", statistics.median(s for s, _ in runs), "s")
    report(f"gold_incremental_merge_s_at_{at}", statistics.median(sum(b.merge_s for b in st) for _, st in runs), "s")
    report(f"gold_incremental_files_scanned_at_{at}",
           max(sum(b.gold_files_scanned for b in st) for _, st in runs), "files")


def run(scale: float) -> None:
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-gold-"))
    settings = _settings(home)
    try:
        stack.up(settings)
        spark = session(settings, "bench-gold")
        try:
            _measure(spark, settings, scale)
        finally:
            spark.stop()
    finally:  # even when Spark died (its stop raises then), the broker and the data go
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
