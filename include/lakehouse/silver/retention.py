"""Dead-letter retention: rows stay hot in the DLQ, then move to the archive, then are purged.

* **Archive** (``lakehouse dlq archive``): DLQ rows with ``dlq_date`` before ``as_of`` minus
  ``LAKEHOUSE_DLQ_ARCHIVE_DAYS`` are inserted into ``silver_dlq_trades_archive`` unless the archive
  holds them already (anti-join on :data:`ROW_KEY`), then deleted from the DLQ by whole
  ``dlq_date`` partitions (a metadata-only delete). A run killed between the two commits leaves the
  rows in both tables; the rerun inserts nothing and deletes them: nothing lost, nothing doubled.
* **Purge** (``lakehouse dlq purge``): archive rows with ``dlq_date`` before ``as_of`` minus
  ``LAKEHOUSE_DLQ_PURGE_DAYS`` are deleted: whole months by a metadata-only delete, the rows of the
  month the cutoff falls in by a copy-on-write rewrite of that month's files. Then the snapshots
  that still reference removed files are expired so their files are deleted from storage: every
  older archive snapshot, and DLQ snapshots older than ``as_of`` minus :data:`DLQ_SNAPSHOT_SETTLE`
  when a removed DLQ file holds rows past the purge cutoff. Nothing streams from either table; the
  settle window keeps the recent DLQ commits a retried Silver batch looks for.

Cut-offs are whole UTC days on ``dlq_date`` (the identity partition), so the DLQ delete always
matches whole partitions. A second run on the same day finds nothing to do and commits nothing
but its audit row. Do not run ``lakehouse dlq replay`` at the same time: a row it marks between
the archive insert and the DLQ delete would be archived unmarked.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lakehouse import names, tables
from lakehouse.catalog import load_catalog
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
STEPS = ("archive", "purge")
AUDIT_EVENT = "dlq_retention"
# One dead-letter row: its Bronze record and when it was first dead-lettered (a replay rewrites
# error_type and the replayed flag of a row but keeps these).
ROW_KEY = ("bronze_source", "bronze_topic", "bronze_partition", "bronze_offset", "raw_bytes", "dlq_timestamp")
# DLQ snapshots younger than this are never expired: a Silver batch retried after a kill finds its
# dead-letter commit by the snapshot it made.
DLQ_SNAPSHOT_SETTLE = dt.timedelta(hours=1)


class RetentionError(ValueError):
    """A retention request that cannot be carried out (bad time, bad settings)."""


@dataclass(frozen=True)
class Cutoffs:
    """What one run keeps: DLQ rows from ``archive_before`` on, archive rows from ``purge_before`` on."""

    as_of: dt.datetime
    archive_before: dt.date
    purge_before: dt.date

    @property
    def whole_months_before(self) -> dt.date:
        """First day of the cutoff's month: archive months before it are purged whole."""
        return self.purge_before.replace(day=1)

    def snapshots_older_than(self, now: dt.datetime) -> dt.datetime:
        """Archive snapshots before this are expired (the later of ``as_of`` and the real time)."""
        return max(self.as_of, now)

    def dlq_snapshots_older_than(self, now: dt.datetime) -> dt.datetime:
        return self.snapshots_older_than(now) - DLQ_SNAPSHOT_SETTLE


def cutoffs(as_of: dt.datetime, archive_days: int, purge_days: int) -> Cutoffs:
    """Cut-offs of a run at ``as_of``: rows dated ``days`` or more UTC days before its date are past them."""
    if as_of.tzinfo is None:
        raise RetentionError(f"as-of time {as_of.isoformat()} has no time zone")
    if archive_days < 1 or purge_days <= archive_days:
        raise RetentionError(f"need 1 <= archive days ({archive_days}) < purge days ({purge_days})")
    today = as_of.astimezone(UTC).date()
    return Cutoffs(as_of=as_of.astimezone(UTC), archive_before=today - dt.timedelta(days=archive_days),
                   purge_before=today - dt.timedelta(days=purge_days))


def settings_cutoffs(settings: Settings, as_of: dt.datetime | None = None) -> Cutoffs:
    return cutoffs(as_of or dt.datetime.now(UTC), settings.dlq_archive_days, settings.dlq_purge_days)


