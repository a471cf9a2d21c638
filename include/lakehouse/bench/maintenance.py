"""Maintenance: a day of one-minute commits, and what hourly maintenance keeps of the run time.

An isolated stack (temporary LAKEHOUSE_HOME, free ports) gets a day of the pipeline in small
batches: 1,440 one-minute commits to a Bronze and a Silver table, for two exchanges of the same
shape. One exchange (``nomaint``) gets no maintenance; the other (``hourly``) gets
``lakehouse.maintenance.maintain`` over its Bronze and Silver tables every 60 commits, acting as
of the simulated time of that commit (so hours and days close as they would live).

Measured runs are the real layer functions in one warm SparkSession: ``run_bronze`` (what the
Bronze job calls) over one new minute of Kafka records (300 at scale 1, produced with
confluent-kafka), then ``lakehouse.silver.job.run`` over the Bronze rows that run committed;
each figure is the median of 5 such runs, timed at commit 10 and at commit 1,440 of each
exchange (each real run adds its own commit, so the counts are approximate; the snapshot
counts are reported). The floor of this benchmark is the run at commit 10 (the same work on a
young table): ``maint_<layer>_ratio_<label>`` is the run at 1,440 over that exchange's own run
at 10, target <= 1.2 with hourly maintenance; ``maint_<layer>_run_s_at_10`` is the median of
both exchanges' runs at 10.

How the history is built (not by 1,440 real runs, which would take over an hour): the first
Bronze commit is a real run; every other history commit is appended straight through pyiceberg,
one small data file per commit and table, each commit carrying what the real jobs write in its
snapshot summary: Bronze commits the Kafka offsets (and topic id) of the last real run,
unchanged, so the next real run resumes where Kafka stands; Silver commits a batch tag and
dead-letter counts. The rows are valid V2 trades (Bronze: Confluent-framed Avro values) whose
ingestion and trade times advance one minute per commit from a day ago to now. Bronze and
Silver are partitioned by day, so compaction (closed partitions only) has work once simulated
time passes midnight, and today's partition collects small files all day. The Bronze rows'
Kafka offsets are synthetic (they are not in the topic). Per-commit cost of the real jobs is
Spark and Kafka; what maintenance fights is Iceberg metadata (snapshots, manifests, small
files), which this history builds exactly; its commits go through the jobs' own pyiceberg
transaction (:func:`lakehouse.catalog.transaction`). Each real run starts with an empty
table-metadata cache (:data:`lakehouse.catalog.METADATA_CACHE`), as a spark-submit process
does. At both points the CPU time of one monitor measurement over the whole stack is reported
too (``maint_monitor_cpu_s_at_*``: the ``pipeline_monitor`` DAG's work each minute). Before the
timed runs at 1,440 one untimed real Bronze and Silver run catches Silver's stream up with the
whole day of Bronze (the timed Silver runs then read one minute each).

Snapshots carry real commit times, all within the benchmark's own minutes: with the 24 h
retention nothing expires during the simulated day. That is the steady state (a day of minute
snapshots retained) and is reported as is. After the measured runs, one maintenance pass over
every table of the stack is timed (``maint_pass_s``, as of now), with per table before and
after it: metadata bytes (everything in its ``metadata/`` folder: metadata.json versions,
manifest lists, manifests), the current metadata.json, live data files, snapshots and the
current snapshot's manifests. Then one more pass as of 25 h later (``*_expired`` figures) shows
what expiry removes once the day is past retention (down to ``snapshot_retain_last``, or what a
stream still needs).

``--scale`` multiplies the commits (at least 72, so at least one hourly pass runs) and the
records per minute (at least 100).
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa
from confluent_kafka import Producer

from lakehouse import avro, names, stack
from lakehouse.bench import free_port, report
from lakehouse.catalog import METADATA_CACHE, load_catalog, transaction
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings
from lakehouse.silver.synthetic import bronze_arrow, trade

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyspark.sql import SparkSession

COMMITS = 1440  # one day of one-minute micro-batches
EARLY = 10  # the commit the late runs are compared with
HOUR = 60  # commits between two maintenance passes of the maintained exchange
RECORDS = 300  # Kafka records per minute
REPEATS = 5  # timed runs per point (the median is reported)
# Synthetic Bronze rows get offsets far past anything produced (they are not in the topic).
SYNTHETIC_OFFSET = 10**12




def _us(at: dt.datetime) -> int:
    return int(at.timestamp() * 1_000_000)


@dataclass
class Exchange:
    """One exchange's Bronze + Silver pair and what the benchmark needs to keep appending to it."""

    name: str
    label: str  # "nomaint" or "hourly"
    maintained: bool
    topic: str
    schema_id: int
    serial: int = 0  # next trade number (distinct trades across the whole run)
    bronze_properties: dict[str, str] = field(default_factory=dict)  # offsets of the last real Bronze run
    timings: dict[str, list[float]] = field(default_factory=dict)

    def trades(self, count: int, at: dt.datetime) -> list[dict[str, Any]]:
        """``count`` distinct valid trades a little before ``at``."""
        at_us = _us(at) - 1_000_000
        first, self.serial = self.serial, self.serial + count
        return [trade(first + i, at_us - i, self.name) for i in range(count)]


