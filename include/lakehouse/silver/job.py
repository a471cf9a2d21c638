"""One Silver run for one exchange: Bronze as an Iceberg stream -> Silver + dead-letter table, then exit.

Processes what Bronze held when the run started, in micro-batches bounded by the admission cap,
then exits: the contract of availableNow, run as :mod:`lakehouse.streaming` describes (a
processing-time trigger with a target, because Iceberg's availableNow ignores the cap).

In each micro-batch the Spark tasks decode and validate every row once and write the Silver and
dead-letter data files themselves (:mod:`lakehouse.silver.tasks`); the driver commits each
table's files in one commit tagged with the batch, so a retried batch skips what is committed
(:func:`process_batch`). Two runs sharing the checkpoint (a scheduled and a manual run) may
process the same batch at once: the tagged commit is a compare-and-set, so the second writer of a
batch commits nothing and fails with :class:`SilverConcurrentWriterError`, as it does when the
other run wrote the batch's checkpoint entry first. Each batch reports read/valid/dead-lettered
counts, DLQ rate and duration as a log line and StatsD metrics (``silver.*``, tagged by exchange
and error_type).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lakehouse import names, runreport
from lakehouse.catalog import TagCommittedError, load_catalog
from lakehouse.errors import ConcurrentWriterError, concurrent_checkpoint_write
from lakehouse.metrics import StatsD
from lakehouse.registry import RegistryUnavailableError
from lakehouse.settings import Settings
from lakehouse.silver import rules
from lakehouse.silver.tasks import (
    RECHECK_PASSED,
    RECHECK_REASON,
    RESULT_DDL,
    BatchContext,
    TableTarget,
    decode_files,
    run_task,
)
from lakehouse.silver.transform import LINEAGE, SOURCE_COLUMNS, from_bronze
from lakehouse.silver.writer import appended_rows, batch_tag, commit_tagged, tagged_snapshot
from lakehouse.streaming import Target, TargetProgress, await_target, ensure_initial_offset, upstream_target

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger(__name__)

METRIC = "silver"
QUERY_ID_PROPERTY = "sql.streaming.queryId"  # Spark sets it on the thread running foreachBatch


class SilverRunError(RuntimeError):
    """The Silver streaming query failed; the message carries the first line of the cause."""


class SilverConcurrentWriterError(SilverRunError, ConcurrentWriterError):
    """Another Silver run of the same exchange committed a batch this run was processing, or wrote
    its checkpoint entry, first; nothing of that batch was written twice."""


class InjectedFault(RuntimeError):
    """Raised on purpose by LAKEHOUSE_SILVER_FAULT_INJECTION (kill-and-retry tests)."""


@dataclass(frozen=True)
class BatchStats:
    batch_id: int
    read: int
    valid: int
    dead_lettered: dict[str, int]
    duration_s: float
    wrote_silver: bool
    wrote_dlq: bool

    @property
    def dead(self) -> int:
        return sum(self.dead_lettered.values())


@dataclass
class RunSummary:
    exchange: str
    batches: list[BatchStats] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def read(self) -> int:
        return sum(b.read for b in self.batches)

    @property
    def valid(self) -> int:
        return sum(b.valid for b in self.batches)

    @property
    def dead_lettered(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for b in self.batches:
            total.update(b.dead_lettered)
        return dict(total)

    @property
    def dlq_rate(self) -> float:
        return (self.read - self.valid) / self.read if self.read else 0.0


def _inject(settings: Settings, point: str) -> None:
    if settings.silver_fault_injection == point:
        raise InjectedFault(f"LAKEHOUSE_SILVER_FAULT_INJECTION={point}: failing the batch on purpose")


def process_batch(bronze_rows: DataFrame, settings: Settings, exchange: str, tag: str) -> BatchStats:
    """Silver rows, then dead-letter rows of one micro-batch, each table committed at most once per ``tag``.

    The tasks decode and validate every row once and write both tables' data files
    (:mod:`lakehouse.silver.tasks`); the driver then commits the Silver files, then the
    dead-letter files, each commit tagged with ``tag`` and the batch's dead-letter counts. A
    retried batch skips every table whose commit exists; when only the Silver commit exists, the
    rows it lacks (a join on lineage) are dead-lettered. Raises :class:`SilverConcurrentWriterError`
    when another run commits the same batch first (each commit is a compare-and-set on the tag).
    """
    started = time.monotonic()
    now = dt.datetime.now(dt.timezone.utc)
    catalog = load_catalog(settings)
    silver = catalog.load_table(names.silver_table(exchange))
    dlq = catalog.load_table(names.DLQ_TABLE)
    silver_snap, dlq_snap = tagged_snapshot(silver, tag), tagged_snapshot(dlq, tag)
    source = from_bronze(bronze_rows)
    context = BatchContext(settings=settings, rules=rules.for_settings(settings),
                           bronze_source=names.bronze_table(exchange),
                           silver=TableTarget.of(silver), dlq=None if dlq_snap else TableTarget.of(dlq),
                           now_us=int(now.timestamp() * 1_000_000), rows_per_file=settings.silver_rows_per_file)
    wrote_silver = wrote_dlq = False
    dead = _committed_dead(bronze_rows.sparkSession, settings, dlq_snap) if dlq_snap is not None else None
    if silver_snap is None:
        with runreport.phase("work"):
            result = _run_tasks(source, context)
        valid = result.valid
        dead = result.dead if dead is None else dead
        properties = {names.SILVER_BATCH_PROPERTY: tag, names.SILVER_DEAD_PROPERTY: json.dumps(result.dead)}
        if result.silver_files:
            with runreport.phase("commit"):
                _commit(silver, result.silver_files, properties, exchange)
            wrote_silver = True
        _inject(settings, "after_silver")
        if dlq_snap is None and result.dlq_files:
            with runreport.phase("commit"):
                _commit(dlq, result.dlq_files, properties, exchange)
            wrote_dlq = True
    else:
        valid = int(silver_snap.summary.get("added-records") or 0) if silver_snap.summary else 0
        _inject(settings, "after_silver")
        expected = _dead_counts(silver_snap)
        if dead is None and expected == {}:
            dead = {}
        elif dead is None:  # the Silver commit exists, the dead-letter one does not
            dead = _write_dlq(_not_in_silver(source, settings, names.silver_table(exchange), silver_snap),
                              settings, exchange, tag, now)
            wrote_dlq = bool(dead)
            if expected is not None and dead != expected:
                log.warning("dead-letter rows differ from the rows that failed the Silver pass",
                            extra={"exchange": exchange, "batch_tag": tag, "failed": expected, "dead_lettered": dead})
    _inject(settings, "after_both")
    return BatchStats(batch_id=int(tag.rsplit(":", 1)[1]), read=valid + sum(dead.values()), valid=valid,
                      dead_lettered=dead, duration_s=time.monotonic() - started,
                      wrote_silver=wrote_silver, wrote_dlq=wrote_dlq)


def _commit(table: Table, data_files: Sequence[DataFile], properties: Mapping[str, str], exchange: str) -> None:
    """The batch's tagged commit to ``table``; losing it to another run is a :class:`SilverConcurrentWriterError`."""
    try:
        commit_tagged(table, data_files, {**properties, names.SILVER_EXCHANGE_PROPERTY: exchange})
    except TagCommittedError as err:
        raise SilverConcurrentWriterError(
            f"another Silver run of {exchange} committed batch {properties[names.SILVER_BATCH_PROPERTY]} to "
            f"{'.'.join(table.name())} first (snapshot {err.snapshot_id}); nothing of it was written twice") from err


