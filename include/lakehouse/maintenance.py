"""Iceberg table maintenance: compaction, manifest rewrite, snapshot expiry, orphan file removal.

Every operation is one of Iceberg's own Spark procedures; this module decides their arguments.
The decisions are pure functions of plain values (unit-tested); :func:`maintain` reads the
tables and the streams' checkpoints and runs the procedures.

Why expiry is held back: Silver reads Bronze and Gold reads Silver as Iceberg streams. A stream
resumes from the snapshot its checkpoint names and walks main's history forward from it; when
that snapshot was expired the stream fails on every run from then on. So expiry never removes a
snapshot at or after the oldest position a downstream stream still needs (including the start
of a batch that was planned but not committed), whatever the retention says. (A stream run with
``trigger(availableNow=True)`` would also need its *initial* snapshot and everything after it:
Iceberg recomputes each run's end from there. Neither layer uses that trigger, see
:mod:`lakehouse.streaming`.) It also keeps the newest snapshot carrying Bronze's Kafka offsets, and the snapshot of a Silver batch that is in
flight (its retry looks for its tag in main's history).

Orphan files are judged by the real clock even when acting "as of" a later time: a file a
running job is writing right now must never look old.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import DateType, IntegerType, LongType, TimestampType, TimestamptzType

from lakehouse import names
from lakehouse.orchestration.pending import batch_ids, initial_offset_file, local_dir
from lakehouse.settings import Settings
from lakehouse.tables import TableDef, table_defs

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

OPERATIONS = ("compact", "manifests", "expire", "orphans")
# A big table is compacted in bounded steps: each file group commits on its own, at most this many commits a run.
PARTIAL_PROGRESS_MAX_COMMITS = 10
# Bytes of input one rewrite group handles (bounded memory and time per step).
MAX_FILE_GROUP_BYTES = 1024 * 1024 * 1024


class MaintenanceError(Exception):
    """A maintenance operation failed or was refused; the message says which table and why."""


# --- pure planning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotInfo:
    """What planning needs of one snapshot."""

    snapshot_id: int
    timestamp_ms: int
    summary: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hold:
    """A snapshot expiry must keep, and why."""

    snapshot_id: int
    reason: str


@dataclass(frozen=True)
class ExpiryPlan:
    """``older_than`` for expire_snapshots and what was kept back from the retention cutoff."""

    older_than: dt.datetime
    cutoff: dt.datetime
    kept_back: tuple[tuple[Hold, dt.datetime], ...]  # holds older than the cutoff, with their time
    candidates: tuple[int, ...]  # snapshots expiry may remove (main's history; refs' heads excluded)


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def retention_cutoff(as_of: dt.datetime, retention_hours: float) -> dt.datetime:
    """Snapshots committed before this are past retention."""
    return as_of - dt.timedelta(hours=retention_hours)


def orphan_cutoff(as_of: dt.datetime, real_now: dt.datetime, min_age_hours: float) -> dt.datetime:
    """Unreferenced files last modified before this may be deleted.

    Measured from the earlier of ``as_of`` and the real clock: acting as of a later date must not
    make a file written a second ago look old.
    """
    return min(as_of, real_now) - dt.timedelta(hours=min_age_hours)


def plan_expiry(history: Sequence[SnapshotInfo], holds: Iterable[Hold], cutoff: dt.datetime, retain_last: int,
                ref_heads: Iterable[int] = ()) -> ExpiryPlan:
    """Move the cutoff back to the oldest held snapshot, so it and everything after it stay.

    ``history``: the table's snapshots, any order. A hold naming a snapshot not in ``history``
    protects nothing (it is gone already); the caller reports it. Along main's history commit
    times only grow (a commit is stamped after its parent exists), so "at or after the held
    snapshot's time" keeps the held snapshot and every descendant.
    """
    by_id = {s.snapshot_id: s for s in history}
    older_than = cutoff
    kept: list[tuple[Hold, dt.datetime]] = []
    for hold in holds:
        snap = by_id.get(hold.snapshot_id)
        if snap is None:
            continue
        at = _utc(snap.timestamp_ms)
        if at < cutoff:
            kept.append((hold, at))
        older_than = min(older_than, at)
    newest_first = sorted(history, key=lambda s: (s.timestamp_ms, s.snapshot_id), reverse=True)
    retained = {s.snapshot_id for s in newest_first[:max(retain_last, 1)]} | set(ref_heads)
    limit_ms = older_than.timestamp() * 1000
    candidates = tuple(s.snapshot_id for s in reversed(newest_first)
                       if s.timestamp_ms < limit_ms and s.snapshot_id not in retained)
    return ExpiryPlan(older_than, cutoff, tuple(sorted(kept, key=lambda k: k[1])), candidates)


def offsets_hold(main_history_newest_first: Sequence[SnapshotInfo]) -> Hold | None:
    """The newest snapshot on main carrying Bronze's committed Kafka offsets: it must outlive expiry
    (compaction commits carry no offsets, so it is not always the current one)."""
    for snap in main_history_newest_first:
        if names.BRONZE_OFFSETS_PROPERTY in snap.summary:
            return Hold(snap.snapshot_id, "newest snapshot carrying Bronze's Kafka offsets")
    return None


def tag_hold(history: Sequence[SnapshotInfo], tag: str) -> Hold | None:
    """The snapshot of an in-flight Silver batch (its retry looks for this tag)."""
    for snap in history:
        if snap.summary.get(names.SILVER_BATCH_PROPERTY) == tag:
            return Hold(snap.snapshot_id, f"Silver batch {tag} is not committed in its checkpoint yet")
    return None


def _sql_time(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def spark_timestamp(value: dt.datetime) -> str:
    """A Spark SQL TIMESTAMP literal (UTC)."""
    return f"TIMESTAMP '{_sql_time(value)}+00:00'"


@dataclass(frozen=True)
class ClosedPartitions:
    """The rows of partitions nothing writes to any more, as a Spark and a pyiceberg filter."""

    spark_where: str
    iceberg_filter: str
    grain: str  # "hour" or "day"


def closed_partitions(tdef: TableDef, now: dt.datetime) -> ClosedPartitions | None:
    """Partitions older than the current day (daily tables) or hour (tables partitioned by a date and
    an hour column). None when the table has no time partition (nothing is known to be closed)."""
    columns = {c.name: c.type for c in tdef.columns}
    now = now.astimezone(dt.timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    time_part = hour_col = None
    for column, transform in tdef.partition_by:
        col_type = columns.get(column)
        if isinstance(transform, DayTransform) and isinstance(col_type, (TimestampType, TimestamptzType)):
            time_part = time_part or (column, "timestamp")
        elif isinstance(transform, IdentityTransform) and isinstance(col_type, DateType):
            time_part = time_part or (column, "date")
        elif (isinstance(transform, IdentityTransform) and isinstance(col_type, (IntegerType, LongType))
              and column.endswith("_hour")):
            hour_col = column
    if time_part is None:
        return None
    column, kind = time_part
    if kind == "timestamp":
        return ClosedPartitions(f"{column} < {spark_timestamp(day)}",
                                f"{column} < '{day.isoformat()}'", "day")
    date = day.date().isoformat()
    if hour_col is None:
        return ClosedPartitions(f"{column} < DATE '{date}'", f"{column} < '{date}'", "day")
    return ClosedPartitions(
        f"{column} < DATE '{date}' OR ({column} = DATE '{date}' AND {hour_col} < {now.hour})",
        f"{column} < '{date}' or ({column} = '{date}' and {hour_col} < {now.hour})", "hour")


def rewrite_options(target_file_size: int | None = None) -> dict[str, str]:
    """rewrite_data_files options: partial progress (bounded steps), small groups rewritten too."""
    options = {
        "partial-progress.enabled": "true",
        "partial-progress.max-commits": str(PARTIAL_PROGRESS_MAX_COMMITS),
        "max-file-group-size-bytes": str(MAX_FILE_GROUP_BYTES),
        # A closed partition with two small files is worth one: the default (5) leaves hours of them.
        "min-input-files": "2",
    }
    if target_file_size:
        options["target-file-size-bytes"] = str(target_file_size)
    return options


def _spark_map(options: Mapping[str, str]) -> str:
    return "map(" + ", ".join(f"'{k}', '{v}'" for k, v in options.items()) + ")"


# --- stream positions ---------------------------------------------------------------------------


class PositionUnknown(Exception):
    """A checkpoint's needed position cannot be read: expiry of its table is skipped."""


