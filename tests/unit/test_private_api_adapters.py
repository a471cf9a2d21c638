"""The private pyiceberg and Spark APIs behind lakehouse.adapters still look the way the adapters use them.

Pure Python (no JVM): a pyiceberg or pyspark upgrade fails here, naming the symbol that changed,
before a Bronze, Silver or Gold job breaks. After checking an upgrade against the adapter, add its
version to the adapter's ``TESTED_VERSIONS``. The JVM side (Iceberg's ``Spark3Util`` and Spark's
plan classes) is exercised by the Gold integration tests.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
from pyiceberg.io import load_file_io
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.metadata import TableMetadata, new_table_metadata
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import IntegerType, NestedField, StringType

from lakehouse.adapters import pyiceberg as iceberg_adapter
from lakehouse.adapters import spark as spark_adapter

SCHEMA = Schema(NestedField(1, "day", IntegerType(), required=False),
                NestedField(2, "name", StringType(), required=False))
SPEC = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="day"))


def params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def rows(days: list[int]) -> pa.Table:
    return pa.table({"day": pa.array(days, pa.int32()), "name": [f"n{i}" for i in range(len(days))]})


def table_metadata(tmp_path: Path) -> TableMetadata:
    # new_table_metadata renumbers the partition field ids; the spec is the same.
    return new_table_metadata(SCHEMA, SPEC, UNSORTED_SORT_ORDER, (tmp_path / "t").as_uri(), {})


# pyiceberg


def test_installed_pyiceberg_is_a_tested_version() -> None:
    installed = iceberg_adapter.installed_version()
    assert installed in iceberg_adapter.TESTED_VERSIONS, (
        f"pyiceberg {installed} is not one lakehouse.adapters.pyiceberg was checked against "
        f"({sorted(iceberg_adapter.TESTED_VERSIONS)}): check write_file, WriteTask, _determine_partitions and "
        "DataFile pickling, then add the version")


def test_write_file_and_write_task_have_the_expected_shape() -> None:
    from pyiceberg.io.pyarrow import write_file
    from pyiceberg.table import WriteTask

    assert params(write_file) == ["io", "table_metadata", "tasks"]
    fields = {f.name for f in dataclasses.fields(WriteTask)}
    assert {"write_uuid", "task_id", "schema", "record_batches", "partition_key"} <= fields
    task = WriteTask(write_uuid=uuid.UUID(int=7), task_id=3, schema=SCHEMA, record_batches=[])
    assert task.generate_data_file_filename("parquet") == f"00000-3-{uuid.UUID(int=7)}.parquet"


def test_determine_partitions_splits_by_the_spec() -> None:
    from pyiceberg.io.pyarrow import _determine_partitions

    assert params(_determine_partitions) == ["spec", "schema", "arrow_table"]
    parts = iceberg_adapter.split_partitions(SPEC, SCHEMA, rows([1, 2, 1]))
    assert sorted((key.partition[0], key.to_path(), part.column("name").to_pylist()) for key, part in parts) == [
        (1, "day=1", ["n0", "n2"]), (2, "day=2", ["n1"])]
    assert all(part.schema == rows([1]).schema for _, part in parts)  # no helper columns left behind


def test_write_data_files_writes_one_named_file_per_part(tmp_path: Path) -> None:
    metadata = table_metadata(tmp_path)
    io = load_file_io({}, metadata.location)
    parts = [(key, part.to_batches()) for key, part in iceberg_adapter.split_partitions(
        metadata.spec(), metadata.schema(), rows([5, 6, 6]))]
    files = iceberg_adapter.write_data_files(io, metadata, 9, parts)
    assert sorted((f.partition[0], f.record_count) for f in files) == [(5, 1), (6, 2)]
    names = [f.file_path.rsplit("/", 1)[1] for f in files]
    assert all(re.fullmatch(r"00000-9-[0-9a-f-]{36}\.parquet", n) for n in names) and len(set(names)) == 2
    assert all(f"/day={f.partition[0]}/" in f.file_path and f.file_size_in_bytes > 0 for f in files)


def test_data_files_survive_the_task_to_driver_round_trip(tmp_path: Path) -> None:
    from pyiceberg.manifest import DataFile

    metadata = table_metadata(tmp_path)
    key, part = iceberg_adapter.split_partitions(metadata.spec(), metadata.schema(), rows([4, 4]))[0]
    io = load_file_io({}, metadata.location)
    files = iceberg_adapter.write_data_files(io, metadata, 0, [(key, part.to_batches())])
    blob = iceberg_adapter.encode_files(files)
    assert isinstance(blob, bytes)
    [back] = iceberg_adapter.decode_files(blob)
    assert isinstance(back, DataFile)
    assert (back.file_path, back.record_count, back.partition, back.file_size_in_bytes) == \
        (files[0].file_path, 2, files[0].partition, files[0].file_size_in_bytes)
    assert back.partition[0] == 4 and back.value_counts == files[0].value_counts
    assert iceberg_adapter.decode_files(iceberg_adapter.encode_files([])) == []


# pyspark


def test_metadata_updates_apply_through_pyiceberg_private_steps(tmp_path: Path) -> None:
    from pyiceberg.table.update import SetPropertiesUpdate, update_table_metadata

    base = table_metadata(tmp_path)
    updates = (SetPropertiesUpdate(updates={"k": "v"}),)
    staged, changed = iceberg_adapter.apply_table_updates(base, updates, "s3://w/t/metadata/00000.json")
    assert changed and staged.properties["k"] == "v"
    assert [entry.metadata_file for entry in staged.metadata_log] == ["s3://w/t/metadata/00000.json"]
    assert staged.model_dump(exclude={"last_updated_ms", "metadata_log"}) == update_table_metadata(
        base, updates).model_dump(exclude={"last_updated_ms", "metadata_log"})
    same, changed = iceberg_adapter.apply_table_updates(base, (), None)
    assert (same, changed) == (base, False)


def test_the_error_chain_reads_pysparks_private_handles() -> None:
    from pyspark import SparkContext
    from pyspark.errors.exceptions.captured import CapturedException

    assert "_gateway" in vars(SparkContext)
    assert spark_adapter.jvm_gateway() is SparkContext._gateway
    source = inspect.getsource(CapturedException.__init__)
    assert re.search(r"self\._origin\s*=\s*origin", source), "CapturedException no longer keeps the JVM object"
    jvm_object = object()
    captured = CapturedException.__new__(CapturedException)
    captured._origin = jvm_object
    assert spark_adapter.captured_jvm_exception(captured) is jvm_object
    assert spark_adapter.captured_jvm_exception(ValueError("plain")) is None


def test_installed_pyspark_is_a_tested_version() -> None:
    import pyspark

    installed = spark_adapter.installed_version()
    assert installed == pyspark.__version__
    assert installed in spark_adapter.TESTED_VERSIONS, (
        f"pyspark {installed} is not one lakehouse.adapters.spark was checked against "
        f"({sorted(spark_adapter.TESTED_VERSIONS)}): check DataFrame._jdf, SparkSession._jvm/_jsparkSession and "
        "the plan walk (Gold integration tests), then add the version")


def test_iceberg_runtime_is_the_tested_one() -> None:
    from lakehouse.spark import ICEBERG_JAR

    assert ICEBERG_JAR == spark_adapter.TESTED_ICEBERG_RUNTIME, (
        f"{ICEBERG_JAR}: check Spark3Util.loadIcebergTable and the BatchScanExec metrics with the Gold integration "
        "tests, then update lakehouse.adapters.spark.TESTED_ICEBERG_RUNTIME")


def test_executed_plan_reads_the_dataframes_private_java_handle() -> None:
    from pyspark.sql import DataFrame

    assert params(DataFrame.__init__)[:3] == ["self", "jdf", "sql_ctx"]
    plan = object()
    jdf = SimpleNamespace(queryExecution=lambda: SimpleNamespace(executedPlan=lambda: plan))
    # pyspark's own constructor stores the Java DataFrame as _jdf (no JVM needed for that).
    df = DataFrame(jdf, SimpleNamespace(_sc=None))  # type: ignore[arg-type]
    assert spark_adapter.executed_plan(df) is plan


def test_spark_session_keeps_the_jvm_handles_the_adapter_reads() -> None:
    from pyspark.sql import SparkSession

    assert params(SparkSession.__init__)[:3] == ["self", "sparkContext", "jsparkSession"]
    source = inspect.getsource(SparkSession.__init__)
    assert re.search(r"self\._jvm\s*=", source) and re.search(r"self\._jsparkSession\s*=\s*jsparkSession", source)
    calls: list[tuple[Any, str]] = []
    util = SimpleNamespace(loadIcebergTable=lambda session, name: calls.append((session, name)) or "table")
    jvm = SimpleNamespace(org=SimpleNamespace(apache=SimpleNamespace(iceberg=SimpleNamespace(
        spark=SimpleNamespace(Spark3Util=util)))))
    session = SimpleNamespace(_jvm=jvm, _jsparkSession="jsession")
    assert spark_adapter.load_iceberg_table(session, "cat.db.t") == "table"  # type: ignore[arg-type]
    assert calls == [("jsession", "cat.db.t")]


class _Seq:
    """A Scala Seq as py4j shows it."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def size(self) -> int:
        return len(self.items)

    def apply(self, i: int) -> Any:
        return self.items[i]


