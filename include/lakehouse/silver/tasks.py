"""What one Spark task of a Silver micro-batch does: decode, validate, write Silver and DLQ data files.

Each task streams its Bronze rows (Arrow batches from ``mapInArrow``) through
:func:`~lakehouse.silver.validate.validate_batch`, turns the valid rows into Silver rows and the
failing ones into dead-letter rows (raw bytes kept), and writes both as Parquet data files of
their tables (:class:`~lakehouse.iceberg_files.DataFileWriter`: pyiceberg's writer, with the
tables' partitioning, field ids, column metrics and compression). It returns only the files'
metadata and its counts; the driver commits each table's files in one tagged commit
(:mod:`lakehouse.silver.job`).

Why here and not through Spark's Iceberg writer: measured on this machine, sending the decoded
rows back to the JVM (Arrow -> rows) and writing them there cost more CPU than decoding them,
while pyarrow's Parquet writer costs a fraction of it. Spark still plans the micro-batch, reads
Bronze, spreads the work over the executors and owns the checkpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse import names
from lakehouse.gc_pause import gc_paused
from lakehouse.iceberg_files import DataFileWriter, decode_files, encode_files
from lakehouse.settings import Settings
from lakehouse.silver.decode import decoder_for
from lakehouse.silver.rules import Rule, for_exchange
from lakehouse.silver.validate import ERROR_REASON, ERROR_TYPE, validate_batch

if TYPE_CHECKING:
    from pyiceberg.table import Table

VALUE = "value"
US = pa.timestamp("us", "UTC")

# A dead-letter row whose recheck passed: see BatchContext.recheck.
RECHECK_PASSED = "passed_on_recheck"
RECHECK_REASON = ("failed when the batch was written to Silver but passed when re-checked for the dead-letter "
                  "write (a writer schema registered in between?); 'lakehouse dlq replay' moves it to Silver")

# What each task returns to the driver (one row per task), as Arrow fields and as Spark DDL.
RESULT_FIELDS = (("task", pa.int32()), ("valid", pa.int64()), ("dead", pa.string()),
                 ("silver_files", pa.binary()), ("dlq_files", pa.binary()))
_DDL = {pa.int32(): "int", pa.int64(): "long", pa.string(): "string", pa.binary(): "binary"}
RESULT_DDL = ", ".join(f"{name} {_DDL[kind]}" for name, kind in RESULT_FIELDS)


@dataclass(frozen=True)
class TableTarget:
    """What a task needs to write data files of a table: its metadata (without snapshot history,
    which writing does not need and which grows with every commit) and its FileIO properties."""

    metadata_json: str
    io_properties: dict[str, str]

    @classmethod
    def of(cls, table: Table) -> TableTarget:
        slim = table.metadata.model_copy(update={"snapshots": [], "snapshot_log": [], "metadata_log": [],
                                                 "refs": {}, "current_snapshot_id": None})
        return cls(slim.model_dump_json(), dict(table.io.properties))

    def writer(self, rows_per_file: int, task_id: int) -> DataFileWriter:
        return DataFileWriter(self.metadata_json, self.io_properties, rows_per_file, task_id)


@dataclass(frozen=True)
class BatchContext:
    """One micro-batch's instructions to its tasks.

    ``silver``/``dlq`` are None for a table whose commit of this batch already exists (a retried
    batch writes only what is missing). ``recheck`` means the batch's Silver commit exists and
    the rows given are exactly the ones it lacks: each becomes a dead-letter row, and one that
    passes now (a writer schema registered since) is dead-lettered as :data:`RECHECK_PASSED`
    rather than lost.
    """

    settings: Settings
    rules: tuple[Rule, ...]
    bronze_source: str
    silver: TableTarget | None
    dlq: TableTarget | None
    now_us: int
    rows_per_file: int
    recheck: bool = False

    @property
    def exchange(self) -> str:
        """The exchange whose Bronze table (``bronze_source``) the rows come from."""
        for exchange in self.settings.exchanges:
            if names.bronze_table(exchange) == self.bronze_source:
                return exchange
        raise ValueError(f"bronze_source {self.bronze_source!r} is not the Bronze table of a configured exchange")

    @property
    def row_rules(self) -> tuple[Rule, ...]:
        """``rules`` plus the rule that each record belongs to :attr:`exchange`: a Bronze table holds
        one exchange's topic, so a record naming another exchange is dead-lettered, not stored."""
        return for_exchange(self.rules, self.exchange)


def _timestamp(us: int, n: int) -> pa.Array:
    """``n`` times the instant ``us`` (microseconds since the epoch)."""
    return pa.repeat(pa.scalar(us, US), n)