@dataclass(frozen=True)
class TaskResults:
    valid: int
    dead: dict[str, int]
    silver_files: list[DataFile]
    dlq_files: list[DataFile]


def _run_tasks(rows: DataFrame, context: BatchContext) -> TaskResults:
    """Run :func:`lakehouse.silver.tasks.run_task` over ``rows`` and gather what the tasks wrote."""
    results = rows.select(*SOURCE_COLUMNS).mapInArrow(functools.partial(run_task, ctx=context), RESULT_DDL).collect()
    dead: Counter[str] = Counter()
    for row in results:
        dead.update(json.loads(row["dead"]))
    return TaskResults(valid=sum(int(row["valid"]) for row in results), dead=dict(dead),
                       silver_files=[f for row in results for f in decode_files(row["silver_files"])],
                       dlq_files=[f for row in results for f in decode_files(row["dlq_files"])])


def _dead_counts(snap: Snapshot) -> dict[str, int] | None:
    """The batch's dead-letter counts recorded on its commit (None if not recorded)."""
    raw = snap.summary.get(names.SILVER_DEAD_PROPERTY) if snap.summary is not None else None
    return {str(k): int(v) for k, v in json.loads(raw).items()} if raw else None


def _committed_dead(spark: SparkSession, settings: Settings, dlq_snap: Snapshot) -> dict[str, int]:
    """Dead-letter counts of a batch's dead-letter commit (counted from its rows if not recorded)."""
    counts = _dead_counts(dlq_snap)
    if counts is None:
        rows = appended_rows(spark, settings, names.DLQ_TABLE, dlq_snap).groupBy("error_type").count().collect()
        counts = {row["error_type"]: int(row["count"]) for row in rows}
    return counts


