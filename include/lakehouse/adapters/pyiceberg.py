"""pyiceberg internals the Bronze and Silver tasks use to write data files, in one place.

``_apply_table_update`` and its context are how pyiceberg applies one metadata update (the
catalog's commit path, :func:`lakehouse.catalog.staged_metadata`). ``write_file`` and
``WriteTask`` are what ``Table.append`` uses internally to turn Arrow into data
files, ``_determine_partitions`` is its private partition split, and a pickled ``DataFile`` (how a
task hands its files to the driver) is readable only by a pyiceberg with the same classes. None of
these is documented API, so a pyiceberg upgrade can change them without notice: the versions below
are the ones they were checked against (tests/unit/test_private_api_adapters.py).
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pyiceberg.io import FileIO
    from pyiceberg.manifest import DataFile
    from pyiceberg.partitioning import PartitionKey, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.table.metadata import TableMetadata
    from pyiceberg.table.update import TableUpdate

# pyiceberg versions whose internals were checked against this module.
TESTED_VERSIONS = frozenset({"0.12.0"})


def installed_version() -> str:
    return metadata.version("pyiceberg")


def write_data_files(io: FileIO, table: TableMetadata, task_id: int,
                     parts: Sequence[tuple[PartitionKey | None, list[pa.RecordBatch]]]) -> list[DataFile]:
    """Write each (partition key, batches) as one data file of ``table``, in parallel (pyiceberg's
    executor), with the table's field ids, column metrics and compression.

    Every file gets its own write UUID, so no two writes (a retried task included) share a name;
    ``task_id`` goes into the name too, telling which task wrote it.
    """
    from pyiceberg.io.pyarrow import write_file
    from pyiceberg.table import WriteTask

    schema = table.schema()
    tasks = [WriteTask(write_uuid=uuid.uuid4(), task_id=task_id, schema=schema, record_batches=batches,
                       partition_key=key) for key, batches in parts]
    return list(write_file(io, table, iter(tasks)))


def split_partitions(spec: PartitionSpec, schema: Schema, data: pa.Table) -> list[tuple[PartitionKey, pa.Table]]:
    """``data`` split by ``spec`` with pyiceberg's own split (``Table.append``'s path): (key, rows) per partition."""
    from pyiceberg.io.pyarrow import _determine_partitions

    return [(p.partition_key, p.arrow_table_partition) for p in _determine_partitions(spec, schema, data)]


def apply_table_updates(base: TableMetadata, updates: Sequence[TableUpdate],
                        metadata_location: str | None) -> tuple[TableMetadata, bool]:
    """``updates`` applied to ``base`` with pyiceberg's private per-update step (what its public
    ``update_table_metadata`` does, without the deep copy it ends with), and whether any changed it.
    With ``metadata_location``, the previous metadata file is appended to the metadata log."""
    from pyiceberg.table.update import _apply_table_update, _TableMetadataUpdateContext, _update_table_metadata_log

    context = _TableMetadataUpdateContext()
    metadata = base
    for update in updates:
        metadata = _apply_table_update(update, metadata, context)
    changed = context.has_changes()
    if changed and metadata_location:
        metadata = _update_table_metadata_log(metadata, metadata_location, base.last_updated_ms)
    return metadata, changed


def encode_files(files: Sequence[DataFile]) -> bytes:
    """A task's data files as bytes for its result row (pyiceberg's own classes, pickled)."""
    return pickle.dumps(list(files))


def decode_files(blob: bytes) -> list[DataFile]:
    """The DataFile list a task returned (:func:`encode_files`), read on the driver."""
    return list(pickle.loads(blob))


__all__ = ["TESTED_VERSIONS", "apply_table_updates", "decode_files", "encode_files", "installed_version", "split_partitions",
           "write_data_files"]
