"""A Bronze task's data files: written from Arrow with pyiceberg, in the run's ingestion-day partition."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.table.metadata import TableMetadata, new_table_metadata
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER
from pyiceberg.transforms import IdentityTransform

from lakehouse import tables
from lakehouse.bronze import tasks as bronze_tasks
from lakehouse.bronze.kafka import ReadContext
from lakehouse.bronze.planning import OffsetRange
from lakehouse.bronze.tasks import WriteContext, decode_files
from lakehouse.iceberg_files import DataFileWriter, encode_files

DEF = tables.bronze_def("binance")
INGESTED = dt.datetime(2026, 3, 4, 23, 59, 59, tzinfo=dt.timezone.utc)
INGESTED_US = int(INGESTED.timestamp() * 1_000_000)


def metadata(tmp_path: Path, spec: PartitionSpec | None = None) -> TableMetadata:
    schema = DEF.schema()
    return new_table_metadata(schema, spec or DEF.partition_spec(schema), UNSORTED_SORT_ORDER,
                              (tmp_path / "table").as_uri(), {"write.parquet.compression-codec": "zstd"})


def batch(offsets: range, partition: int = 1) -> pa.RecordBatch:
    rows = [{"key": None if o % 2 else b"BTC-USDT", "value": f"v{o}".encode(), "topic": "crypto.trades.binance",
             "partition": partition, "offset": o, "timestamp": INGESTED, "timestampType": 0,
             "headers": [{"key": "n", "value": str(o).encode()}], "ingestion_timestamp": INGESTED} for o in offsets]
    return pa.RecordBatch.from_pylist(rows, schema=DEF.schema().as_arrow())


def write(meta: TableMetadata, *batches: pa.RecordBatch, task_id: int = 3) -> list[Any]:
    """What a task writes of ``batches`` (rows_per_file above their total: one flush at the end),
    as the driver reads it back."""
    writer = DataFileWriter(meta.model_dump_json(), {}, rows_per_file=1000, task_id=task_id)
    for b in batches:
        writer.add(b)
    writer.flush()
    return decode_files(encode_files(writer.files))


def run_one_task(tmp_path: Path, monkeypatch: Any, read: Iterable[pa.RecordBatch],
                 rows_per_file: int) -> dict[str, Any]:
    """``run_tasks`` for one task whose ranges read as ``read``; its result row."""
    ranges = ((OffsetRange("crypto.trades.binance", 1, 0, 25),),)
    monkeypatch.setattr(bronze_tasks, "read_ranges", lambda group, ctx: iter(read))
    ctx = WriteContext(metadata_json=metadata(tmp_path).model_dump_json(), io_properties={},
                       rows_per_file=rows_per_file)
    read_ctx = ReadContext(bootstrap="unused:9092", group_id="unused", timeout_s=1, ingestion_us=INGESTED_US,
                           schema=DEF.schema().as_arrow())
    [result] = bronze_tasks.run_tasks(iter([pa.record_batch([pa.array([0], pa.int64())], names=["id"])]), ranges,
                                      read_ctx, ctx)
    row: dict[str, Any] = result.to_pylist()[0]
    return row


def test_rows_land_in_the_ingestion_day_partition(tmp_path: Path) -> None:
    [data_file] = write(metadata(tmp_path), batch(range(3)))
    assert "/ingestion_timestamp_day=2026-03-04/" in data_file.file_path
    assert data_file.partition[0] == (INGESTED.date() - dt.date(1970, 1, 1)).days


def test_a_spec_on_another_column_splits_the_rows_by_it(tmp_path: Path) -> None:
    schema = DEF.schema()
    spec = PartitionSpec(PartitionField(source_id=schema.find_field("partition").field_id, field_id=1000,
                                        transform=IdentityTransform(), name="partition"))
    files = write(metadata(tmp_path, spec), batch(range(0, 3), partition=1), batch(range(3, 5), partition=2))
    assert sorted((f.partition[0], f.record_count) for f in files) == [(1, 3), (2, 2)]
    assert all(f"/partition={f.partition[0]}/" in f.file_path for f in files)


def test_unpartitioned_table_files_have_no_partition(tmp_path: Path) -> None:
    [data_file] = write(metadata(tmp_path, UNPARTITIONED_PARTITION_SPEC), batch(range(3)))
    assert len(data_file.partition) == 0 and "/data/00000-3-" in data_file.file_path


def test_task_writes_one_data_file_with_every_row(tmp_path: Path) -> None:
    [data_file] = write(metadata(tmp_path), batch(range(0, 5)), batch(range(5, 8)))
    assert data_file.record_count == 8
    assert "/ingestion_timestamp_day=2026-03-04/00000-3-" in data_file.file_path
    written = pq.read_table(data_file.file_path.removeprefix("file://"))
    assert written.column("offset").to_pylist() == list(range(8))
    assert written.column("key").to_pylist()[:2] == [b"BTC-USDT", None]
    assert written.column("headers").to_pylist()[7] == [{"key": "n", "value": b"7"}]
    # Field ids are in the file, so Iceberg readers resolve columns by id.
    assert written.schema.field("offset").metadata[b"PARQUET:field_id"] == b"5"


def test_task_without_rows_writes_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    assert write(metadata(tmp_path), batch(range(0))) == []
    row = run_one_task(tmp_path, monkeypatch, [], rows_per_file=10)
    assert row["records"] == 0 and decode_files(row["data_files"]) == []
    assert not (tmp_path / "table").exists()


def test_task_flushes_a_file_every_rows_per_file_and_reports_counts(tmp_path: Path, monkeypatch: Any) -> None:
    row = run_one_task(tmp_path, monkeypatch, [batch(range(0, 10)), batch(range(10, 20)), batch(range(20, 25))],
                       rows_per_file=10)
    files = decode_files(row["data_files"])
    assert row["records"] == 25 and [f.record_count for f in files] == [10, 10, 5]
    assert row["task"] == 0 and all("/00000-0-" in f.file_path for f in files)
    # key + value bytes: "BTC-USDT" on even offsets, values "v0".."v24".
    assert row["bytes"] == 13 * 8 + sum(len(f"v{o}") for o in range(25))


def test_the_collector_is_paused_while_a_task_reads_and_restored_after(tmp_path: Path, monkeypatch: Any) -> None:
    import gc

    seen: list[bool] = []

    def reading() -> Iterator[pa.RecordBatch]:
        seen.append(gc.isenabled())
        yield batch(range(3))

    assert gc.isenabled()
    row = run_one_task(tmp_path, monkeypatch, reading(), rows_per_file=10)
    assert row["records"] == 3 and seen == [False] and gc.isenabled()