def _offset_snapshot(path: Path) -> int | None:
    """The Iceberg snapshot id in one offsets (or initial offset) file."""
    for line in reversed([ln for ln in path.read_text().splitlines() if ln.strip()]):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "snapshot_id" in value:
            return int(value["snapshot_id"])
    return None


@dataclass(frozen=True)
class StreamNeeds:
    """What one downstream stream still needs of its source table."""

    snapshot_ids: tuple[int, ...]  # positions it may resume or re-run from
    query_id: str | None
    in_flight_batch: int | None  # planned, not committed
    initial_snapshot: int | None = None  # where the stream started (Iceberg's initial offset file)


def stream_needs(checkpoint_uri: str) -> StreamNeeds:
    """Snapshots a stream may start its next batch from: the end of its last committed batch and the
    start of a planned-but-uncommitted one (re-run from its start). Raises :class:`PositionUnknown`
    when the checkpoint cannot be read (not local, unreadable)."""
    directory = local_dir(checkpoint_uri)
    if directory is None:
        raise PositionUnknown(f"checkpoint {checkpoint_uri} is not on a local file system")
    try:
        metadata = directory / "metadata"
        query_id = json.loads(metadata.read_text()).get("id") if metadata.exists() else None
        initial_file = initial_offset_file(directory)
        initial = _offset_snapshot(initial_file) if initial_file.exists() else None
        offsets, commits = batch_ids(directory / "offsets"), batch_ids(directory / "commits")
        last_commit = commits[-1] if commits else None
        in_flight = offsets[-1] if offsets and (last_commit is None or offsets[-1] > last_commit) else None
        files: list[Path] = []
        if last_commit is not None:
            files.append(directory / "offsets" / str(last_commit))
        if in_flight is not None:
            # The planned batch re-runs from the end of the batch before it (or the initial offset).
            before = [b for b in offsets if b < in_flight]
            files.append(directory / "offsets" / str(before[-1]) if before else initial_file)
        ids = []
        for path in files:
            snapshot = _offset_snapshot(path) if path.exists() else None
            if snapshot is None:
                raise PositionUnknown(f"no stream offset in {path}")
            ids.append(snapshot)
    except (OSError, ValueError, AttributeError) as err:
        raise PositionUnknown(f"unreadable checkpoint {checkpoint_uri}: {err}") from err
    return StreamNeeds(tuple(ids), query_id, in_flight, initial)


