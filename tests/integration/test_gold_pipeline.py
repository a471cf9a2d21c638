"""Gold on the embedded stack: Silver rows appended to an isolated catalog, then real Gold runs
(Iceberg streams, availableNow, checkpoints, MERGE) and plain-SQL checks of what landed."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from local_checks import BAR_COLUMNS, assert_bars_match_gold

from lakehouse import names
from lakehouse.gold import job
from lakehouse.gold.plans import scan_metrics
from lakehouse.gold.synthetic import silver_frame, silver_record
from lakehouse.gold.writer import GoldBatchStats
from lakehouse.settings import Settings, load_settings
from lakehouse.spark import session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = pytest.mark.integration

HOUR_US = 3_600_000_000
# A recent whole hour, so trades are "in the past and not older than a year" as Silver guarantees.
H0 = (int(dt.datetime.now(dt.timezone.utc).timestamp()) // 3600 - 30) * HOUR_US

def append_silver(spark: SparkSession, settings: Settings, exchange: str, records: list[dict[str, Any]]) -> None:
    silver_frame(spark, records).writeTo(names.qualified(settings, names.silver_table(exchange))).append()


def binance(trade_id: int, ts: int, **kw: Any) -> dict[str, Any]:
    return silver_record("binance", trade_id, ts, symbol="BTCUSDT", currency="USDT", seq=trade_id, **kw)


def kraken(trade_id: int, ts: int, **kw: Any) -> dict[str, Any]:
    return silver_record("kraken", trade_id, ts, symbol="BTC/USDT", currency="USDT", seq=trade_id, **kw)


def gold_rows(spark: SparkSession, settings: Settings) -> list[Any]:
    return spark.table(names.qualified(settings, names.GOLD_TABLE)).collect()


def checkpoint_dir(settings: Settings, exchange: str) -> Path:
    return Path(urllib.parse.urlparse(names.gold_checkpoint(settings, exchange)).path)


def by_source(stats: list[GoldBatchStats], source: str) -> list[GoldBatchStats]:
    return [s for s in stats if s.source == source]


@pytest.mark.slow  # ~30 s: 'make test-slow' (CI runs it after 'make test'), keeping 'make test' under 15 min
def test_both_exchanges_land_once_however_late_the_copy_and_retries_add_nothing(isolated: Settings) -> None:
    spark = session(isolated, "test-gold")
    t = H0 + 10 * 60_000_000
    # Run 1: both exchanges; a copy of binance trade 1 in the same append and one in a later Silver commit.
    first = [binance(1, t, price="100", qty="0.5"), binance(2, t + 1_000_000, price="101", qty="0.25", side="SELL"),
             binance(1, t, price="100", qty="0.5", ingested=t + 5_000_000), binance(3, t + 61_000_000, price="99")]
    append_silver(spark, isolated, "binance", first)
    append_silver(spark, isolated, "binance", [binance(2, t + 1_000_000, price="101", qty="0.25", side="SELL",
                                                       ingested=t + 9_000_000)])
    append_silver(spark, isolated, "kraken", [kraken(7, t + 2_000_000, price="100.5"), kraken(8, t + 3_000_000)])
    stats = job.run(spark, isolated)

    rows = gold_rows(spark, isolated)
    assert sorted((r.exchange, r.trade_id) for r in rows) == [
        ("BINANCE", "1"), ("BINANCE", "2"), ("BINANCE", "3"), ("KRAKEN", "7"), ("KRAKEN", "8")]
    assert {r.instrument for r in rows} == {"BTC/USDT"}
    # The first-seen copy is the one kept.
    assert {r.trade_id: r.ingestion_timestamp for r in rows if r.exchange == "BINANCE"}["1"] == t + 1000
    assert sum(s.rows_in for s in stats) == 7 and sum(s.rows_written for s in stats) == 5
    assert sum(s.duplicates_removed for s in stats) == 2

    # Run 2: current trades, a day later in event time: the stream has long passed the first hour.
    later = (int(dt.datetime.now(dt.timezone.utc).timestamp()) // 60 - 2) * 60_000_000 + 1_000_000
    append_silver(spark, isolated, "binance", [binance(10, later), binance(11, later + 1)])
    job.run(spark, isolated)
    # Run 3: the same binance trade 1 re-produced hours late, with a new late trade in its minute.
    append_silver(spark, isolated, "binance", [binance(1, t, price="100", qty="0.5", ingested=later + 60_000_000),
                                               binance(4, t + 30_000_000, price="98", qty="2"),
                                               binance(12, later + 2)])
    run3 = by_source(job.run(spark, isolated), "binance")
    assert [(s.rows_in, s.rows_written, s.duplicates_removed) for s in run3] == [(3, 2, 1)]
    assert run3[0].late_rows == 2  # trades 1 and 4 are a day behind; trade 12 is within the watermark
    rows = gold_rows(spark, isolated)
    assert len(rows) == len({r.message_id for r in rows}) == 9
    bars = assert_bars_match_gold(spark, isolated)
    assert bars == 4  # binance: minutes t, t+1m and `later`; kraken: minute t
    ohlcv_before = spark.sql(f"SELECT {BAR_COLUMNS} FROM {names.qualified(isolated, names.OHLCV_TABLE)}").collect()

    # A retried batch: forget that the last binance batch committed; the stream re-runs it with the same id.
    commits = checkpoint_dir(isolated, "binance") / "commits"
    last = max(int(p.name) for p in commits.iterdir() if p.name.isdigit())
    (commits / str(last)).unlink()
    (commits / f".{last}.crc").unlink(missing_ok=True)
    retry = by_source(job.run(spark, isolated), "binance")
    assert [(s.batch_id, s.rows_in, s.rows_written) for s in retry] == [(run3[0].batch_id, 3, 0)]
    assert len(gold_rows(spark, isolated)) == 9
    ohlcv_after = spark.sql(f"SELECT {BAR_COLUMNS} FROM {names.qualified(isolated, names.OHLCV_TABLE)}").collect()
    assert sorted(ohlcv_after) == sorted(ohlcv_before)

    # Nothing new in Silver: a run processes nothing and changes nothing.
    assert sum(s.rows_in for s in job.run(spark, isolated)) == 0
    assert len(gold_rows(spark, isolated)) == 9


@pytest.mark.slow  # ~30 s: 'make test-slow' (CI runs it after 'make test'), keeping 'make test' under 15 min
def test_filtered_query_and_merge_prune_hour_partitions(isolated: Settings) -> None:
    spark = session(isolated, "test-gold")
    gold = names.qualified(isolated, names.GOLD_TABLE)
    for hour in range(6):
        append_silver(spark, isolated, "binance", [binance(hour * 10 + i, H0 + hour * HOUR_US + i) for i in range(3)])
        job.run(spark, isolated)
    files = spark.sql(f"SELECT partition.exchange_date AS d, partition.exchange_hour AS h FROM {gold}.files").collect()
    assert len({(f.d, f.h) for f in files}) == 6
    target = dt.datetime.fromtimestamp((H0 + 2 * HOUR_US) / 1e6, dt.timezone.utc)
    in_target = sum(1 for f in files if (f.d, f.h) == (target.date(), target.hour))

    query = spark.sql(f"SELECT message_id, price FROM {gold} "
                      f"WHERE exchange_date = DATE'{target.date()}' AND exchange_hour = {target.hour}")
    assert len(query.collect()) == 3
    plan = query._jdf.queryExecution().executedPlan().toString()
    assert "exchange_date" in plan.split("filters=", 1)[1] and "exchange_hour" in plan.split("filters=", 1)[1]
    [scan] = scan_metrics(query, gold)
    # Only the target hour's files are read; the rest is pruned by manifest partition summaries or file stats.
    assert scan.files_scanned == in_target < len(files)
    assert scan.files_skipped + scan.manifests_skipped > 0

    # A late copy and a late trade for that hour: the MERGE reads only that hour's files.
    append_silver(spark, isolated, "binance", [binance(20, H0 + 2 * HOUR_US), binance(29, H0 + 2 * HOUR_US + 9)])
    [merge] = by_source(job.run(spark, isolated), "binance")
    assert (merge.rows_written, merge.partitions) == (1, 1)
    assert 0 < merge.gold_files_scanned <= in_target < len(files)
    assert len(gold_rows(spark, isolated)) == 6 * 3 + 1


def test_adding_an_exchange_starts_its_stream_and_keeps_the_others(isolated: Settings) -> None:
    spark = session(isolated, "test-gold")
    only_binance = isolated.replace(exchanges=("binance",))
    append_silver(spark, isolated, "binance", [binance(1, H0), binance(2, H0 + 1)])
    append_silver(spark, isolated, "kraken", [kraken(1, H0 + 2)])
    assert sum(s.rows_in for s in job.run(spark, only_binance)) == 2
    append_silver(spark, isolated, "binance", [binance(3, H0 + 3)])
    stats = job.run(spark, isolated)  # kraken now configured: same code, one more stream
    assert sum(s.rows_in for s in by_source(stats, "binance")) == 1  # binance resumed, not re-read
    assert sum(s.rows_in for s in by_source(stats, "kraken")) == 1
    assert sorted((r.exchange, r.trade_id) for r in gold_rows(spark, isolated)) == [
        ("BINANCE", "1"), ("BINANCE", "2"), ("BINANCE", "3"), ("KRAKEN", "1")]


def test_a_bad_source_fails_the_run_loudly_after_the_others(isolated: Settings) -> None:
    spark = session(isolated, "test-gold")
    bad = binance(1, H0)
    bad["message_id"] = None
    append_silver(spark, isolated, "binance", [bad, binance(2, H0 + 1)])
    append_silver(spark, isolated, "kraken", [kraken(1, H0 + 2)])
    with pytest.raises(job.GoldRunError, match="binance.*GoldInputError.*lack message_id"):
        job.run(spark, isolated)
    assert [(r.exchange, r.trade_id) for r in gold_rows(spark, isolated)] == [("KRAKEN", "1")]
    with pytest.raises(job.GoldRunError):  # the checkpoint did not move past the bad batch
        job.run(spark, isolated)


def test_lakehouse_run_gold_is_the_spark_submit_job_and_reports_metrics(isolated: Settings) -> None:
    spark = session(isolated, "test-gold")
    append_silver(spark, isolated, "binance", [binance(1, H0), binance(1, H0)])
    append_silver(spark, isolated, "kraken", [kraken(5, H0 + 7)])
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    statsd.bind((isolated.statsd_host, isolated.statsd_port))
    statsd.settimeout(0.5)
    try:
        env = {**os.environ, **isolated.env(), "LAKEHOUSE_LOG_JSON": "true"}
        done = subprocess.run([sys.executable, "-m", "lakehouse", "run", "gold"], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        packets = []
        while True:
            try:
                packets.append(statsd.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        statsd.close()
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    batches = {rec["gold_batch"]["source"]: rec["gold_batch"] for rec in lines if "gold_batch" in rec}
    assert (batches["binance"]["rows_in"], batches["binance"]["rows_written"]) == (2, 1)
    assert batches["binance"]["duplicates_removed"] == 1 and batches["binance"]["max_event_lag_s"] > 0
    assert [rec["gold_run"]["rows_written"] for rec in lines if "gold_run" in rec] == [2]

    def metric(name: str, source: str) -> float:
        [value] = [float(p.split(":", 1)[1].split("|", 1)[0]) for p in packets
                   if p.startswith(f"{isolated.statsd_prefix}.{name}.{source}:")]
        return value

    assert (metric("gold.rows_in", "binance"), metric("gold.rows_written", "binance")) == (2, 1)
    assert metric("gold.duplicates_removed", "binance") == 1 and metric("gold.max_event_lag_s", "kraken") > 0

    spark.sql(f"REFRESH TABLE {names.qualified(isolated, names.GOLD_TABLE)}")
    spark.sql(f"REFRESH TABLE {names.qualified(isolated, names.OHLCV_TABLE)}")
    assert sorted((r.exchange, r.trade_id) for r in gold_rows(spark, isolated)) == [("BINANCE", "1"), ("KRAKEN", "5")]
    assert assert_bars_match_gold(spark, isolated) == 2


def test_ensure_tables_gives_an_existing_gold_table_the_new_merge_properties(tmp_path: Path) -> None:
    """A Gold table created before the row-level MERGE (plain copy-on-write MERGE settings) gets
    merge-on-read and serializable isolation from the next ``ensure_tables`` (``lakehouse up``)."""
    from lakehouse import tables
    from lakehouse.catalog import load_catalog

    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home")})
    tables.ensure_tables(settings)
    catalog = load_catalog(settings)
    with catalog.load_table(names.GOLD_TABLE).transaction() as tx:  # as an older release left it
        tx.remove_properties("write.merge.isolation-level")
        tx.set_properties({"write.merge.mode": "copy-on-write", "operator.note": "kept"})

    assert tables.ensure_tables(settings) == []

    properties = catalog.load_table(names.GOLD_TABLE).properties
    assert properties["write.merge.mode"] == "merge-on-read"
    assert properties["write.merge.isolation-level"] == "serializable"
    assert properties["operator.note"] == "kept"  # properties it does not declare are left alone
    assert tables.update_properties(catalog, tables.GOLD_DEF) == {}  # nothing left to change
