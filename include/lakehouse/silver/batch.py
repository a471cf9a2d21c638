"""The commit protocol of one Silver micro-batch: each table's files committed at most once per batch.

The batch's Spark tasks decode and validate every row once and write the Silver and dead-letter
data files themselves (:mod:`lakehouse.silver.tasks`); the driver commits each table's files in one
commit tagged with the batch (:func:`process_batch`), so a retried batch skips what is committed.
Two runs sharing the checkpoint may process the same batch at once: the tagged commit is a
compare-and-set, so the second writer of a batch commits nothing and fails with
:class:`~lakehouse.silver.failures.SilverConcurrentWriterError`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakehouse import names, runreport
from lakehouse.catalog import TagCommittedError, load_catalog
from lakehouse.settings import Settings
from lakehouse.silver import rules
from lakehouse.silver.failures import InjectedFault, SilverConcurrentWriterError
from lakehouse.silver.reporting import SilverBatchStats
from lakehouse.silver.tasks import RESULT_DDL, BatchContext, TableTarget, decode_files, run_task
from lakehouse.silver.transform import LINEAGE, SOURCE_COLUMNS, from_bronze
from lakehouse.silver.writer import appended_rows, commit_tagged, tagged_snapshot

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


def _inject(settings: Settings, point: str) -> None:
    if settings.silver_fault_injection == point:
        raise InjectedFault(f"LAKEHOUSE_SILVER_FAULT_INJECTION={point}: failing the batch on purpose")


def process_batch(bronze_rows: DataFrame, settings: Settings, exchange: str, tag: str) -> SilverBatchStats:
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
    context = batch_context(settings, exchange, silver, None if dlq_snap else dlq, now)
    wrote_silver = wrote_dlq = False
    dead = _committed_dead(bronze_rows.sparkSession, settings, dlq_snap) if dlq_snap is not None else None
    if silver_snap is None:
        with runreport.phase("work"):
            result = run_tasks(source, context)
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
    return SilverBatchStats(batch_id=int(tag.rsplit(":", 1)[1]), read=valid + sum(dead.values()), valid=valid,
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


def batch_context(settings: Settings, exchange: str, silver: Table | None, dlq: Table | None, now: dt.datetime,
                  recheck: bool = False) -> BatchContext:
    """The instructions to a batch's tasks: write the tables given (None: that table's commit of
    the batch exists), with the settings' rules, stamped ``now``."""
    return BatchContext(settings=settings, rules=rules.for_settings(settings),
                        bronze_source=names.bronze_table(exchange),
                        silver=None if silver is None else TableTarget.of(silver),
                        dlq=None if dlq is None else TableTarget.of(dlq), now_us=int(now.timestamp() * 1_000_000),
                        rows_per_file=settings.silver_rows_per_file, recheck=recheck)


@dataclass(frozen=True)
class TaskResults:
    """What a batch's tasks did: the counts and each table's data files, not committed yet."""

    valid: int
    dead: dict[str, int]
    silver_files: list[DataFile]
    dlq_files: list[DataFile]


def run_tasks(rows: DataFrame, context: BatchContext) -> TaskResults:
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
    context = batch_context(settings, exchange, None, dlq, now, recheck=True)
    result = run_tasks(candidates, context)
    if result.dlq_files:
        _commit(dlq, result.dlq_files, {names.SILVER_BATCH_PROPERTY: tag,
                                        names.SILVER_DEAD_PROPERTY: json.dumps(result.dead)}, exchange)
    return result.dead


__all__ = ["TaskResults", "batch_context", "process_batch", "run_tasks"]
