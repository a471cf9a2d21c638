"""Run control of one Silver run for one exchange: Bronze as an Iceberg stream until the run's target.

Processes what Bronze held when the run started, in micro-batches bounded by the admission cap,
then exits: the contract of availableNow, run as :mod:`lakehouse.streaming` describes (a
processing-time trigger with a target, because Iceberg's availableNow ignores the cap). Each batch
goes through :func:`lakehouse.silver.batch.process_batch` and is reported by
:mod:`lakehouse.silver.reporting`; a failure is classified by :mod:`lakehouse.silver.failures`
from the exception the batch raised, kept here as an object, or from the query's JVM exception.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from lakehouse import names, runreport
from lakehouse.errors import concurrent_checkpoint_write
from lakehouse.metrics import StatsD
from lakehouse.settings import Settings
from lakehouse.silver.batch import process_batch
from lakehouse.silver.failures import SilverRunError, query_failure, run_failure
from lakehouse.silver.reporting import RunSummary, report_batch, report_run
from lakehouse.silver.writer import batch_tag
from lakehouse.streaming import (
    BatchHandler,
    RunComplete,
    Target,
    TargetProgress,
    await_target,
    ensure_initial_offset,
    upstream_target,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

QUERY_ID_PROPERTY = "sql.streaming.queryId"  # Spark sets it on the thread running foreachBatch


def bronze_target(settings: Settings, exchange: str) -> Target | None:
    """The newest append snapshot in Bronze's current history: where this run ends."""
    return upstream_target(settings, names.bronze_table(exchange))


def run(spark: SparkSession, settings: Settings, exchange: str) -> RunSummary:
    """Process every Bronze row of ``exchange`` committed before the run started; return the counts.

    Raises :class:`~lakehouse.registry.RegistryUnavailableError` when the schema registry cannot
    be reached, :class:`~lakehouse.silver.failures.SilverConcurrentWriterError` when another run
    of the same exchange committed a batch of this run first, and
    :class:`~lakehouse.silver.failures.SilverRunError` for any other failure of the query; nothing
    of a failed batch is committed to the checkpoint, so the next run retries it.
    """
    started = time.monotonic()
    summary = RunSummary(exchange)
    statsd = StatsD.from_settings(settings)
    try:
        with runreport.phase("planning"):
            target = bronze_target(settings, exchange)
        if target is None:
            log.info("bronze table is empty, nothing to do", extra={"exchange": exchange})
        else:
            stream_started = time.monotonic()
            _stream(spark, settings, exchange, target, summary, statsd)
            report = runreport.active()
            if report is not None:  # what the stream spent outside the batches' work and commits
                phases = report.outcome(exchange).phases
                inside = phases.get("work", 0.0) + phases.get("commit", 0.0)
                report.add("planning", max(0.0, time.monotonic() - stream_started - inside), exchange)
        summary.duration_s = time.monotonic() - started
        report_run(summary, statsd)
    finally:
        statsd.close()
    return summary


class _RaisedInBatches:
    """The first exception the ``foreachBatch`` function raised, kept whole: the failed query only
    has it as text. A batch refused past the run's end (:class:`RunComplete`) is not a failure."""

    def __init__(self) -> None:
        self.first: BaseException | None = None

    def keeping(self, handler: BatchHandler) -> BatchHandler:
        def handle(batch_df: DataFrame, batch_id: int) -> None:
            try:
                handler(batch_df, batch_id)
            except RunComplete:
                raise
            except Exception as err:
                if self.first is None:
                    self.first = err
                raise
        return handle


def _stream(spark: SparkSession, settings: Settings, exchange: str, target: Target, summary: RunSummary,
            statsd: StatsD) -> None:
    """Run the streaming query until the target is consumed (see :class:`lakehouse.streaming.TargetProgress`)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    progress = TargetProgress(settings, names.bronze_table(exchange), target)
    checkpoint = names.checkpoint(settings, "silver", exchange)
    raised = _RaisedInBatches()

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        query_id = batch_df.sparkSession.sparkContext.getLocalProperty(QUERY_ID_PROPERTY)
        if not query_id:
            raise SilverRunError("no streaming query id on the foreachBatch thread")
        stats = process_batch(batch_df, settings, exchange, batch_tag(query_id, batch_id))
        summary.batches.append(stats)
        report_batch(stats, exchange, statsd)

    stream = (
        spark.readStream
        .option("streaming-max-files-per-micro-batch", settings.silver_max_files_per_batch)
        .option("streaming-max-rows-per-micro-batch", settings.silver_max_rows_per_batch)
        .option("streaming-skip-delete-snapshots", "true")
        .option("split-size", str(settings.silver_split_size_mb * 1024 * 1024))
        .table(names.qualified(settings, names.bronze_table(exchange)))
        .writeStream
        .option("checkpointLocation", checkpoint)
        .trigger(processingTime="0 seconds")
        .foreachBatch(raised.keeping(progress.bounded(handle, checkpoint))))
    ensure_initial_offset(settings, names.bronze_table(exchange), checkpoint)
    try:
        query: StreamingQuery = stream.start()
    except (Py4JJavaError, PySparkException) as err:
        if concurrent_checkpoint_write(err) is None:
            raise
        raise query_failure(err, exchange) from err  # another run created the new checkpoint just now
    await_target(query, progress, settings.silver_poll_interval_s,
                 lambda err: run_failure(err, exchange, raised.first), checkpoint)


__all__ = ["QUERY_ID_PROPERTY", "bronze_target", "run"]