def _not_in_silver(source: DataFrame, settings: Settings, table: str, silver_snap: Snapshot) -> DataFrame:
    """The rows of ``source`` that the batch's Silver commit did not append: the failing ones."""
    appended = appended_rows(source.sparkSession, settings, table, silver_snap).select(*LINEAGE)
    return source.join(appended, list(LINEAGE), "left_anti")


def _write_dlq(candidates: DataFrame, settings: Settings, exchange: str, tag: str,
               now: dt.datetime) -> dict[str, int]:
    """Dead-letter every row of ``candidates`` (rows a Silver commit lacks) in one commit tagged ``tag``.

    A row that passes validation now failed a moment ago (a writer schema got registered in
    between): it is not in Silver, so it is dead-lettered as ``passed_on_recheck`` for
    ``lakehouse dlq replay``.
    """
    dlq = load_catalog(settings).load_table(names.DLQ_TABLE)
    context = BatchContext(settings=settings, rules=rules.for_settings(settings),
                           bronze_source=names.bronze_table(exchange),
                           silver=None, dlq=TableTarget.of(dlq), now_us=int(now.timestamp() * 1_000_000),
                           rows_per_file=settings.silver_rows_per_file, recheck=True)
    result = _run_tasks(candidates, context)
    if result.dlq_files:
        _commit(dlq, result.dlq_files, {names.SILVER_BATCH_PROPERTY: tag,
                                        names.SILVER_DEAD_PROPERTY: json.dumps(result.dead)}, exchange)
    return result.dead


def report_batch(stats: BatchStats, exchange: str, statsd: StatsD) -> None:
    """One structured log line and the StatsD metrics of a micro-batch."""
    rate = stats.dead / stats.read if stats.read else 0.0
    tags = {"exchange": exchange}
    log.info("silver batch", extra={"exchange": exchange, "batch_id": stats.batch_id, "records_read": stats.read,
                                    "records_valid": stats.valid, "records_dead_lettered": stats.dead,
                                    "dead_lettered_by_type": stats.dead_lettered, "dlq_rate": round(rate, 6),
                                    "duration_s": round(stats.duration_s, 3), "wrote_silver": stats.wrote_silver,
                                    "wrote_dlq": stats.wrote_dlq})
    statsd.incr(f"{METRIC}.records_read", stats.read, tags)
    statsd.incr(f"{METRIC}.records_valid", stats.valid, tags)
    for error_type, n in stats.dead_lettered.items():
        statsd.incr(f"{METRIC}.records_dead_lettered", n, {**tags, "error_type": error_type})
    statsd.gauge(f"{METRIC}.batch_dlq_rate", rate, tags)
    statsd.timing(f"{METRIC}.batch_duration_ms", stats.duration_s * 1000, tags)


def report_run(summary: RunSummary, statsd: StatsD) -> None:
    tags = {"exchange": summary.exchange}
    log.info("silver run finished", extra={"exchange": summary.exchange, "batches": len(summary.batches),
                                           "records_read": summary.read, "records_valid": summary.valid,
                                           "dead_lettered_by_type": summary.dead_lettered,
                                           "dlq_rate": round(summary.dlq_rate, 6),
                                           "duration_s": round(summary.duration_s, 3)})
    statsd.gauge(f"{METRIC}.run_records_read", summary.read, tags)
    statsd.gauge(f"{METRIC}.run_records_valid", summary.valid, tags)
    for error_type, n in summary.dead_lettered.items():
        statsd.gauge(f"{METRIC}.run_records_dead_lettered", n, {**tags, "error_type": error_type})
    statsd.gauge(f"{METRIC}.dlq_rate", summary.dlq_rate, tags)
    statsd.timing(f"{METRIC}.run_duration_ms", summary.duration_s * 1000, tags)