def produce_minute(settings: Settings, ex: Exchange, count: int) -> None:
    """One minute of trades into the exchange's topic (what the producers would have written)."""
    schema = avro.parsed_trade_schema()
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5,
                         "compression.type": settings.producer_compression})
    for record in ex.trades(count, dt.datetime.now(dt.timezone.utc)):
        producer.produce(ex.topic, value=avro.encode(ex.schema_id, schema, record), key=record["symbol"].encode())
    if producer.flush(60) != 0:
        raise RuntimeError(f"producer did not deliver a minute of {ex.name} within 60s")


def _bronze_commit(table: Table, ex: Exchange, count: int, at: dt.datetime, commit: int) -> None:
    """One Bronze history commit: a minute of Avro values ingested at ``at``, with the last real offsets."""
    schema = avro.parsed_trade_schema()
    encoded = [avro.encode(ex.schema_id, schema, r) for r in ex.trades(count, at)]
    rows = bronze_arrow(encoded, ex.topic, at, SYNTHETIC_OFFSET + commit * count)
    with transaction(table) as tx:
        tx.append(rows, snapshot_properties={**ex.bronze_properties,
                                             names.BRONZE_RUN_PROPERTY: f"bench-history-{commit}"})


def _silver_commit(table: Table, ex: Exchange, count: int, at: dt.datetime, commit: int) -> None:
    """One Silver history commit: a minute of validated trades, tagged like a Silver batch."""
    rows = []
    for j, record in enumerate(ex.trades(count, at)):
        rows.append({**record, "vendor_data": list((record["vendor_data"] or {}).items()) or None,
                     "validation_timestamp": at,
                     "exchange_date": dt.datetime.fromtimestamp(record["timestamp"] / 1e6, dt.timezone.utc).date(),
                     "bronze_topic": ex.topic, "bronze_partition": 0,
                     "bronze_offset": SYNTHETIC_OFFSET + commit * count + j, "schema_id": ex.schema_id})
    arrow = pa.Table.from_pylist(rows, schema=table.schema().as_arrow())
    with transaction(table) as tx:
        tx.append(arrow, snapshot_properties={names.SILVER_BATCH_PROPERTY: f"bench-history:{commit}",
                                              names.SILVER_DEAD_PROPERTY: "{}"})


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _real_runs(spark: SparkSession, settings: Settings, ex: Exchange, count: int, point: str | None) -> None:
    """Produce a minute, run Bronze then Silver for real; ``point`` set: record both times under it."""
    from lakehouse.bronze.run import run_bronze
    from lakehouse.silver.job import run as run_silver

    produce_minute(settings, ex, count)
    METADATA_CACHE.clear()  # each real run is a process of its own: it parses every table it loads
    bronze_s, result = _timed(lambda: run_bronze(spark, settings, ex.name))
    if result.records != count:
        raise RuntimeError(f"Bronze of {ex.name} ingested {result.records} records, expected {count}")
    ex.bronze_properties = _offset_properties(load_catalog(settings).load_table(names.bronze_table(ex.name)))
    METADATA_CACHE.clear()
    silver_s, summary = _timed(lambda: run_silver(spark, settings, ex.name))
    if point is not None:
        if summary.read != count or summary.valid != count:
            raise RuntimeError(f"Silver of {ex.name} read {summary.read} and kept {summary.valid} rows, "
                               f"expected {count}")
        ex.timings.setdefault(f"bronze_{point}", []).append(bronze_s)
        ex.timings.setdefault(f"silver_{point}", []).append(silver_s)


