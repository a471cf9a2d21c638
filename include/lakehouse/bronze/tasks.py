"""What one Spark task of a Bronze run does: read its offset ranges, write them as Iceberg data files.

Each task reads its ranges (at most one per partition) with one confluent-kafka consumer into
Arrow batches (``kafka.read_ranges``) and writes them as Parquet data files of the Bronze table
(:class:`~lakehouse.iceberg_files.DataFileWriter`: pyiceberg's writer, straight from Arrow, see
there why). The task returns only the files' metadata; the driver appends the files of all tasks
in one Iceberg commit. A run stamps all its rows with one ingestion time, so a task's rows land in
one ingestion-day partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.bronze.kafka import ReadContext, read_ranges
from lakehouse.bronze.planning import OffsetRange
from lakehouse.gc_pause import gc_paused
from lakehouse.iceberg_files import DataFileWriter, decode_files, encode_files

# What each task returns to the driver (one row per task).
RESULT_FIELDS = (("task", pa.int32()), ("records", pa.int64()), ("bytes", pa.int64()), ("data_files", pa.binary()))


@dataclass(frozen=True)
class WriteContext:
    """The table as of planning (metadata JSON), the properties of its FileIO, and how many rows a
    task buffers before it writes them out as a data file (its memory bound)."""

    metadata_json: str
    io_properties: dict[str, str]
    rows_per_file: int


def run_tasks(batches: Iterator[pa.RecordBatch], tasks: tuple[tuple[OffsetRange, ...], ...], read: ReadContext,
              write: WriteContext) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: each input row is a task index; read its ranges, write them, report the files.

    The cyclic garbage collector is paused while reading (see :mod:`lakehouse.gc_pause`).
    """
    schema = pa.schema([pa.field(name, kind) for name, kind in RESULT_FIELDS])
    with gc_paused():
        for batch in batches:
            for index in batch.column(0).to_pylist():
                writer = DataFileWriter(write.metadata_json, write.io_properties, write.rows_per_file, task_id=index)
                records = size = 0
                for read_batch in read_ranges(tasks[index], read):
                    records += read_batch.num_rows
                    size += (pc.sum(pc.binary_length(read_batch.column("value"))).as_py() or 0) + \
                        (pc.sum(pc.binary_length(read_batch.column("key"))).as_py() or 0)
                    writer.add(read_batch)
                writer.flush()
                yield pa.RecordBatch.from_arrays(
                    [pa.array([index], pa.int32()), pa.array([records], pa.int64()), pa.array([size], pa.int64()),
                     pa.array([encode_files(writer.files)], pa.binary())], schema=schema)


# decode_files: re-exported for the driver (lakehouse.bronze.run), which reads the tasks' results.
__all__ = ["RESULT_FIELDS", "WriteContext", "decode_files", "run_tasks"]