class _JavaIterator:
    def __init__(self, items: list[str]) -> None:
        self.items = list(items)

    def hasNext(self) -> bool:  # noqa: N802 - the Java name
        return bool(self.items)

    def next(self) -> str:
        return self.items.pop(0)


class _Node:
    """A Spark plan node as py4j shows it: class name, children, subqueries, SQL metrics, and the
    accessor of the plan a wrapper node wraps (``wrapped``)."""

    def __init__(self, kind: str, children: tuple[_Node, ...] = (), subqueries: tuple[_Node, ...] = (),
                 table: str = "", metrics: dict[str, int] | None = None, **wrapped: _Node) -> None:
        self.kind, self._children, self._subqueries = kind, list(children), list(subqueries)
        self._table, self._metrics = table, metrics or {}
        for accessor, node in wrapped.items():
            setattr(self, accessor, lambda node=node: node)

    def getClass(self) -> Any:  # noqa: N802 - the Java name
        return SimpleNamespace(getSimpleName=lambda: self.kind)

    def children(self) -> _Seq:
        return _Seq(self._children)

    def subqueries(self) -> _Seq:
        return _Seq(self._subqueries)

    def table(self) -> Any:
        return SimpleNamespace(name=lambda: self._table)

    def metrics(self) -> Any:
        return SimpleNamespace(keySet=lambda: SimpleNamespace(iterator=lambda: _JavaIterator(list(self._metrics))),
                               apply=lambda key: SimpleNamespace(value=lambda: self._metrics[key]))


def test_the_plan_walk_finds_scans_behind_wrappers_stages_and_subqueries() -> None:
    gold = _Node("BatchScanExec", table="cat.db.gold", metrics={"resultDataFiles": 2, "skippedDataFiles": 5})
    bars = _Node("BatchScanExec", table="cat.db.bars", metrics={"resultDataFiles": 1})
    stage = _Node("ShuffleQueryStageExec", plan=_Node("ProjectExec", children=(gold,)))
    join = _Node("SortMergeJoinExec", children=(stage,), subqueries=(_Node("SubqueryExec", children=(bars,)),))
    root = _Node("CommandResultExec", commandPhysicalPlan=_Node("AdaptiveSparkPlanExec", executedPlan=join))
    df = SimpleNamespace(_jdf=SimpleNamespace(queryExecution=lambda: SimpleNamespace(executedPlan=lambda: root)))
    assert spark_adapter.batch_scan_metrics(df) == [  # type: ignore[arg-type]
        ("cat.db.bars", {"resultDataFiles": 1}), ("cat.db.gold", {"resultDataFiles": 2, "skippedDataFiles": 5})]