@dataclass
class RetentionResult:
    """What one run moved, deleted and freed (all zero for a run with nothing to do)."""

    cut: Cutoffs
    steps: tuple[str, ...]
    dry_run: bool = False
    archived: int = 0  # rows that left the DLQ (they are in the archive)
    inserted: int = 0  # of them, rows this run inserted into the archive (fewer after a killed run)
    purged: int = 0
    purged_by_month: int = 0  # of them, rows removed by metadata-only whole-month deletes
    files_freed: int = 0
    bytes_freed: int = 0
    archived_by_date: dict[str, int] = field(default_factory=dict)
    purged_by_date: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"as_of": self.cut.as_of.isoformat(), "archive_before": self.cut.archive_before.isoformat(),
                "purge_before": self.cut.purge_before.isoformat(), "steps": list(self.steps),
                "dry_run": self.dry_run, "archived": self.archived, "inserted": self.inserted,
                "purged": self.purged, "purged_by_month": self.purged_by_month,
                "files_freed": self.files_freed, "bytes_freed": self.bytes_freed,
                "archived_by_date": self.archived_by_date, "purged_by_date": self.purged_by_date}


def _date(d: dt.date) -> str:
    return f"DATE '{d.isoformat()}'"


def _timestamp(t: dt.datetime) -> str:
    return f"TIMESTAMP '{t.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}'"  # session time zone is UTC


def _by_date(rows: DataFrame) -> dict[str, int]:
    return {r["dlq_date"].isoformat(): int(r["count"]) for r in rows.groupBy("dlq_date").count().collect()}


def _pinned(spark: SparkSession, settings: Settings, table: str) -> DataFrame:
    """``table`` at its current snapshot, so counting and writing a frame later read the same rows."""
    snapshot_id = load_catalog(settings).load_table(table).metadata.current_snapshot_id
    reader = spark.read if snapshot_id is None else spark.read.option("snapshot-id", snapshot_id)
    return reader.table(names.qualified(settings, table))


def _not_archived(spark: SparkSession, settings: Settings, old: DataFrame, cut: Cutoffs) -> DataFrame:
    """Rows of ``old`` the archive does not hold yet (NULL-safe on every key column)."""
    archived = (_pinned(spark, settings, names.DLQ_ARCHIVE_TABLE)
                .where(f"dlq_date < {_date(cut.archive_before)}").select(*ROW_KEY))
    cond = [old[c].eqNullSafe(archived[c]) for c in ROW_KEY]
    return old.join(archived, cond, "left_anti")


def _insert_archive(settings: Settings, rows: DataFrame, now: dt.datetime) -> None:
    from pyspark.sql import functions as F

    cols = [c.name for c in tables.DLQ_ARCHIVE_DEF.columns]
    rows.withColumn("archived_at", F.lit(now).cast("timestamp")).select(*cols) \
        .writeTo(names.qualified(settings, names.DLQ_ARCHIVE_TABLE)).append()


def _delete_archived(spark: SparkSession, settings: Settings, cut: Cutoffs) -> None:
    """Drop whole ``dlq_date`` partitions before the cutoff from the DLQ: metadata-only."""
    spark.sql(f"DELETE FROM {names.qualified(settings, names.DLQ_TABLE)} "
              f"WHERE dlq_date < {_date(cut.archive_before)}")


def archive(spark: SparkSession, settings: Settings, result: RetentionResult) -> None:
    """Move DLQ rows dated before the archive cutoff into the archive (see the module doc)."""
    from pyspark import StorageLevel

    cut = result.cut
    old = _pinned(spark, settings, names.DLQ_TABLE).where(f"dlq_date < {_date(cut.archive_before)}")
    old = old.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        result.archived_by_date = _by_date(old)
        result.archived = sum(result.archived_by_date.values())
        if not result.archived:
            return
        missing = _not_archived(spark, settings, old, cut).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            result.inserted = missing.count()
            if result.dry_run:
                return
            if result.inserted:
                _insert_archive(settings, missing, dt.datetime.now(UTC))
        finally:
            missing.unpersist()
    finally:
        old.unpersist()
    _delete_archived(spark, settings, cut)
    log.info("dead letters archived: %s rows before %s (%s inserted)", result.archived, cut.archive_before,
             result.inserted)