def _monitor_cpu_s(settings: Settings) -> float:
    """CPU seconds of one pipeline_monitor measurement (``lakehouse.monitor.figures.collect``) over
    the whole stack, median of :data:`REPEATS`, each with an empty metadata cache (a task process)."""
    from lakehouse.monitor.figures import collect

    spent = []
    for _ in range(REPEATS):
        METADATA_CACHE.clear()
        started = time.process_time()
        health = collect(settings)
        spent.append(time.process_time() - started)
        if health.errors:
            raise RuntimeError(f"the monitor could not measure: {health.errors}")
    return statistics.median(spent)


def _offset_properties(table: Table) -> dict[str, str]:
    """The offsets (and topic id) summary properties of main's current snapshot (a real Bronze commit)."""
    snap = table.current_snapshot()
    summary = snap.summary if snap is not None and snap.summary is not None else None
    if summary is None or names.BRONZE_OFFSETS_PROPERTY not in summary:
        raise RuntimeError(f"{'.'.join(table.name())}: the last Bronze run left no offsets on main")
    keys = (names.BRONZE_OFFSETS_PROPERTY, names.BRONZE_TOPIC_ID_PROPERTY)
    return {k: summary[k] for k in keys if summary.get(k)}


def _metadata_bytes(table: Table) -> int:
    """Bytes of everything in the table's metadata folder: metadata.json files, manifest lists, manifests."""
    folder = Path(urlparse(table.metadata.location).path) / "metadata"
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _table_figures(settings: Settings, exchanges: list[Exchange], suffix: str) -> None:
    catalog = load_catalog(settings)
    for ex in exchanges:
        for layer, name in (("bronze", names.bronze_table(ex.name)), ("silver", names.silver_table(ex.name))):
            table = catalog.load_table(name)
            prefix = f"maint_{ex.label}_{layer}"
            report(f"{prefix}_metadata_bytes_{suffix}", _metadata_bytes(table), "bytes")
            report(f"{prefix}_metadata_json_bytes_{suffix}",
                   Path(urlparse(table.metadata_location).path).stat().st_size, "bytes")
            report(f"{prefix}_data_files_{suffix}", sum(1 for _ in table.scan().plan_files()), "files")
            report(f"{prefix}_snapshots_{suffix}", len(table.metadata.snapshots), "snapshots")
            snap = table.current_snapshot()
            manifests = len(snap.manifests(table.io)) if snap is not None else 0
            report(f"{prefix}_manifests_{suffix}", manifests, "manifests")


