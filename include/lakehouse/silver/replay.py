"""Replays after a rule or schema fix: rebuild Silver + DLQ for a Bronze range, re-validate the DLQ.

Both are MERGEs keyed on the Bronze lineage (topic, partition, offset) plus the record's identity
(see below), so running one twice, or again after it died between its table commits,
converges to the same state without duplicates. Iceberg commits one table at a time; the pair is
made safe by idempotence and by ordering the two commits so that a crash between them never
leaves a row in neither table, not by a cross-table transaction.
Inputs are read at the snapshot current when the replay starts.

* :func:`replay_silver` re-decodes and re-validates the Bronze rows of a time range that the
  Silver stream has already processed: Silver holds the row's trade at its lineage, or the DLQ
  its raw bytes (rows still ahead of the stream are left to it, so the stream never appends a row
  a replay inserted). First the DLQ: rows that now fail are upserted (un-marked if they had been
  replayed), rows that now pass are marked replayed; then Silver: rows that now pass and are
  missing are inserted (an ``append`` snapshot, which Gold's Silver stream reads), then rows that
  now fail are deleted (a ``delete``/``overwrite`` snapshot, which Gold's stream skips); last, the
  deleted trades that Silver holds at no other lineage are deleted from Gold and their minute bars
  recomputed. A Silver row is matched on lineage + message_id, a dead-letter row on lineage + raw
  bytes (its message_id is NULL when it did not decode).
* :func:`replay_dlq` re-decodes and re-validates not-yet-replayed dead-letter rows from their raw
  bytes, inserts those that now pass into Silver (unless Silver holds the same trade at the same
  lineage; an ``append`` snapshot, which Gold's stream reads), then marks replayed the rows whose
  trade Silver's committed snapshot holds. Lineage alone identifies neither a Silver row nor a
  dead-letter row: after a topic reset (a broker restarted on empty storage) the offsets start
  again, so another record can hold the same lineage in Silver and in the DLQ. Rows that still
  fail, and rows that pass but did not reach Silver, are left as they are.

Do not run a replay while the same exchange's Silver job runs (pause its DAG): both write Silver.
Run a Silver replay that removes rows once Gold has read Silver: Gold's stream reads an append's
files even after rows were deleted from them, so a trade removed before Gold read it still reaches
Gold (the replay logs a warning; running it again after the next Gold run removes the trade).
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
from lakehouse.silver.transform import (
    ERROR_REASON,
    ERROR_TYPE,
    LINEAGE,
    VALUE,
    dlq_rows,
    from_bronze,
    from_dlq,
    silver_columns,
    silver_rows,
    transform,
)
from lakehouse.spark import temp_view

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TIME_COLUMNS = {"ingestion": "ingestion_timestamp", "kafka": "timestamp"}
# A trade in Silver: its lineage with its message_id (lineage repeats after a topic reset).
SILVER_KEY = (*LINEAGE, "message_id")
# A dead-letter row: its lineage with the record's raw bytes (message_id is NULL if it did not decode).
DLQ_KEY = (*LINEAGE, "raw_bytes")
# Name prefix of the temporary views a replay's MERGEs read their source rows from.
VIEW_PREFIX = "silver_replay"


class ReplayError(ValueError):
    """A replay request that cannot be carried out (bad range, unknown exchange)."""


@dataclass
class ReplaySummary:
    """What a replay looked at and where the rows ended up."""

    kind: str
    considered: int = 0
    valid: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    exchanges: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "considered": self.considered, "valid": self.valid,
                "dead_lettered": self.dead_lettered, "exchanges": self.exchanges}


def _on_lineage(target: str = "t", source: str = "s", columns: tuple[str, ...] = LINEAGE) -> str:
    return " AND ".join(f"{target}.{c} = {source}.{c}" for c in columns)


def _same_bytes(source_column: str = "raw_bytes") -> str:
    """Dead-letter row ``t``'s raw bytes against ``s``'s, NULL-safely: a NULL Kafka value (a
    tombstone) is dead-lettered with NULL bytes, and must match itself for the MERGE to be idempotent."""
    return f"t.raw_bytes <=> s.{source_column}"


def _one_per(rows: DataFrame, key: tuple[str, ...]) -> DataFrame:
    """One row per ``key``, a passing row (``error_type`` NULL) first: a MERGE fails when several
    source rows match one target row, and identical records at one lineage (a topic reset that
    replayed the same trades) can give several. Preferring the passing row keeps such a trade in
    Silver rather than deleting it for its failing copy."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = Window.partitionBy(*key).orderBy(F.col(ERROR_TYPE).asc_nulls_first())
    return rows.withColumn("_rank", F.row_number().over(first)).where(F.col("_rank") == 1).drop("_rank")