def purge(spark: SparkSession, settings: Settings, result: RetentionResult) -> None:
    """Delete archive rows dated before the purge cutoff, then expire what still references them."""
    cut = result.cut
    table = names.qualified(settings, names.DLQ_ARCHIVE_TABLE)
    doomed = _pinned(spark, settings, names.DLQ_ARCHIVE_TABLE).where(f"dlq_date < {_date(cut.purge_before)}")
    result.purged_by_date = _by_date(doomed)
    result.purged = sum(result.purged_by_date.values())
    result.purged_by_month = sum(n for d, n in result.purged_by_date.items()
                                 if dt.date.fromisoformat(d) < cut.whole_months_before)
    if result.dry_run:
        return
    if result.purged_by_month:  # whole month partitions: metadata-only
        spark.sql(f"DELETE FROM {table} WHERE dlq_date < {_date(cut.whole_months_before)}")
    if result.purged > result.purged_by_month:  # part of the cutoff's month: copy-on-write of its files
        spark.sql(f"DELETE FROM {table} WHERE dlq_date >= {_date(cut.whole_months_before)} "
                  f"AND dlq_date < {_date(cut.purge_before)}")
    now = dt.datetime.now(UTC)
    for name, older_than, before in ((names.DLQ_ARCHIVE_TABLE, cut.snapshots_older_than(now), None),
                                     (names.DLQ_TABLE, cut.dlq_snapshots_older_than(now), cut.purge_before)):
        files, size = _expire(spark, settings, name, older_than, before)
        result.files_freed += files
        result.bytes_freed += size
    log.info("dead letters purged: %s rows before %s, %s files (%s bytes) freed", result.purged,
             cut.purge_before, result.files_freed, result.bytes_freed)


def _files(spark: SparkSession, settings: Settings, table: str, metadata: str,
           dated_before: dt.date | None = None) -> dict[str, int]:
    """Path -> size of the table's data and delete files (``files``: current; ``all_files``: any snapshot)."""
    rows = spark.table(f"{names.qualified(settings, table)}.{metadata}")
    if dated_before is not None:
        rows = rows.where(f"partition.dlq_date < {_date(dated_before)}")
    return {r["file_path"]: int(r["file_size_in_bytes"])
            for r in rows.select("file_path", "file_size_in_bytes").distinct().collect()}


def _expire(spark: SparkSession, settings: Settings, table: str, older_than: dt.datetime,
            dated_before: dt.date | None) -> tuple[int, int]:
    """Expire the table's snapshots before ``older_than`` when some file only they reference exists
    (with ``dated_before``: a file of rows dated before it); return the files and bytes deleted."""
    referenced = _files(spark, settings, table, "all_files")
    current = _files(spark, settings, table, "files")
    stale = set(referenced) - set(current)
    if dated_before is not None:
        stale &= set(_files(spark, settings, table, "all_files", dated_before))
    if not stale:
        return 0, 0
    spark.sql(f"CALL {settings.catalog_name}.system.expire_snapshots(table => '{table}', "
              f"older_than => {_timestamp(older_than)}, retain_last => 1)")
    left = _files(spark, settings, table, "all_files")
    freed = [p for p in referenced if p not in left]
    return len(freed), sum(referenced[p] for p in freed)


def _audit(spark: SparkSession, settings: Settings, result: RetentionResult) -> None:
    """One pipeline_audit row per run: what moved, what was deleted, what storage was freed."""
    row = (dt.datetime.now(UTC), "silver", names.DLQ_TABLE, AUDIT_EVENT,
           json.dumps(result.as_dict(), sort_keys=True, default=str))
    spark.createDataFrame([row], tables.spark_schema(tables.AUDIT_DEF)) \
        .writeTo(names.qualified(settings, names.AUDIT_TABLE)).append()


def run(spark: SparkSession, settings: Settings, steps: tuple[str, ...] = STEPS, as_of: dt.datetime | None = None,
        dry_run: bool = False) -> RetentionResult:
    """Run ``steps`` (archive, then purge) as of ``as_of`` (default now); a dry run only counts."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise RetentionError(f"unknown retention step {unknown[0]!r}; expected {', '.join(STEPS)}")
    result = RetentionResult(cut=settings_cutoffs(settings, as_of), steps=tuple(s for s in STEPS if s in steps),
                             dry_run=dry_run)
    if "archive" in steps:
        archive(spark, settings, result)
    if "purge" in steps:
        purge(spark, settings, result)
    if not dry_run:
        _audit(spark, settings, result)
    return result


__all__ = ["AUDIT_EVENT", "Cutoffs", "RetentionError", "RetentionResult", "cutoffs", "run", "settings_cutoffs"]
