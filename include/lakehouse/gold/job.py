"""The Gold run: every configured exchange's Silver table read as an Iceberg stream, then exit.

Each stream processes what its Silver table held when the run started, in micro-batches bounded
by the admission cap (:mod:`lakehouse.streaming`: a processing-time trigger with a target, not
``trigger(availableNow=True)``, under which Iceberg re-walks Silver's history from the stream's
first snapshot on every run, so Silver snapshots could never expire).

One streaming query per Silver table, each with its own checkpoint, run one after the other in
the same Spark application. A single query over the union of the streams cannot survive a change
of the exchange list: Spark refuses a checkpoint whose number of sources differs ("There are [1]
sources in the checkpoint offsets and now there are [2]"). With one checkpoint per source, adding
an exchange to the settings starts its stream from the beginning of its Silver table and leaves the
others where they were. Message ids are per exchange (UUIDv5 of exchange, symbol, trade id), so
deduplicating per source loses nothing; running the queries sequentially keeps Gold single-writer.

Two Gold runs at once (a scheduled and a manual run) share the checkpoints: the second to commit the
same rows (see :func:`lakehouse.gold.writer.merge_trades`) or to write the same checkpoint entry
fails with :class:`GoldConcurrentWriterError`, having written nothing twice.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from lakehouse import names, runreport
from lakehouse.errors import ConcurrentWriterError, concurrent_checkpoint_write, java_causes
from lakehouse.gold.writer import GoldBatchStats, GoldBatchWriter
from lakehouse.metrics import StatsD
from lakehouse.settings import Settings
from lakehouse.streaming import TargetProgress, await_target, ensure_initial_offset, upstream_target

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class GoldRunError(RuntimeError):
    """One or more Silver streams failed; the others were still processed."""


class GoldConcurrentWriterError(GoldRunError, ConcurrentWriterError):
    """Another Gold run committed a batch this run was processing, or wrote its checkpoint entry,
    first; nothing was written twice. For a whole run: every failed source lost such a race."""


def silver_stream(spark: SparkSession, settings: Settings, exchange: str) -> DataFrame:
    """The Silver table of ``exchange`` as an Iceberg stream with Gold's admission cap.

    Only ``append`` snapshots carry rows for Gold (the Silver job's batches, the rows a replay
    moves into Silver); compaction's ``replace`` snapshots are skipped by Iceberg itself. A Silver
    replay's removal commits a ``delete`` or, copy-on-write, an ``overwrite`` snapshot: both add no
    trade (an overwrite re-adds rows already streamed from their append), so they are skipped here
    instead of failing the stream, and the replay removes those trades from Gold itself
    (:func:`lakehouse.gold.writer.remove_trades`).
    """
    from pyspark.errors import AnalysisException

    table = names.qualified(settings, names.silver_table(exchange))
    try:
        return (spark.readStream.format("iceberg")
                .option("streaming-max-files-per-micro-batch", str(settings.gold_max_files_per_batch))
                .option("streaming-skip-delete-snapshots", "true")
                .option("streaming-skip-overwrite-snapshots", "true")
                .load(table))
    except AnalysisException as err:
        raise GoldRunError(f"cannot read {table}: {str(err).splitlines()[0]} (run 'lakehouse up')") from err


def run_source(spark: SparkSession, settings: Settings, exchange: str,
               statsd: StatsD | None = None) -> list[GoldBatchStats]:
    """Process everything Silver of ``exchange`` held when the run started, in bounded batches."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    writer = GoldBatchWriter(settings, exchange, statsd)
    started = time.monotonic()
    target = upstream_target(settings, names.silver_table(exchange))
    if target is None:
        log.info("silver table is empty, nothing to do", extra={"source": exchange})
        return writer.stats
    progress = TargetProgress(settings, names.silver_table(exchange), target)
    checkpoint = names.gold_checkpoint(settings, exchange)
    stream = (silver_stream(spark, settings, exchange).writeStream
              .queryName(f"gold_{exchange}")
              .option("checkpointLocation", checkpoint)
              .trigger(processingTime="0 seconds")
              .foreachBatch(progress.bounded(writer, checkpoint)))
    ensure_initial_offset(settings, names.silver_table(exchange), checkpoint)
    try:
        query = stream.start()
    except (Py4JJavaError, PySparkException) as err:
        if concurrent_checkpoint_write(err) is None:
            raise
        raise _source_failure(exchange, err, None) from err  # another run created the checkpoint
    await_target(query, progress, settings.gold_poll_interval_s,
                 lambda err: _source_failure(exchange, err, writer.failure), checkpoint)
    # The MERGE reads, writes and commits in one statement: its time counts as work; the rest of the
    # query (offsets, micro-batch planning, checkpoint) as planning.
    work = sum(s.duration_s for s in writer.stats)
    report = runreport.active()
    if report is not None:
        report.add("work", work, exchange)
        report.add("planning", max(0.0, time.monotonic() - started - work), exchange)
    return writer.stats