@dataclass(frozen=True)
class Reader:
    """A stream reading a table: its name and checkpoint. Both layers' streams run with a
    processing-time trigger (:mod:`lakehouse.streaming`), so each needs only its position."""

    stream: str
    checkpoint: str


def downstream_readers(settings: Settings) -> dict[str, list[Reader]]:
    """Table -> every stream reading it."""
    readers: dict[str, list[Reader]] = {}
    for exchange in settings.exchanges:
        readers.setdefault(names.bronze_table(exchange), []).append(
            Reader(f"silver {exchange}", names.checkpoint(settings, "silver", exchange)))
        readers.setdefault(names.silver_table(exchange), []).append(
            Reader(f"gold {exchange}", names.gold_checkpoint(settings, exchange)))
    return readers


def reader_holds(reader: Reader, needs: StreamNeeds) -> list[Hold]:
    """The snapshots one stream needs, with why."""
    return [Hold(i, f"stream {reader.stream} has not read past it (checkpoint {reader.checkpoint})")
            for i in needs.snapshot_ids]


def silver_writers(settings: Settings) -> dict[str, list[str]]:
    """Table -> checkpoints of the Silver streams whose batches tag its commits."""
    writers: dict[str, list[str]] = {}
    for exchange in settings.exchanges:
        cp = names.checkpoint(settings, "silver", exchange)
        writers.setdefault(names.silver_table(exchange), []).append(cp)
        writers.setdefault(names.DLQ_TABLE, []).append(cp)
    return writers


# --- running --------------------------------------------------------------------------------------


@dataclass
class TableReport:
    """What maintenance did (or, dry-run, would do) to one table."""

    table: str
    dry_run: bool
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "dry_run": self.dry_run, "operations": self.operations}


def _history(table: Table) -> list[SnapshotInfo]:
    return [SnapshotInfo(s.snapshot_id, s.timestamp_ms, dict(s.summary.additional_properties) if s.summary else {})
            for s in table.metadata.snapshots]


def _main_history(table: Table) -> list[SnapshotInfo]:
    """Main's ancestors, newest first."""
    by_id = {s.snapshot_id: s for s in _history(table)}
    out: list[SnapshotInfo] = []
    snap = table.current_snapshot()
    while snap is not None and snap.snapshot_id in by_id:
        out.append(by_id[snap.snapshot_id])
        snap = table.metadata.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id else None
    return out