def _counts(validated: DataFrame) -> tuple[int, dict[str, int]]:
    counts = {row[ERROR_TYPE]: int(row["count"]) for row in validated.groupBy(ERROR_TYPE).count().collect()}
    return counts.pop(None, 0), counts


def _audit(spark: SparkSession, settings: Settings, event: str, source: str, detail: dict[str, object]) -> None:
    """One row in the pipeline audit table per replay: operators can see what was rebuilt and when."""
    row = (dt.datetime.now(dt.timezone.utc), "silver", source, event, json.dumps(detail, sort_keys=True, default=str))
    spark.createDataFrame([row], tables.spark_schema(tables.AUDIT_DEF)) \
        .writeTo(names.qualified(settings, names.AUDIT_TABLE)).append()


def pinned(spark: SparkSession, settings: Settings, table: str) -> DataFrame:
    """``table`` as of its current snapshot: re-evaluating the frame later (a MERGE re-plans its
    source, a cache can be evicted) reads the same rows even after the replay changed the table."""
    snapshot_id = load_catalog(settings).load_table(table).metadata.current_snapshot_id
    reader = spark.read if snapshot_id is None else spark.read.option("snapshot-id", snapshot_id)
    return reader.table(names.qualified(settings, table))


def _processed(spark: SparkSession, settings: Settings, exchange: str, validated: DataFrame) -> DataFrame:
    """The rows of ``validated`` the Silver stream has already written: Silver holds their trade at
    their lineage, or the DLQ their raw bytes at it.

    Lineage alone is not enough: after a topic reset it also matches the other incarnation's row,
    so a row still ahead of the stream would be written by the replay and then again by the stream.
    """
    from pyspark.sql import functions as F

    silver = pinned(spark, settings, names.silver_table(exchange)).select(*SILVER_KEY)
    dlq = (pinned(spark, settings, names.DLQ_TABLE)
           .where(F.col("bronze_source") == names.bronze_table(exchange)).select(*DLQ_KEY))
    with temp_view(validated, VIEW_PREFIX) as rows, temp_view(silver, VIEW_PREFIX) as in_silver, \
            temp_view(dlq, VIEW_PREFIX) as in_dlq:
        return spark.sql(f"""
            SELECT * FROM {rows} s
            WHERE EXISTS (SELECT 1 FROM {in_silver} t WHERE {_on_lineage(columns=SILVER_KEY)})
               OR EXISTS (SELECT 1 FROM {in_dlq} t WHERE {_on_lineage()} AND {_same_bytes(VALUE)})
        """)


