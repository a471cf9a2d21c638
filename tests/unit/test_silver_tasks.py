"""A Silver task without Spark: one pass writes Silver and dead-letter data files the driver can commit."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from lakehouse import avro, names, tables
from lakehouse.catalog import append_data_files, load_catalog
from lakehouse.iceberg_files import partitions
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings
from lakehouse.silver import rules
from lakehouse.silver.tasks import RECHECK_PASSED, BatchContext, TableTarget, run_task
from lakehouse.silver.synthetic import trade

EX = "binance"
INGESTED = dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)
REF_US = int(INGESTED.timestamp() * 1_000_000)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """A catalog, registry and tables under a temporary home (no broker, no Spark)."""
    s = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home")})
    tables.ensure_tables(s)
    return s


def bronze_batch(values: list[bytes | None], first_offset: int = 0) -> pa.RecordBatch:
    n = len(values)
    return pa.RecordBatch.from_pydict({
        "value": pa.array(values, pa.binary()),
        "bronze_topic": pa.array(["crypto.trades.binance"] * n),
        "bronze_partition": pa.array([1] * n, pa.int32()),
        "bronze_offset": pa.array(range(first_offset, first_offset + n), pa.int64()),
        rules.REFERENCE_TIME_US: pa.array([REF_US] * n, pa.int64()),
    })


def context(settings: Settings, silver: bool = True, recheck: bool = False) -> BatchContext:
    catalog = load_catalog(settings)
    return BatchContext(settings=settings, rules=rules.RULES, bronze_source=names.bronze_table(EX),
                        silver=TableTarget.of(catalog.load_table(names.silver_table(EX))) if silver else None,
                        dlq=TableTarget.of(catalog.load_table(names.DLQ_TABLE)), now_us=REF_US + 5_000_000,
                        rows_per_file=settings.silver_rows_per_file, recheck=recheck)


def run(settings: Settings, ctx: BatchContext, *batches: pa.RecordBatch) -> dict[str, object]:
    """Run one task, commit what it wrote the way the driver does, return its result row."""
    from lakehouse.silver.tasks import decode_files

    (result,) = [row for out in run_task(iter(batches), ctx) for row in out.to_pylist()]
    catalog = load_catalog(settings)
    for table, column in ((names.silver_table(EX), "silver_files"), (names.DLQ_TABLE, "dlq_files")):
        files = decode_files(result[column])
        if files:
            append_data_files(catalog.load_table(table), files, {names.SILVER_BATCH_PROPERTY: "q:0"})
    return result


def rows(settings: Settings, table: str) -> dict[int, dict[str, object]]:
    data = load_catalog(settings).load_table(table).scan().to_arrow().to_pylist()
    return {r["bronze_offset"]: r for r in data}


def test_one_pass_writes_valid_rows_to_silver_and_the_rest_to_the_dead_letter_table(settings: Settings) -> None:
    sid = registry_from_settings(settings).register("tasks-test-value", avro.load_schema())
    parsed = avro.parsed_trade_schema()
    day_before = REF_US - 86_400_000_000
    values = [avro.encode(sid, parsed, trade(1, REF_US - 1_000)),
              avro.encode(sid, parsed, trade(2, day_before)),                       # another trade day
              avro.encode(sid, parsed, trade(3, REF_US - 1_000, price=Decimal(0))),  # breaks a rule
              b"\x07junk",                                                          # bad magic byte
              None]                                                                 # tombstone

    result = run(settings, context(settings), bronze_batch(values[:2], 10), bronze_batch(values[2:], 12))

    assert result["valid"] == 2
    assert json.loads(str(result["dead"])) == {"invalid_price": 1, "bad_magic_byte": 1, "truncated": 1}
    silver = rows(settings, names.silver_table(EX))
    assert sorted(silver) == [10, 11]
    assert silver[10]["price"] == trade(1, 0)["price"] and silver[10]["bronze_partition"] == 1
    assert silver[10]["exchange_date"] == dt.date(2026, 1, 1) and silver[11]["exchange_date"] == dt.date(2025, 12, 31)
    assert silver[10]["schema_id"] == sid and silver[10]["validation_timestamp"] is not None
    files = load_catalog(settings).load_table(names.silver_table(EX)).inspect.files().to_pylist()
    assert len(files) == 2  # one data file per trade day, each in its partition
    dead = rows(settings, names.DLQ_TABLE)
    assert sorted(dead) == [12, 13, 14]
    assert dead[12]["error_type"] == "invalid_price" and dead[12]["raw_bytes"] == values[2]
    assert dead[12]["error_reason"] == "price_positive: price must be greater than 0 (got 0.00000000)"
    assert dead[13]["raw_bytes"] == b"\x07junk" and dead[14]["raw_bytes"] is None
    assert {r["bronze_source"] for r in dead.values()} == {names.bronze_table(EX)}
    assert all(r["replayed"] is False and r["dlq_date"] == dt.date(2026, 1, 1) for r in dead.values())


def test_a_recheck_dead_letters_every_row_given_and_marks_the_ones_that_pass(settings: Settings) -> None:
    sid = registry_from_settings(settings).register("tasks-test-value", avro.load_schema())
    good = avro.encode(sid, avro.parsed_trade_schema(), trade(1, REF_US - 1_000))

    result = run(settings, context(settings, silver=False, recheck=True), bronze_batch([good, b"\x00\x00"]))

    assert result["valid"] == 0 and not rows(settings, names.silver_table(EX))
    dead = rows(settings, names.DLQ_TABLE)
    assert dead[0]["error_type"] == RECHECK_PASSED and dead[0]["raw_bytes"] == good
    assert "lakehouse dlq replay" in dead[0]["error_reason"] and dead[1]["error_type"] == "truncated"


def test_rows_of_one_partition_are_written_as_they_are(settings: Settings) -> None:
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    metadata = load_catalog(settings).load_table(names.silver_table(EX)).metadata
    schema = schema_to_pyarrow(metadata.schema())
    days = [dt.date(2026, 1, 1), dt.date(2026, 1, 1), dt.date(2026, 1, 2)]
    data = pa.Table.from_pylist([{"exchange_date": d, "bronze_offset": i} for i, d in enumerate(days)], schema=schema)

    day = data.slice(0, 2)
    (one,) = partitions(day, metadata)
    assert one[1] is day and one[0] is not None  # not copied
    assert one[0].partition[0] == (dt.date(2026, 1, 1) - dt.date(1970, 1, 1)).days
    several = partitions(data, metadata)
    assert sorted(part.num_rows for _, part in several) == [1, 2]