def silver_batch(validated: pa.RecordBatch, schema: pa.Schema, validated_at_us: int) -> pa.RecordBatch:
    """The valid rows as rows of the Silver table (``schema``, its Arrow form)."""
    rows = validated.filter(pc.is_null(validated.column(ERROR_TYPE)))
    n = rows.num_rows
    derived = {
        "validation_timestamp": _timestamp(validated_at_us, n),
        "exchange_date": pc.cast(pc.cast(rows.column("timestamp"), US), pa.date32()),
    }
    arrays = [derived[f.name] if f.name in derived else rows.column(f.name) for f in schema]
    return pa.RecordBatch.from_arrays([a.cast(f.type) for a, f in zip(arrays, schema)], schema=schema)


def dlq_batch(validated: pa.RecordBatch, schema: pa.Schema, bronze_source: str, at_us: int,
              recheck: bool = False) -> pa.RecordBatch:
    """The failing rows (every row if ``recheck``) as rows of the dead-letter table."""
    if recheck:
        passed = pc.is_null(validated.column(ERROR_TYPE))
        rows = validated.set_column(validated.schema.get_field_index(ERROR_TYPE), ERROR_TYPE,
                                    pc.if_else(passed, RECHECK_PASSED, validated.column(ERROR_TYPE)))
        rows = rows.set_column(rows.schema.get_field_index(ERROR_REASON), ERROR_REASON,
                               pc.if_else(passed, RECHECK_REASON, rows.column(ERROR_REASON)))
    else:
        rows = validated.filter(pc.is_valid(validated.column(ERROR_TYPE)))
    n = rows.num_rows
    at = _timestamp(at_us, n)
    derived = {
        "raw_bytes": rows.column(VALUE),
        "bronze_source": pa.array([bronze_source] * n, pa.string()),
        "dlq_timestamp": at,
        "dlq_date": pc.cast(at, pa.date32()),
        "replayed": pa.array([False] * n, pa.bool_()),
        "replayed_at": pa.nulls(n, US),
    }
    arrays = [derived[f.name] if f.name in derived else rows.column(f.name) for f in schema]
    return pa.RecordBatch.from_arrays([a.cast(f.type) for a, f in zip(arrays, schema)], schema=schema)


def run_task(batches: Iterator[pa.RecordBatch], ctx: BatchContext) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: validate this task's Bronze rows, write the data files, report them.

    The cyclic garbage collector is paused while the task runs (see :mod:`lakehouse.gc_pause`).
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    task_id = context.partitionId() if context is not None else 0
    decoder = decoder_for(ctx.settings)
    decoder.forget_failures()
    silver = ctx.silver.writer(ctx.rows_per_file, task_id) if ctx.silver is not None else None
    dlq = ctx.dlq.writer(ctx.rows_per_file, task_id) if ctx.dlq is not None else None
    checks = ctx.row_rules
    valid = 0
    dead: Counter[str] = Counter()
    with gc_paused():
        for batch in batches:
            validated = validate_batch(batch, decoder, checks, VALUE, keep_value=dlq is not None)
            failing = validated.column(ERROR_TYPE)
            if ctx.recheck:
                types = pc.fill_null(failing, RECHECK_PASSED)
            else:
                valid += failing.null_count
                types = failing.drop_null()
                if silver is not None:
                    silver.add(silver_batch(validated, silver.schema, ctx.now_us))
            if len(types):
                counts = pc.value_counts(types)
                dead.update(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))
                if dlq is not None:
                    dlq.add(dlq_batch(validated, dlq.schema, ctx.bronze_source, ctx.now_us, ctx.recheck))
        for files in (silver, dlq):
            if files is not None:
                files.flush()
    schema = pa.schema([pa.field(name, kind) for name, kind in RESULT_FIELDS])
    yield pa.RecordBatch.from_arrays([
        pa.array([task_id], pa.int32()), pa.array([valid], pa.int64()), pa.array([json.dumps(dead)], pa.string()),
        pa.array([encode_files(silver.files if silver else [])], pa.binary()),
        pa.array([encode_files(dlq.files if dlq else [])], pa.binary()),
    ], schema=schema)


# decode_files: re-exported for the driver (lakehouse.silver.job), which reads the tasks' results.
__all__ = ["RECHECK_PASSED", "RECHECK_REASON", "RESULT_DDL", "RESULT_FIELDS", "BatchContext", "TableTarget",
           "decode_files", "dlq_batch", "run_task", "silver_batch"]