def replay_silver(spark: SparkSession, settings: Settings, exchange: str, start: dt.datetime | None = None,
                  end: dt.datetime | None = None, by: str = "ingestion") -> ReplaySummary:
    """Rebuild Silver and dead-letter rows of ``exchange`` for Bronze rows with ``start <= time < end``.

    ``by`` picks the time: ``ingestion`` (when Bronze wrote the row) or ``kafka`` (the record's
    Kafka timestamp).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if exchange not in settings.exchanges:
        raise ReplayError(f"unknown exchange {exchange!r}; configured: {', '.join(settings.exchanges)}")
    if by not in TIME_COLUMNS:
        raise ReplayError(f"unknown time column {by!r}; expected one of {', '.join(TIME_COLUMNS)}")
    if start is not None and end is not None and start >= end:
        raise ReplayError(f"empty range: --from {start.isoformat()} is not before --to {end.isoformat()}")
    bronze = pinned(spark, settings, names.bronze_table(exchange))
    column = F.col(TIME_COLUMNS[by])
    if start is not None:
        bronze = bronze.where(column >= F.lit(start).cast("timestamp"))
    if end is not None:
        bronze = bronze.where(column < F.lit(end).cast("timestamp"))
    # Rows are told apart by their record, so they are decoded before the processed check.
    validated = _processed(spark, settings, exchange, transform(from_bronze(bronze), settings, exchange=exchange)) \
        .persist(StorageLevel.MEMORY_AND_DISK)
    summary = ReplaySummary("silver", exchanges=[exchange])
    removed, behind = 0, None
    try:
        summary.valid, summary.dead_lettered = _counts(validated)
        summary.considered = summary.valid + sum(summary.dead_lettered.values())
        if summary.considered:
            now = dt.datetime.now(dt.timezone.utc)
            behind = _gold_behind(settings, exchange)  # before this replay's own append
            # DLQ first: a row leaves Silver only once it is in the DLQ, so dying between the
            # commits leaves it in both (the rerun fixes that), never in neither.
            _merge_dlq(spark, settings, exchange, validated, now)
            passing, failing = _silver_changes(validated, now)
            moving_out = bool(failing.take(1))
            # Rows moving in and rows moving out are separate commits: Gold's stream reads the
            # append and skips the delete, whose trades are removed from Gold here.
            _append_silver(spark, settings, exchange, passing)
            if moving_out:
                _delete_silver(spark, settings, exchange, failing)
                removed = _remove_from_gold(spark, settings, exchange, failing)
            if moving_out and behind is not None:
                log.warning("Gold has not read all of Silver of %s (%s): trades this replay removed may "
                            "still reach Gold; replay the range again after the next Gold run", exchange, behind)
    finally:
        validated.unpersist()
    detail = {**summary.as_dict(), "from": start, "to": end, "by": by, "gold_removed": removed,
              "gold_behind": behind}
    _audit(spark, settings, "replay_silver", names.bronze_table(exchange), detail)
    log.info("silver replay finished", extra=detail)
    return summary


def _silver_changes(validated: DataFrame, now: dt.datetime) -> tuple[DataFrame, DataFrame]:
    """(rows that pass, as Silver rows, one per trade and lineage; rows that now fail whose trade
    and lineage have no passing copy, as Silver rows). Rows that do not decode have no message_id,
    hence no Silver row."""
    from pyspark.sql import functions as F

    decoded = validated.where(F.col("message_id").isNotNull())
    rows = decoded.select(*silver_columns(decoded, now), F.col(ERROR_TYPE))
    passing = rows.where(F.col(ERROR_TYPE).isNull()).drop(ERROR_TYPE).dropDuplicates(list(SILVER_KEY))
    failing = (rows.where(F.col(ERROR_TYPE).isNotNull()).drop(ERROR_TYPE).dropDuplicates(list(SILVER_KEY))
               .join(passing.select(*SILVER_KEY), list(SILVER_KEY), "left_anti"))
    return passing, failing


def _append_silver(spark: SparkSession, settings: Settings, exchange: str, passing: DataFrame) -> None:
    """Insert the passing trades Silver does not hold at their lineage.

    An insert-only MERGE is committed as an ``append`` snapshot, which Gold's Silver stream reads:
    the rows a replay moves into Silver reach Gold. Rows Silver already holds are left as they are
    (same bytes, same trade; Gold inserts only message_ids it lacks, so an update would never reach it).
    """
    cols = [c.name for c in tables.V2_COLUMNS + tables.SILVER_EXTRA]
    with temp_view(passing, VIEW_PREFIX) as view:
        spark.sql(f"""
            MERGE INTO {names.qualified(settings, names.silver_table(exchange))} t USING {view} s
            ON {_on_lineage(columns=SILVER_KEY)}
            WHEN NOT MATCHED THEN INSERT ({", ".join(f"`{c}`" for c in cols)})
                                  VALUES ({", ".join(f"s.`{c}`" for c in cols)})
        """)


def _delete_silver(spark: SparkSession, settings: Settings, exchange: str, failing: DataFrame) -> None:
    """Delete the trades that now fail from Silver, keyed on lineage + message_id.

    Committed as a ``delete`` or ``overwrite`` snapshot (copy-on-write keeps a file's other rows),
    which Gold's stream skips: the rows it keeps were streamed when first appended. Gold learns of
    the removal from :func:`_remove_from_gold`.
    """
    with temp_view(failing.select(*SILVER_KEY), VIEW_PREFIX) as view:
        spark.sql(f"""
            MERGE INTO {names.qualified(settings, names.silver_table(exchange))} t USING {view} s
            ON {_on_lineage(columns=SILVER_KEY)}
            WHEN MATCHED THEN DELETE
        """)


def _gold_behind(settings: Settings, exchange: str) -> str | None:
    """Why Gold's stream of ``exchange`` may not have read every Silver append yet (None: it has).

    Gold reads an append's files even after a replay deleted rows from them, so a trade removed
    from Silver before Gold read it would still reach Gold; rerunning the replay once Gold caught
    up removes it.
    """
    from lakehouse.orchestration.pending import stream_behind

    silver = load_catalog(settings).load_table(names.silver_table(exchange))
    return stream_behind(silver, names.gold_checkpoint(settings, exchange))


def _remove_from_gold(spark: SparkSession, settings: Settings, exchange: str, failing: DataFrame) -> int:
    """Delete from Gold the trades that now fail and that Silver holds at no lineage any more, and
    recompute their minute bars; return how many trades Gold lost.

    A trade that still has a passing copy in Silver (another record of the same trade) stays in Gold.
    """
    from pyspark.sql import functions as F

    from lakehouse.gold.writer import remove_trades

    candidates = failing.where(F.col("exchange").isNotNull() & F.col("timestamp").isNotNull())
    dates = [r[0] for r in candidates.select("exchange_date").distinct().collect()]
    if not dates:
        return 0
    # A copy of a trade has the same trade time, hence the same exchange_date partition.
    held = (pinned(spark, settings, names.silver_table(exchange))
            .where(F.col("exchange_date").isin(dates)).select("message_id"))
    gone = candidates.join(held, "message_id", "left_anti")
    return remove_trades(spark, settings, gone, f"replay of {exchange}")


def _merge_dlq(spark: SparkSession, settings: Settings, exchange: str, validated: DataFrame,
               now: dt.datetime) -> None:
    """Mark dead-letter rows that now pass replayed; upsert rows that fail (keeping their first DLQ
    time); keyed on lineage + raw bytes."""
    from pyspark.sql import functions as F

    failing = dlq_rows(validated, exchange, now)
    passing = validated.where(F.col(ERROR_TYPE).isNull()).select(
        *LINEAGE, F.col(VALUE).alias("raw_bytes"), F.lit(names.bronze_table(exchange)).alias("bronze_source"))
    source = _one_per(failing.unionByName(passing, allowMissingColumns=True), DLQ_KEY)
    cols = [c.name for c in tables.DLQ_DEF.columns]
    insert_cols = ", ".join(f"`{c}`" for c in cols)
    insert_vals = ", ".join(f"s.`{c}`" for c in cols)
    at = f"TIMESTAMP '{now.strftime('%Y-%m-%d %H:%M:%S.%f')}'"  # session time zone is UTC
    with temp_view(source, VIEW_PREFIX) as view:
        spark.sql(f"""
            MERGE INTO {names.qualified(settings, names.DLQ_TABLE)} t USING {view} s
            ON t.bronze_source = s.bronze_source AND {_on_lineage()} AND {_same_bytes()}
            WHEN MATCHED AND s.{ERROR_TYPE} IS NULL AND NOT coalesce(t.replayed, false)
                THEN UPDATE SET t.replayed = true, t.replayed_at = {at}
            WHEN MATCHED AND s.{ERROR_TYPE} IS NOT NULL
                THEN UPDATE SET t.{ERROR_TYPE} = s.{ERROR_TYPE}, t.{ERROR_REASON} = s.{ERROR_REASON},
                                t.schema_id = s.schema_id, t.message_id = s.message_id,
                                t.replayed = false, t.replayed_at = NULL
            WHEN NOT MATCHED AND s.{ERROR_TYPE} IS NOT NULL THEN INSERT ({insert_cols}) VALUES ({insert_vals})
        """)


def replay_dlq(spark: SparkSession, settings: Settings, error_type: str | None = None,
               exchange: str | None = None) -> ReplaySummary:
    """Re-validate dead-letter rows not yet replayed; move those that pass into Silver and mark them."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if exchange is not None and exchange not in settings.exchanges:
        raise ReplayError(f"unknown exchange {exchange!r}; configured: {', '.join(settings.exchanges)}")
    summary = ReplaySummary("dlq")
    dead_lettered: dict[str, int] = {}
    dlq = pinned(spark, settings, names.DLQ_TABLE).where(~F.coalesce(F.col("replayed"), F.lit(False)))
    if error_type is not None:
        dlq = dlq.where(F.col(ERROR_TYPE) == error_type)
    for ex in [exchange] if exchange else list(settings.exchanges):
        rows = dlq.where(F.col("bronze_source") == names.bronze_table(ex))
        validated = transform(from_dlq(rows), settings, exchange=ex).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            valid, still = _counts(validated)
            if not valid and not still:
                continue
            summary.exchanges.append(ex)
            summary.considered += valid + sum(still.values())
            summary.valid += valid
            for k, n in still.items():
                dead_lettered[k] = dead_lettered.get(k, 0) + n
            if valid:
                now = dt.datetime.now(dt.timezone.utc)
                _insert_passing(spark, settings, ex, validated, now)
                _mark_replayed(spark, settings, ex, validated, now)
        finally:
            validated.unpersist()
    summary.dead_lettered = dead_lettered
    detail = {**summary.as_dict(), "error_type": error_type}
    _audit(spark, settings, "replay_dlq", names.DLQ_TABLE, detail)
    log.info("dlq replay finished", extra=detail)
    return summary


def _insert_passing(spark: SparkSession, settings: Settings, exchange: str, validated: DataFrame,
                    now: dt.datetime) -> None:
    """Insert the rows that pass into Silver, each trade once, unless Silver holds it at that lineage
    already (a rerun after a replay died before marking); another record at the same lineage (a
    topic reset) does not stop the insert."""
    cols = [c.name for c in tables.V2_COLUMNS + tables.SILVER_EXTRA]
    with temp_view(silver_rows(validated, now).dropDuplicates(list(SILVER_KEY)), VIEW_PREFIX) as view:
        spark.sql(f"""
            MERGE INTO {names.qualified(settings, names.silver_table(exchange))} t USING {view} s
            ON {_on_lineage(columns=SILVER_KEY)}
            WHEN NOT MATCHED THEN INSERT ({", ".join(f"`{c}`" for c in cols)})
                                  VALUES ({", ".join(f"s.`{c}`" for c in cols)})
        """)


def _mark_replayed(spark: SparkSession, settings: Settings, exchange: str, validated: DataFrame,
                   now: dt.datetime) -> None:
    """Mark replayed the dead-letter rows whose trade Silver's committed snapshot holds.

    What counts is what Silver committed, not what passed: a passing row that did not reach
    Silver stays unreplayed (and is logged). Each dead-letter row is matched on its raw bytes as
    well as its lineage, so the row of another record at the same lineage is left alone.
    """
    from pyspark.sql import functions as F

    committed = pinned(spark, settings, names.silver_table(exchange)).select(*SILVER_KEY)
    passing = validated.where(F.col(ERROR_TYPE).isNull())
    in_silver = passing.join(committed, list(SILVER_KEY), "left_semi")
    missing = passing.count() - in_silver.count()
    if missing:
        log.warning("dead-letter rows passed re-validation but are not in Silver; left unreplayed",
                    extra={"exchange": exchange, "rows": missing})
    written = in_silver.select(*LINEAGE, F.col(VALUE).alias("raw_bytes")).dropDuplicates()
    at = f"TIMESTAMP '{now.strftime('%Y-%m-%d %H:%M:%S.%f')}'"
    with temp_view(written, VIEW_PREFIX) as view:
        spark.sql(f"""
            MERGE INTO {names.qualified(settings, names.DLQ_TABLE)} t USING {view} s
            ON t.bronze_source = '{names.bronze_table(exchange)}' AND {_on_lineage()}
               AND t.raw_bytes = s.raw_bytes
            WHEN MATCHED AND NOT coalesce(t.replayed, false) THEN UPDATE SET t.replayed = true, t.replayed_at = {at}
        """)


__all__ = ["ReplayError", "ReplaySummary", "TIME_COLUMNS", "replay_dlq", "replay_silver"]
