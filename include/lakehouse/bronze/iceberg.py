"""Bronze's Iceberg side: committed offsets, the run branch, the conditional commit, the audit row.

Offsets live in the snapshot summary of every Bronze commit (``BRONZE_OFFSETS_PROPERTY``),
so data and offsets commit atomically. A run writes to its own branch created from the
snapshot it planned from, then ``fast_forward`` moves main onto that branch; the procedure
fails if main is no longer an ancestor of the branch, which makes the commit conditional on
nobody having committed since planning (Iceberg appends alone never conflict).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from lakehouse import names, tables
from lakehouse.bronze.errors import TableMissingError
from lakehouse.bronze.planning import decode_offsets
from lakehouse.catalog import append_data_files, load_catalog
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.table.snapshots import Snapshot
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MAIN = "main"


@dataclass(frozen=True)
class Committed:
    """Offsets committed on main, and the main snapshot they were read at (None: empty table).

    ``source`` says where they came from: ``snapshot`` (the summary of ``found_in``),
    ``table`` (max(offset)+1 per partition, when every snapshot with the property expired),
    or ``empty``.
    """

    snapshot_id: int | None
    offsets: dict[int, int]
    source: str
    found_in: int | None = None
    # The topic incarnation the offsets belong to (None: written before ids were recorded, or unknown).
    topic_id: str | None = None


def load_table(settings: Settings, exchange: str) -> Table:
    try:
        return load_catalog(settings).load_table(names.bronze_table(exchange))
    except NoSuchTableError as err:
        raise TableMissingError(f"table {names.bronze_table(exchange)} does not exist: run 'lakehouse up'") from err


def offsets_on_main(table: Table, topic: str) -> tuple[int | None, dict[int, int] | None, int | None]:
    """(main snapshot, offsets from the nearest ancestor carrying the property, that ancestor).

    Walks past snapshots without the property (compaction ``replace`` snapshots); offsets are
    None when no remaining ancestor has it (expired).
    """
    head = table.current_snapshot()
    by_id: dict[int, Snapshot] | None = None  # pyiceberg's snapshot_by_id scans the list: a long walk indexes once
    snap = head
    while snap is not None:
        raw = snap.summary.get(names.BRONZE_OFFSETS_PROPERTY) if snap.summary is not None else None
        if raw is not None:
            return head.snapshot_id if head else None, decode_offsets(raw, topic), snap.snapshot_id
        if by_id is None:
            by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
        snap = by_id.get(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return (head.snapshot_id if head else None), None, None


def recorded_topic_id(table: Table, snapshot_id: int | None) -> str | None:
    """The topic id a Bronze snapshot's offsets belong to (None: not recorded)."""
    snap = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    return (snap.summary.get(names.BRONZE_TOPIC_ID_PROPERTY) or None) if snap and snap.summary else None


def committed_offsets(spark: SparkSession, settings: Settings, exchange: str, topic: str) -> Committed:
    """The next offset per partition as of main's current snapshot.

    Falls back to an exact scan (max(offset)+1 per partition of that snapshot) when expiry
    removed every snapshot carrying the property; both give the same answer for Bronze data.
    """
    table = load_table(settings, exchange)
    head, offsets, found_in = offsets_on_main(table, topic)
    if head is None:
        return Committed(None, {}, "empty")
    if offsets is not None:
        return Committed(head, offsets, "snapshot", found_in, recorded_topic_id(table, found_in))
    from pyspark.sql import functions as F

    qualified = names.qualified(settings, names.bronze_table(exchange))
    rows = (spark.sql(f"SELECT `partition`, `offset`, topic FROM {qualified} VERSION AS OF {head}")
            .where(F.col("topic") == topic).groupBy("partition").agg(F.max("offset").alias("last")).collect())
    log.warning("no snapshot of %s carries Bronze offsets any more; using max(offset)+1 from the data",
                qualified, extra={"snapshot_id": head})
    return Committed(head, {int(r["partition"]): int(r["last"]) + 1 for r in rows}, "table")


def refresh(spark: SparkSession, settings: Settings, exchange: str) -> None:
    """Drop Spark's cached metadata so the branch and procedures see other processes' commits."""
    spark.catalog.refreshTable(names.qualified(settings, names.bronze_table(exchange)))