def expiry_holds(settings: Settings, table_name: str, table: Table) -> tuple[list[Hold], list[str]]:
    """Snapshots expiry must keep, and reasons to skip expiry altogether (unreadable positions)."""
    history = _history(table)
    known = {s.snapshot_id for s in history}
    holds: list[Hold] = []
    refusals: list[str] = []
    offsets = offsets_hold(_main_history(table)) if table_name.startswith(f"{names.NAMESPACE}.bronze_") else None
    if offsets is not None:
        holds.append(offsets)
    for reader in downstream_readers(settings).get(table_name, []):
        try:
            needs = stream_needs(reader.checkpoint)
        except PositionUnknown as err:
            refusals.append(f"position of stream {reader.stream} unknown ({err})")
            continue
        for hold in reader_holds(reader, needs):
            if hold.snapshot_id not in known:
                refusals.append(f"stream {reader.stream} needs snapshot {hold.snapshot_id}, which is no longer "
                                "in the table")
            else:
                holds.append(hold)
    for checkpoint in silver_writers(settings).get(table_name, []):
        try:
            needs = stream_needs(checkpoint)
        except PositionUnknown:
            continue  # nothing in flight can be read from it; the reader side refused if it matters
        if needs.query_id and needs.in_flight_batch is not None:
            hold = tag_hold(history, f"{needs.query_id}:{needs.in_flight_batch}")
            if hold is not None:
                holds.append(hold)
    return holds, refusals


def _call(spark: SparkSession, settings: Settings, procedure: str, args: Mapping[str, str]) -> list[dict[str, Any]]:
    sql = f"CALL {settings.catalog_name}.system.{procedure}(" + ", ".join(f"{k} => {v}" for k, v in args.items()) + ")"
    log.debug("running %s", sql)
    return [row.asDict() for row in spark.sql(sql).collect()]


def _compact(spark: SparkSession, settings: Settings, tdef: TableDef, table: Table, now: dt.datetime,
             dry_run: bool) -> dict[str, Any]:
    closed = closed_partitions(tdef, now)
    if closed is None:
        return {"skipped": "no time partition"}
    target = int(table.properties.get("write.target-file-size-bytes", 0)) or None
    if dry_run:
        by_partition: dict[str, int] = {}
        for task in table.scan(row_filter=closed.iceberg_filter).plan_files():
            if target is None or task.file.file_size_in_bytes < target:
                key = str(task.file.partition)
                by_partition[key] = by_partition.get(key, 0) + 1
        small = {p: n for p, n in by_partition.items() if n >= 2}
        return {"where": closed.spark_where, "would_rewrite_files": sum(small.values()), "partitions": len(small)}
    rows = _call(spark, settings, "rewrite_data_files", {
        "table": f"'{tdef.name}'", "strategy": "'binpack'", "where": "'" + closed.spark_where.replace("'", "\\'") + "'",
        "options": _spark_map(rewrite_options(target))})
    result = rows[0] if rows else {}
    return {"where": closed.spark_where, **{k: result.get(k) for k in (
        "rewritten_data_files_count", "added_data_files_count", "rewritten_bytes_count", "failed_data_files_count")}}


def _manifests(spark: SparkSession, settings: Settings, tdef: TableDef, table: Table, dry_run: bool) -> dict[str, Any]:
    snapshot = table.current_snapshot()
    manifests = len(snapshot.manifests(table.io)) if snapshot is not None else 0
    if dry_run:
        return {"manifests": manifests}
    rows = _call(spark, settings, "rewrite_manifests", {"table": f"'{tdef.name}'"})
    result = rows[0] if rows else {}
    return {"rewritten_manifests_count": result.get("rewritten_manifests_count"),
            "added_manifests_count": result.get("added_manifests_count")}


def _expire(spark: SparkSession, settings: Settings, tdef: TableDef, table: Table, as_of: dt.datetime,
            dry_run: bool) -> dict[str, Any]:
    holds, refusals = expiry_holds(settings, tdef.name, table)
    if refusals:
        for why in refusals:
            log.warning("expire %s: skipped, %s", tdef.name, why)
        return {"skipped": "; ".join(refusals)}
    history = _history(table)
    plan = plan_expiry(history, holds, retention_cutoff(as_of, settings.snapshot_retention_hours),
                       settings.snapshot_retain_last, ref_heads=[r.snapshot_id for r in table.metadata.refs.values()])
    kept_back = [{"snapshot_id": h.snapshot_id, "committed_at": at.isoformat(), "reason": h.reason}
                 for h, at in plan.kept_back]
    for item in kept_back:
        log.info("expire %s: kept back snapshot %s (%s) past the retention cutoff %s: %s", tdef.name,
                 item["snapshot_id"], item["committed_at"], plan.cutoff.isoformat(), item["reason"])
    outcome: dict[str, Any] = {"older_than": plan.older_than.isoformat(), "retain_last": settings.snapshot_retain_last,
                               "kept_back": kept_back}
    if dry_run:
        return {**outcome, "would_expire": list(plan.candidates)}
    before = {s.snapshot_id for s in history}
    rows = _call(spark, settings, "expire_snapshots", {
        "table": f"'{tdef.name}'", "older_than": spark_timestamp(plan.older_than),
        "retain_last": str(max(settings.snapshot_retain_last, 1))})
    table.refresh()
    after = {s.snapshot_id for s in table.metadata.snapshots}
    result = rows[0] if rows else {}
    return {**outcome, "expired": sorted(before - after),
            "deleted_data_files_count": result.get("deleted_data_files_count"),
            "deleted_manifest_files_count": result.get("deleted_manifest_files_count")}