def _source_failure(exchange: str, err: Exception, raised: Exception | None) -> GoldRunError:
    """One source's error: a lost race (the batch's commit, ``raised`` by foreachBatch, or a
    checkpoint file) is a :class:`GoldConcurrentWriterError`, anything else a GoldRunError."""
    if isinstance(raised, ConcurrentWriterError):
        return GoldConcurrentWriterError(f"{exchange}: {raised}")
    logged = concurrent_checkpoint_write(err) if raised is None else None
    if logged is not None:
        return GoldConcurrentWriterError(f"{exchange}: another Gold run uses the same checkpoint and wrote its entry "
                                         f"first; nothing was written twice: {logged.line[:300]}")
    cause = raised or err
    jvm = java_causes(cause) if type(cause).__module__.startswith(("py4j", "pyspark")) else []
    if jvm:  # the root JVM cause names the problem; Py4J's own line only names the call
        root = jvm[-1]
        return GoldRunError(f"{exchange}: {root.class_name.rsplit('.', 1)[-1]}: {root.line[:500]}")
    return GoldRunError(f"{exchange}: {type(cause).__name__}: {str(cause).splitlines()[0]}")


def run(spark: SparkSession, settings: Settings) -> list[GoldBatchStats]:
    """One Gold run over every configured exchange; raises :class:`GoldRunError` if any stream failed.

    A failing source (for example a Silver snapshot the stream cannot read) does not starve the
    others: they are processed first, then the run fails naming every failed source. When every
    failed source lost a race to another Gold run, the error is a :class:`GoldConcurrentWriterError`.
    """
    started = time.monotonic()
    statsd = StatsD.from_settings(settings)
    stats: list[GoldBatchStats] = []
    failures: dict[str, Exception] = {}
    try:
        for exchange in settings.exchanges:
            with runreport.exchange(exchange) as outcome:
                try:
                    source_stats = run_source(spark, settings, exchange, statsd)
                except GoldRunError as err:
                    log.error("gold stream failed: %s", err, extra={"source": exchange})
                    failures[exchange] = err
                    if outcome is not None:
                        outcome.status, outcome.error = "failed", str(err)
                    continue
                stats += source_stats
                if outcome is not None:
                    outcome.status = "committed" if any(s.rows_written for s in source_stats) else "noop"
                    outcome.records = sum(s.rows_in for s in source_stats)
                    outcome.details = {"batches": len(source_stats),
                                       "rows_written": sum(s.rows_written for s in source_stats),
                                       "duplicates_removed": sum(s.duplicates_removed for s in source_stats)}
        duration = time.monotonic() - started
        summary = {"batches": len(stats), "rows_in": sum(s.rows_in for s in stats),
                   "rows_written": sum(s.rows_written for s in stats),
                   "duplicates_removed": sum(s.duplicates_removed for s in stats),
                   "failed_sources": sorted(failures), "duration_s": round(duration, 3)}
        log.info("gold run: %s batches, %s rows in, %s written", summary["batches"], summary["rows_in"],
                 summary["rows_written"], extra={"gold_run": summary})
        statsd.timing("gold.run_ms", duration * 1000)
        statsd.gauge("gold.failed_sources", len(failures))
    finally:
        statsd.close()
    if failures:
        first = next(iter(failures.values()))
        detail = "; ".join(map(str, failures.values()))
        error = (GoldConcurrentWriterError if all(isinstance(e, ConcurrentWriterError) for e in failures.values())
                 else GoldRunError)
        raise error(f"Gold failed for {', '.join(failures)}: {detail}") from first
    return stats