def run(scale: float) -> None:
    from lakehouse.maintenance import maintain
    from lakehouse.spark import session

    commits = max(HOUR + 12, round(COMMITS * scale))
    count = max(100, round(RECORDS * scale))
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-maintenance-"))
    settings = load_settings({"LAKEHOUSE_HOME": str(home), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
                              "LAKEHOUSE_STATSD_PORT": str(free_port()), "LAKEHOUSE_LOG_LEVEL": "WARNING"})
    if len(settings.exchanges) < 2:
        raise RuntimeError("the maintenance benchmark needs two exchanges (one maintained, one not)")
    spark = None
    try:
        stack.up(settings)
        registry = registry_from_settings(settings)
        exchanges = []
        for ex_name, label in zip(settings.exchanges[:2], ("nomaint", "hourly")):
            topic = names.topic(settings, ex_name)
            schema_id = registry.register(names.value_subject(topic), avro.load_schema())
            exchanges.append(Exchange(ex_name, label, label == "hourly", topic, schema_id))
        catalog = load_catalog(settings)
        spark = session(settings, "lakehouse-bench-maintenance")
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=commits)
        report("maint_commits", commits, "commits")
        report("maint_records_per_commit", count, "records")

        # Commit 1 of Bronze is a real run: it leaves the offsets every history commit carries.
        for ex in exchanges:
            _real_runs(spark, settings, ex, count, None)
        per_commit: list[float] = []  # seconds of one table's history commit, per minute
        passes: list[float] = []
        for commit in range(2, commits + 1):
            at = start + dt.timedelta(minutes=commit)
            started = time.perf_counter()
            for ex in exchanges:
                _bronze_commit(catalog.load_table(names.bronze_table(ex.name)), ex, count, at, commit)
                _silver_commit(catalog.load_table(names.silver_table(ex.name)), ex, count, at, commit)
            per_commit.append((time.perf_counter() - started) / (2 * len(exchanges)))
            if commit == EARLY:
                for ex in exchanges:
                    _real_runs(spark, settings, ex, count, None)  # warm-up; starts Silver's stream
                for _ in range(REPEATS):
                    for ex in exchanges:
                        _real_runs(spark, settings, ex, count, "early")
                report(f"maint_monitor_cpu_s_at_{EARLY}", _monitor_cpu_s(settings), "s")
            if commit % HOUR == 0:
                hourly = [ex for ex in exchanges if ex.maintained]
                tables = [t for ex in hourly for t in (names.bronze_table(ex.name), names.silver_table(ex.name))]
                elapsed, _ = _timed(lambda: maintain(spark, settings, tables=tables, as_of=at))
                passes.append(elapsed)
        report("maint_history_commit_s_first_hour", statistics.mean(per_commit[:HOUR]), "s")
        report("maint_history_commit_s_last_hour", statistics.mean(per_commit[-HOUR:]), "s")
        report("maint_hourly_passes", len(passes), "passes")
        report("maint_hourly_pass_s_first", passes[0], "s")
        report("maint_hourly_pass_s_last", passes[-1], "s")

        for ex in exchanges:  # Silver's stream catches up with the day of Bronze (untimed)
            _real_runs(spark, settings, ex, count, None)
        for _ in range(REPEATS):
            for ex in exchanges:
                _real_runs(spark, settings, ex, count, "late")
        for layer in ("bronze", "silver"):
            early = [statistics.median(ex.timings[f"{layer}_early"]) for ex in exchanges]
            report(f"maint_{layer}_run_s_at_{EARLY}", statistics.median(early), "s")
            for ex, at_early in zip(exchanges, early):
                late = statistics.median(ex.timings[f"{layer}_late"])
                report(f"maint_{layer}_run_s_at_{commits}_{ex.label}", late, "s")
                report(f"maint_{layer}_ratio_{ex.label}", late / at_early, "ratio")

        report(f"maint_monitor_cpu_s_at_{commits}", _monitor_cpu_s(settings), "s")
        _table_figures(settings, exchanges, "before")
        elapsed, _ = _timed(lambda: maintain(spark, settings))
        report("maint_pass_s", elapsed, "s")
        _table_figures(settings, exchanges, "after")
        past_retention = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=settings.snapshot_retention_hours + 1)
        elapsed, _ = _timed(lambda: maintain(spark, settings, as_of=past_retention))
        report("maint_pass_s_expired", elapsed, "s")
        _table_figures(settings, exchanges, "expired")
    finally:
        if spark is not None:
            spark.stop()
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