def _orphans(spark: SparkSession, settings: Settings, tdef: TableDef, as_of: dt.datetime, real_now: dt.datetime,
             dry_run: bool) -> dict[str, Any]:
    cutoff = orphan_cutoff(as_of, real_now, settings.orphan_min_age_hours)
    rows = _call(spark, settings, "remove_orphan_files", {
        "table": f"'{tdef.name}'", "older_than": spark_timestamp(cutoff), "dry_run": "true" if dry_run else "false"})
    files = [str(r.get("orphan_file_location")) for r in rows]
    return {"older_than": cutoff.isoformat(), ("would_delete" if dry_run else "deleted"): files}


def maintain(spark: SparkSession, settings: Settings, tables: Sequence[str] | None = None,
             only: str | None = None, dry_run: bool = False, as_of: dt.datetime | None = None,
             real_now: dt.datetime | None = None) -> list[TableReport]:
    """Run maintenance on ``tables`` (default: every table) and return what it did.

    Order per table: compaction, manifests, expiry (so compaction's replaced files go with the
    expired snapshots), orphans. One table failing does not stop the others: they run, then
    :class:`MaintenanceError` names every failure.
    """
    from pyiceberg.exceptions import NoSuchTableError
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    from lakehouse.catalog import load_catalog

    if only is not None and only not in OPERATIONS:
        raise MaintenanceError(f"unknown operation {only!r}; expected one of {', '.join(OPERATIONS)}")
    real_now = real_now or dt.datetime.now(dt.timezone.utc)
    as_of = as_of or real_now
    defs = {d.name: d for d in table_defs(settings)}
    selected = list(tables) if tables else list(defs)
    unknown = [t for t in selected if t not in defs]
    if unknown:
        raise MaintenanceError(f"unknown table {unknown[0]!r}; expected one of {', '.join(defs)}")
    catalog = load_catalog(settings)
    reports: list[TableReport] = []
    failures: list[str] = []
    for name in selected:
        tdef, report = defs[name], TableReport(name, dry_run)
        reports.append(report)
        try:
            table = catalog.load_table(name)
            for op in ([only] if only else OPERATIONS):
                table.refresh()
                if op == "compact":
                    report.operations[op] = _compact(spark, settings, tdef, table, as_of, dry_run)
                elif op == "manifests":
                    report.operations[op] = _manifests(spark, settings, tdef, table, dry_run)
                elif op == "expire":
                    report.operations[op] = _expire(spark, settings, tdef, table, as_of, dry_run)
                else:
                    report.operations[op] = _orphans(spark, settings, tdef, as_of, real_now, dry_run)
                log.info("maintenance %s %s%s: %s", op, name, " (dry run)" if dry_run else "",
                         json.dumps(report.operations[op], default=str))
        except NoSuchTableError:
            # Not created yet (a table added by a newer release before its first run): nothing to maintain.
            report.operations["skipped"] = {"reason": "table does not exist"}
            log.warning("maintenance of %s skipped: the table does not exist", name)
        except (Py4JJavaError, PySparkException) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            failures.append(f"{name}: {first}")
            log.error("maintenance of %s failed: %s", name, err)
    if failures:
        raise MaintenanceError("maintenance failed for " + "; ".join(failures))
    return reports


__all__ = ["ClosedPartitions", "ExpiryPlan", "Hold", "MaintenanceError", "OPERATIONS", "PositionUnknown",
           "Reader", "SnapshotInfo", "StreamNeeds", "TableReport", "closed_partitions", "downstream_readers",
           "maintain", "offsets_hold", "orphan_cutoff", "plan_expiry", "reader_holds", "retention_cutoff",
           "rewrite_options", "stream_needs", "tag_hold"]