def branch_name(run_id: str, now_ms: int | None = None) -> str:
    """``bronze_run_<created ms>_<run id>``: the creation time lets later runs drop stale branches."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{names.BRONZE_BRANCH_PREFIX}{now_ms}_{run_id.replace('-', '')[:12]}"


def branch_created_ms(branch: str) -> int | None:
    if not branch.startswith(names.BRONZE_BRANCH_PREFIX):
        return None
    stamp = branch[len(names.BRONZE_BRANCH_PREFIX):].split("_", 1)[0]
    return int(stamp) if stamp.isdigit() else None


def stale_branches(refs: Sequence[str], now_ms: int, ttl_s: float) -> list[str]:
    """Run branches older than ``ttl_s`` (left by killed runs); younger ones may be live runs."""
    out = []
    for ref in refs:
        created = branch_created_ms(ref)
        if created is not None and now_ms - created > ttl_s * 1000:
            out.append(ref)
    return sorted(out)


def drop_branch(spark: SparkSession, settings: Settings, exchange: str, branch: str) -> None:
    qualified = names.qualified(settings, names.bronze_table(exchange))
    spark.sql(f"ALTER TABLE {qualified} DROP BRANCH IF EXISTS `{branch}`")


def drop_stale_branches(spark: SparkSession, settings: Settings, exchange: str) -> list[str]:
    table = load_table(settings, exchange)
    refresh(spark, settings, exchange)
    stale = stale_branches(list(table.refs()), int(time.time() * 1000), settings.bronze_branch_ttl_s)
    for branch in stale:
        drop_branch(spark, settings, exchange, branch)
    if stale:
        log.info("dropped branches of killed Bronze runs", extra={"branches": stale, "exchange": exchange})
    return stale


def create_branch(spark: SparkSession, settings: Settings, exchange: str, branch: str,
                  snapshot_id: int | None) -> None:
    """Branch from the planned-from snapshot (an empty table gets an empty branch snapshot)."""
    qualified = names.qualified(settings, names.bronze_table(exchange))
    as_of = f" AS OF VERSION {int(snapshot_id)}" if snapshot_id is not None else ""
    spark.sql(f"ALTER TABLE {qualified} CREATE BRANCH `{branch}`{as_of}")


def append_to_branch(table: Table, branch: str, data_files: Sequence[DataFile], properties: Mapping[str, str]) -> None:
    """One snapshot on ``branch`` adding the run's data files, with the offsets in its summary.

    Nothing else writes a run's branch, so this append cannot race; main moves only later, by
    the conditional ``fast_forward``.
    """
    append_data_files(table, data_files, properties, branch=branch)


def fast_forward(spark: SparkSession, settings: Settings, exchange: str, branch: str) -> None:
    """Move main to the branch head; Iceberg refuses unless main is an ancestor of the branch."""
    spark.sql(f"CALL {settings.catalog_name}.system.fast_forward("
              f"'{names.bronze_table(exchange)}', '{MAIN}', '{branch}')").collect()


def audited(spark: SparkSession, settings: Settings, event: str, source: str, key: str, value: str) -> bool:
    """Whether an audit row of ``event`` for ``source`` has ``value`` under ``key`` in its detail
    (a run killed after writing its audit row must not write a second one)."""
    from pyspark.sql import functions as F

    rows = (spark.table(names.qualified(settings, names.AUDIT_TABLE))
            .where((F.col("layer") == "bronze") & (F.col("source") == source) & (F.col("event") == event))
            .where(F.get_json_object("detail", f"$.{key}") == value).limit(1).collect())
    return bool(rows)


def write_audit(spark: SparkSession, settings: Settings, event: str, source: str,
                details: Sequence[Mapping[str, object]]) -> None:
    """One audit row per detail (JSON), e.g. per partition that lost data."""
    if not details:
        return
    now = dt.datetime.now(dt.timezone.utc)
    rows = [(now, "bronze", source, event, json.dumps(d, sort_keys=True, default=str)) for d in details]
    spark.createDataFrame(rows, tables.spark_schema(tables.AUDIT_DEF)) \
        .writeTo(names.qualified(settings, names.AUDIT_TABLE)).append()
