"""Silver throughput: one Silver run over 1,000,000 Bronze rows vs fastavro decoding of the same bytes.

An isolated stack (temporary LAKEHOUSE_HOME, free ports) gets N distinct V2 trade values (Avro,
Confluent framing) appended straight to its Bronze table with pyiceberg (10 commits). The floor
is one process decoding every value with ``fastavro.schemaless_reader`` and nothing else. The
measured run is ``lakehouse.silver.job.run`` (what the Spark job calls: Iceberg stream, decode,
validate, Silver + DLQ writes with their idempotence checks). It runs twice in one SparkSession:
first over a copy of the same rows in another exchange's Bronze table (the *cold* run: fresh
JVM code, Python workers that still import the project), then over the measured exchange (the
*warm* run), so the headline figure is processing throughput, not start-up; both are reported.

"Per core" is measured, not assumed: the CPU time of the whole process tree (driver, JVM, Python
workers) during the run gives the cores Silver actually used, and the floor's own CPU time gives
its rate per core. On a shared machine wall-clock rates depend on what else runs; rates per
CPU-second do not. ``silver_vs_floor_per_core`` = (Silver records/s / cores used) / (floor
records per CPU-second); target >= 0.5. ``silver_vs_floor_per_allocated_core`` divides by Spark's
task slots and the floor's wall-clock rate instead.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import fastavro
import psutil

from lakehouse import avro, names, stack
from lakehouse.bench import free_port, report
from lakehouse.catalog import load_catalog
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings
from lakehouse.silver.synthetic import bronze_arrow, trade

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

RECORDS = 1_000_000
COMMITS = 10




def values(schema_id: int, exchange: str, count: int, at: dt.datetime) -> list[bytes]:
    """``count`` distinct trades in the Confluent wire format, all valid."""
    schema = avro.parsed_trade_schema()
    at_us = int(at.timestamp() * 1_000_000) - 60_000_000
    return [avro.encode(schema_id, schema, trade(i, at_us - i, exchange)) for i in range(count)]


def floor(encoded: list[bytes]) -> tuple[float, float]:
    """fastavro decoding of every value in one process (header skipped, writer schema known).

    Returns (records per wall-clock second, records per CPU-second of this process).
    """
    schema = avro.parsed_trade_schema()
    reader = fastavro.schemaless_reader
    started, cpu_started = time.perf_counter(), time.process_time()
    for value in encoded:
        reader(io.BytesIO(value[avro.HEADER.size:]), schema)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return len(encoded) / wall, len(encoded) / cpu


def append_bronze(settings: Settings, exchange: str, encoded: list[bytes], at: dt.datetime, commits: int) -> None:
    table = load_catalog(settings).load_table(names.bronze_table(exchange))
    step = -(-len(encoded) // commits)
    for first in range(0, len(encoded), step):
        table.append(bronze_arrow(encoded[first:first + step], names.topic(settings, exchange), at, first))


def _cpu_seconds() -> float:
    """CPU time of this process and its descendants (the JVM, Spark's Python workers), including
    descendants that already exited (counted in their parent's ``children_*`` times)."""
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_seconds: float  # of the whole process tree (driver, JVM, Python workers)
    count: int

    @property
    def cores_used(self) -> float:
        return self.cpu_seconds / self.seconds

    @property
    def per_cpu_s(self) -> float:
        return self.count / self.cpu_seconds


def _measured(spark: SparkSession, settings: Settings, exchange: str, count: int) -> Measured:
    """One Silver run over ``count`` valid Bronze rows, timed in wall-clock and CPU seconds."""
    from lakehouse.silver.job import run as run_silver

    cpu_before, started = _cpu_seconds(), time.perf_counter()
    summary = run_silver(spark, settings, exchange)
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    if summary.read != count or summary.valid != count:
        raise RuntimeError(f"Silver read {summary.read} and kept {summary.valid} rows of {exchange}, expected {count}")
    return Measured(elapsed, cpu, count)


def run(scale: float) -> None:
    from lakehouse.spark import session

    count = max(1000, int(RECORDS * scale))
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-silver-"))
    settings = load_settings({"LAKEHOUSE_HOME": str(home), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
                              "LAKEHOUSE_STATSD_PORT": str(free_port()), "LAKEHOUSE_LOG_LEVEL": "WARNING"})
    exchange, warmup = settings.exchanges[0], settings.exchanges[-1]
    spark = None
    try:
        stack.up(settings)
        schema_id = registry_from_settings(settings).register(
            names.value_subject(names.topic(settings, exchange)), avro.load_schema())
        at = dt.datetime.now(dt.timezone.utc)
        started = time.perf_counter()
        encoded = values(schema_id, exchange, count, at)
        report("silver_generate_records_per_s", count / (time.perf_counter() - started), "records/s")
        report("silver_value_bytes", sum(map(len, encoded)) / count, "bytes")
        append_bronze(settings, exchange, encoded, at, COMMITS)

        spark = session(settings, "lakehouse-bench-silver")
        slots = spark.sparkContext.defaultParallelism
        cold = None
        if warmup != exchange:
            append_bronze(settings, warmup, encoded, at, COMMITS)
            cold = _measured(spark, settings, warmup, count)
        # The floor right before and right after the measured run: the machine's speed drifts.
        before = floor(encoded)
        warm = _measured(spark, settings, exchange, count)
        after = floor(encoded)
        floor_rate, floor_cpu_rate = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        report("silver_floor_records_per_s", floor_rate, "records/s")
        report("silver_floor_records_per_cpu_s", floor_cpu_rate, "records/cpu-s")
        if cold is not None:
            report("silver_cold_run_s", cold.seconds, "s")
            report("silver_cold_records_per_cpu_s", cold.per_cpu_s, "records/cpu-s")
            report("silver_cold_vs_floor_per_core", cold.per_cpu_s / floor_cpu_rate, "ratio")
        report("silver_run_s", warm.seconds, "s")
        report("silver_records_per_s", count / warm.seconds, "records/s")
        report("silver_spark_task_slots", slots, "cores")
        report("silver_cores_used", warm.cores_used, "cores")
        report("silver_records_per_cpu_s", warm.per_cpu_s, "records/cpu-s")
        report("silver_vs_floor_per_core", warm.per_cpu_s / floor_cpu_rate, "ratio")
        report("silver_vs_floor_per_allocated_core", count / warm.seconds / slots / floor_rate, "ratio")
    finally:
        if spark is not None:
            spark.stop()
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
