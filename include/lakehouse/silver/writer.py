"""Idempotence of a micro-batch that commits two tables (Silver and the dead-letter table).

Iceberg's own streaming sink dedupes a retried epoch, but a ``foreachBatch`` that commits two
tables can fail between them. Each commit is therefore tagged with a snapshot-summary property
(:data:`lakehouse.names.SILVER_BATCH_PROPERTY` = ``<streaming query id>:<batch id>``) written in
the same Iceberg commit as the data; a retried batch skips every table whose history already
holds its tag. The query id lives in the checkpoint, so a new checkpoint never collides with an
old one's batch ids.

Two runs sharing the checkpoint (a scheduled run and a manual one) can process the same batch at
the same moment, both finding no tagged commit. The tagged commit is therefore a compare-and-set
(:func:`commit_tagged`): it lands only if the tag is still absent from the branch head it builds
on, and the second writer gets :class:`~lakehouse.catalog.TagCommittedError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lakehouse import names
from lakehouse.catalog import append_data_files, tagged_ancestor
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot
    from pyspark.sql import DataFrame, SparkSession


def batch_tag(query_id: str, batch_id: int) -> str:
    return f"{query_id}:{batch_id}"


def tagged_snapshot(table: Table, tag: str, key: str = names.SILVER_BATCH_PROPERTY) -> Snapshot | None:
    """The snapshot in main's (unexpired) history whose summary carries ``key`` = ``tag``."""
    return tagged_ancestor(table, key, tag)


def commit_tagged(table: Table, data_files: Sequence[DataFile], properties: Mapping[str, str]) -> None:
    """Append ``data_files`` to main in one commit, unless a commit with the same batch tag is there.

    ``properties`` carries the tag (:data:`lakehouse.names.SILVER_BATCH_PROPERTY`). Raises
    :class:`~lakehouse.catalog.TagCommittedError` when another writer committed the batch first.
    """
    append_data_files(table, data_files, properties, unique=names.SILVER_BATCH_PROPERTY)


def appended_rows(spark: SparkSession, settings: Settings, table: str, snapshot: Snapshot) -> DataFrame:
    """The rows ``snapshot`` appended (an incremental read from its parent)."""
    reader = spark.read.format("iceberg")
    if snapshot.parent_snapshot_id is None:
        reader = reader.option("snapshot-id", snapshot.snapshot_id)
    else:
        reader = (reader.option("start-snapshot-id", snapshot.parent_snapshot_id)
                  .option("end-snapshot-id", snapshot.snapshot_id))
    return reader.load(names.qualified(settings, table))


__all__ = ["appended_rows", "batch_tag", "commit_tagged", "tagged_snapshot"]