def describe_run(summary: RunSummary) -> tuple[str, int, dict[str, object]]:
    """One exchange's entry of the run report (:mod:`lakehouse.runreport`)."""
    return ("committed" if summary.read else "noop", summary.read,
            {"valid": summary.valid, "dead_lettered": summary.dead_lettered, "batches": len(summary.batches),
             "dlq_rate": round(summary.dlq_rate, 6), "duration_s": round(summary.duration_s, 3)})


def bronze_target(settings: Settings, exchange: str) -> Target | None:
    """The newest append snapshot in Bronze's current history: where this run ends."""
    return upstream_target(settings, names.bronze_table(exchange))


_PY_ERROR_LINE = re.compile(r"^([a-z_][\w]*\.)*[A-Z]\w*(Error|Exception|Fault): ")


def _cause_line(text: str) -> str:
    """The Python exception line (``module.SomeError: message``) closest to the root of a query failure."""
    lines = [ln.strip() for ln in text.splitlines()]
    python = [ln for ln in lines if _PY_ERROR_LINE.match(ln) and not ln.startswith(("org.", "java.", "py4j."))]
    return python[-1] if python else next((ln for ln in lines if ln), "unknown error")


def _failure(err: Exception, exchange: str, raised: ConcurrentWriterError | None = None) -> Exception:
    """The run's error: a lost race with another run of the same checkpoint (the batch's commit,
    ``raised`` by foreachBatch, or a checkpoint file) is a :class:`SilverConcurrentWriterError`; a
    registry outage keeps its type (retry later); anything else is a SilverRunError."""
    if raised is not None:
        return raised
    logged = concurrent_checkpoint_write(err)
    if logged is not None:
        return SilverConcurrentWriterError(f"another Silver run of {exchange} uses the same checkpoint and wrote "
                                           f"its entry first; nothing was written twice: {logged.line[:300]}")
    text = str(err)
    cause = _cause_line(text)
    if RegistryUnavailableError.__name__ in text:
        line = next((ln.strip() for ln in text.splitlines() if RegistryUnavailableError.__name__ + ":" in ln), cause)
        return RegistryUnavailableError(f"Silver run failed, schema registry unavailable: {line[:500]}")
    return SilverRunError(f"Silver streaming query failed: {cause[:500]}")


def run(spark: SparkSession, settings: Settings, exchange: str) -> RunSummary:
    """Process every Bronze row of ``exchange`` committed before the run started; return the counts.

    Raises :class:`~lakehouse.registry.RegistryUnavailableError` when the schema registry cannot
    be reached, :class:`SilverConcurrentWriterError` when another run of the same exchange
    committed a batch of this run first, and :class:`SilverRunError` for any other failure of the
    query; nothing of a failed batch is committed to the checkpoint, so the next run retries it.
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


def _stream(spark: SparkSession, settings: Settings, exchange: str, target: Target, summary: RunSummary,
            statsd: StatsD) -> None:
    """Run the streaming query until the target is consumed (see :class:`_Progress`)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    progress = TargetProgress(settings, names.bronze_table(exchange), target)
    checkpoint = names.checkpoint(settings, "silver", exchange)
    lost: list[ConcurrentWriterError] = []  # a batch's lost race, kept whole (the query only has its text)

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        query_id = batch_df.sparkSession.sparkContext.getLocalProperty(QUERY_ID_PROPERTY)
        if not query_id:
            raise SilverRunError("no streaming query id on the foreachBatch thread")
        try:
            stats = process_batch(batch_df, settings, exchange, batch_tag(query_id, batch_id))
        except ConcurrentWriterError as err:
            lost.append(err)
            raise
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
        .foreachBatch(progress.bounded(handle, checkpoint)))
    ensure_initial_offset(settings, names.bronze_table(exchange), checkpoint)
    try:
        query: StreamingQuery = stream.start()
    except (Py4JJavaError, PySparkException) as err:
        if concurrent_checkpoint_write(err) is None:
            raise
        raise _failure(err, exchange) from err  # another run created the new checkpoint just now
    await_target(query, progress, settings.silver_poll_interval_s,
                 lambda err: _failure(err, exchange, lost[0] if lost else None))


__all__ = ["RECHECK_PASSED", "RECHECK_REASON", "BatchStats", "InjectedFault", "RunSummary",
           "SilverConcurrentWriterError", "SilverRunError",
           "bronze_target", "describe_run", "process_batch", "run"]
