"""What one Spark task of a Bronze run does: read its offset ranges, write them as an Iceberg data file.

Each task reads its ranges (at most one per partition) with one confluent-kafka consumer into
Arrow batches (``kafka.read_ranges``) and writes them as one Parquet data file of the Bronze
table with pyiceberg's writer (field ids, column metrics, the table's compression), straight
from Arrow. The task returns only the file's metadata; the driver appends the files of all
tasks in one Iceberg commit. Measured here, Spark's Iceberg writer cost about 4 us of JVM time
per record (Arrow -> rows -> Parquet), pyarrow's Parquet writer about 0.3 us.

A task writes a new file name per attempt, so a retried or killed task never overwrites a
file that a commit references; unreferenced files of killed runs are orphans, removed by
Iceberg's orphan-file maintenance.
"""

from __future__ import annotations

import gc
import pickle
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.bronze.kafka import ReadContext, read_ranges
from lakehouse.bronze.planning import OffsetRange

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.partitioning import PartitionKey
    from pyiceberg.table.metadata import TableMetadata

# What each task returns to the driver (one row per task).
RESULT_FIELDS = (("task", pa.int32()), ("records", pa.int64()), ("bytes", pa.int64()), ("data_files", pa.binary()))


@dataclass(frozen=True)
class WriteContext:
    """The table as of planning (metadata JSON), the properties of its FileIO, and how many rows a
    task buffers before it writes them out as a data file (its memory bound)."""

    metadata_json: str
    io_properties: dict[str, str]
    rows_per_file: int


def partition_key(metadata: TableMetadata, ingestion_us: int) -> PartitionKey | None:
    """The one partition every row of a run lands in: Bronze partitions by ingestion time only,
    and a run stamps all its rows with the same ingestion time."""
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey

    spec, schema = metadata.spec(), metadata.schema()
    if spec.is_unpartitioned():
        return None
    values = []
    for field in spec.fields:
        source = schema.find_field(field.source_id)
        if source.name != "ingestion_timestamp":
            raise ValueError(f"Bronze writes partition by ingestion_timestamp only, not by {source.name!r}")
        stamp = pa.array([ingestion_us], pa.int64()).cast(pa.timestamp("us", "UTC"))
        day = field.transform.pyarrow_transform(source.field_type)(stamp)[0].as_py()
        values.append(PartitionFieldValue(field, day))
    return PartitionKey(field_values=values, partition_spec=spec, schema=schema)


def write_data_file(batches: Sequence[pa.RecordBatch], task_id: int, ctx: WriteContext,
                    ingestion_us: int) -> list[DataFile]:
    """Write one task's batches as a data file of the table (none when there are no rows)."""
    if not batches or sum(b.num_rows for b in batches) == 0:
        return []
    from pyiceberg.io import load_file_io
    from pyiceberg.io.pyarrow import write_file
    from pyiceberg.table import WriteTask
    from pyiceberg.table.metadata import TableMetadataUtil

    metadata = TableMetadataUtil.parse_raw(ctx.metadata_json)
    io = load_file_io(ctx.io_properties, metadata.location)
    task = WriteTask(write_uuid=uuid.uuid4(), task_id=task_id, schema=metadata.schema(), record_batches=list(batches),
                     partition_key=partition_key(metadata, ingestion_us))
    return list(write_file(io, metadata, iter([task])))


def run_tasks(batches: Iterator[pa.RecordBatch], tasks: tuple[tuple[OffsetRange, ...], ...], read: ReadContext,
              write: WriteContext) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: each input row is a task index; read its ranges, write them, report the files.

    The cyclic garbage collector is paused while reading: tens of thousands of live Message
    objects made every collection walk them, which cost twice the reading itself; nothing here
    forms reference cycles, so reference counting frees it all.
    """
    schema = pa.schema([pa.field(name, kind) for name, kind in RESULT_FIELDS])
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for batch in batches:
            for index in batch.column(0).to_pylist():
                files: list[DataFile] = []
                records = size = 0
                buffered: list[pa.RecordBatch] = []
                for read_batch in read_ranges(tasks[index], read):
                    records += read_batch.num_rows
                    size += (pc.sum(pc.binary_length(read_batch.column("value"))).as_py() or 0) + \
                        (pc.sum(pc.binary_length(read_batch.column("key"))).as_py() or 0)
                    buffered.append(read_batch)
                    if sum(b.num_rows for b in buffered) >= write.rows_per_file:
                        files += write_data_file(buffered, index, write, read.ingestion_us)
                        buffered = []
                files += write_data_file(buffered, index, write, read.ingestion_us)
                yield pa.RecordBatch.from_arrays(
                    [pa.array([index], pa.int32()), pa.array([records], pa.int64()), pa.array([size], pa.int64()),
                     pa.array([pickle.dumps(files)], pa.binary())], schema=schema)
    finally:
        if was_enabled:
            gc.enable()


def decode_files(blob: bytes) -> list[DataFile]:
    """The DataFile list a task returned (pickled by pyiceberg's own classes, read on the driver)."""
    return list(pickle.loads(blob))
