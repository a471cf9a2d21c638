"""A Bronze task's data file: written from Arrow with pyiceberg, in the run's ingestion-day partition."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.table.metadata import TableMetadata, new_table_metadata
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER
from pyiceberg.transforms import IdentityTransform

from lakehouse import tables
from lakehouse.bronze.tasks import WriteContext, decode_files, partition_key, write_data_file

DEF = tables.bronze_def("binance")
INGESTED = dt.datetime(2026, 3, 4, 23, 59, 59, tzinfo=dt.timezone.utc)
INGESTED_US = int(INGESTED.timestamp() * 1_000_000)


def metadata(tmp_path: Path, spec: PartitionSpec | None = None) -> TableMetadata:
    schema = DEF.schema()
    return new_table_metadata(schema, spec or DEF.partition_spec(schema), UNSORTED_SORT_ORDER,
                              (tmp_path / "table").as_uri(), {"write.parquet.compression-codec": "zstd"})


def batch(offsets: range) -> pa.RecordBatch:
    rows = [{"key": None if o % 2 else b"BTC-USDT", "value": f"v{o}".encode(), "topic": "crypto.trades.binance",
             "partition": 1, "offset": o, "timestamp": INGESTED, "timestampType": 0,
             "headers": [{"key": "n", "value": str(o).encode()}], "ingestion_timestamp": INGESTED} for o in offsets]
    return pa.RecordBatch.from_pylist(rows, schema=DEF.schema().as_arrow())


def test_partition_key_is_the_ingestion_day(tmp_path: Path) -> None:
    key = partition_key(metadata(tmp_path), INGESTED_US)
    assert key is not None and key.to_path() == "ingestion_timestamp_day=2026-03-04"


def test_partition_key_refuses_a_spec_on_another_column(tmp_path: Path) -> None:
    schema = DEF.schema()
    spec = PartitionSpec(PartitionField(source_id=schema.find_field("partition").field_id, field_id=1000,
                                        transform=IdentityTransform(), name="partition"))
    with pytest.raises(ValueError, match="ingestion_timestamp only"):
        partition_key(metadata(tmp_path, spec), INGESTED_US)


def test_unpartitioned_table_has_no_key(tmp_path: Path) -> None:
    assert partition_key(metadata(tmp_path, UNPARTITIONED_PARTITION_SPEC), INGESTED_US) is None


def test_task_writes_one_data_file_with_every_row(tmp_path: Path) -> None:
    meta = metadata(tmp_path)
    ctx = WriteContext(metadata_json=meta.model_dump_json(), io_properties={}, rows_per_file=1000)
    [data_file] = decode_files(pickle.dumps(write_data_file([batch(range(0, 5)), batch(range(5, 8))], 3, ctx,
                                                            INGESTED_US)))
    assert data_file.record_count == 8
    assert "/ingestion_timestamp_day=2026-03-04/" in data_file.file_path
    written = pq.read_table(data_file.file_path.removeprefix("file://"))
    assert written.column("offset").to_pylist() == list(range(8))
    assert written.column("key").to_pylist()[:2] == [b"BTC-USDT", None]
    assert written.column("headers").to_pylist()[7] == [{"key": "n", "value": b"7"}]
    # Field ids are in the file, so Iceberg readers resolve columns by id.
    assert written.schema.field("offset").metadata[b"PARQUET:field_id"] == b"5"


def test_task_without_rows_writes_nothing(tmp_path: Path) -> None:
    ctx = WriteContext(metadata_json=metadata(tmp_path).model_dump_json(), io_properties={}, rows_per_file=1000)
    assert write_data_file([], 0, ctx, INGESTED_US) == []
    assert not (tmp_path / "table").exists()


def test_task_flushes_a_file_every_rows_per_file_and_reports_counts(tmp_path: Path, monkeypatch: Any) -> None:
    from lakehouse.bronze import tasks as bronze_tasks
    from lakehouse.bronze.kafka import ReadContext
    from lakehouse.bronze.planning import OffsetRange

    ranges = ((OffsetRange("crypto.trades.binance", 1, 0, 25),),)
    monkeypatch.setattr(bronze_tasks, "read_ranges",
                        lambda group, ctx: iter([batch(range(0, 10)), batch(range(10, 20)), batch(range(20, 25))]))
    write = WriteContext(metadata_json=metadata(tmp_path).model_dump_json(), io_properties={}, rows_per_file=10)
    read = ReadContext(bootstrap="unused:9092", group_id="unused", timeout_s=1, ingestion_us=INGESTED_US,
                       schema=DEF.schema().as_arrow())
    [result] = bronze_tasks.run_tasks(iter([pa.record_batch([pa.array([0], pa.int64())], names=["id"])]), ranges,
                                      read, write)
    row = result.to_pylist()[0]
    files = decode_files(row["data_files"])
    assert row["records"] == 25 and [f.record_count for f in files] == [10, 10, 5]
    # key + value bytes: "BTC-USDT" on even offsets, values "v0".."v24".
    assert row["bytes"] == 13 * 8 + sum(len(f"v{o}") for o in range(25))
