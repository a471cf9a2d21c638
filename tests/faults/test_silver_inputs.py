"""Inputs Silver used to accept: an empty exchange, trade_id or currency, a record of another
exchange than its topic's, a decimal too large for decimal(18,8). Each is dead-lettered in its own
category by the Silver tasks, the Silver job and both replays."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lakehouse import avro, names, tables
from lakehouse.catalog import append_data_files, load_catalog
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings
from lakehouse.silver import rules
from lakehouse.silver.synthetic import trade
from lakehouse.silver.tasks import BatchContext, TableTarget, decode_files, run_task

pytestmark = [pytest.mark.fault]

EX = "binance"
# (overrides of a valid Binance trade, or the other exchange's trade, and the category it must get)
BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"exchange": ""}, "empty_exchange"),
    ({"exchange": "  "}, "empty_exchange"),
    ({"trade_id": " "}, "empty_trade_id"),
    ({"currency": ""}, "empty_currency"),
    ({"exchange": "KRAKEN"}, "exchange_mismatch"),  # a Kraken trade produced to Binance's topic
    ({"quantity": Decimal("12345678901")}, "decimal_overflow"),  # 11 integer digits, decimal(18,8) has 10
    ({"price": Decimal("-99999999999")}, "decimal_overflow"),
]
EXPECTED_COUNTS = {"empty_exchange": 2, "empty_trade_id": 1, "empty_currency": 1, "exchange_mismatch": 1,
                   "decimal_overflow": 2}


def values(sid: int, at_us: int) -> list[bytes]:
    """A valid trade at offset 0, then one trade per bad input."""
    parsed = avro.parsed_trade_schema()
    return [avro.encode(sid, parsed, trade(0, at_us))] + [
        avro.encode(sid, parsed, trade(i + 1, at_us, **overrides)) for i, (overrides, _) in enumerate(BAD_INPUTS)]


@pytest.fixture()
def local(tmp_path: Path) -> Settings:
    """A catalog, registry and tables under a temporary home (no broker, no Spark)."""
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home")})
    tables.ensure_tables(settings)
    return settings


@pytest.mark.parametrize("recheck", [False, True], ids=["batch", "dead-letter-recheck"])
def test_a_silver_task_dead_letters_each_bad_input_in_its_category(local: Settings, recheck: bool) -> None:
    sid = registry_from_settings(local).register(names.value_subject(names.topic(local, EX)), avro.load_schema())
    ref_us = int(dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
    data = values(sid, ref_us - 1_000_000)
    n = len(data)
    batch = pa.RecordBatch.from_pydict({
        "value": pa.array(data, pa.binary()),
        "bronze_topic": pa.array([names.topic(local, EX)] * n),
        "bronze_partition": pa.array([0] * n, pa.int32()),
        "bronze_offset": pa.array(range(n), pa.int64()),
        rules.REFERENCE_TIME_US: pa.array([ref_us] * n, pa.int64()),
    })
    catalog = load_catalog(local)
    silver, dlq = catalog.load_table(names.silver_table(EX)), catalog.load_table(names.DLQ_TABLE)
    # As the Silver job builds it: the rules of the settings; the task knows its exchange from bronze_source.
    ctx = BatchContext(settings=local, rules=rules.for_settings(local), bronze_source=names.bronze_table(EX),
                       silver=None if recheck else TableTarget.of(silver), dlq=TableTarget.of(dlq),
                       now_us=ref_us + 5_000_000, rows_per_file=local.silver_rows_per_file, recheck=recheck)

    (result,) = [row for out in run_task(iter([batch]), ctx) for row in out.to_pylist()]

    dead = json.loads(result["dead"])
    assert dead == ({**EXPECTED_COUNTS, "passed_on_recheck": 1} if recheck else EXPECTED_COUNTS)
    append_data_files(dlq, decode_files(result["dlq_files"]), {names.SILVER_BATCH_PROPERTY: "q:0"})
    written = {r["bronze_offset"]: r for r in catalog.load_table(names.DLQ_TABLE).scan().to_arrow().to_pylist()}
    assert {o: written[o]["error_type"] for o in range(1, n)} == {i + 1: c for i, (_, c) in enumerate(BAD_INPUTS)}
    assert all(written[o]["raw_bytes"] == data[o] for o in range(1, n))
    assert "exchange must be 'BINANCE'" in written[5]["error_reason"] and "(got KRAKEN)" in written[5]["error_reason"]
    assert written[6]["error_reason"].startswith("quantity does not fit decimal(18,8): 12345678901.00000000")
    assert written[3]["error_reason"] == "trade_id_present: trade_id must not be empty (got  )"
    assert result["valid"] == (0 if recheck else 1)
    assert sum(f.record_count for f in decode_files(result["silver_files"])) == (0 if recheck else 1)
    assert (written[0]["error_type"] == "passed_on_recheck") if recheck else (0 not in written)


@pytest.mark.integration
def test_the_silver_job_and_both_replays_dead_letter_each_bad_input_in_its_category(isolated: Settings) -> None:
    from lakehouse.silver.job import run
    from lakehouse.silver.replay import replay_dlq, replay_silver
    from lakehouse.silver.synthetic import bronze_frame
    from lakehouse.spark import session

    spark = session(isolated, "silver-inputs-test")
    sid = registry_from_settings(isolated).register(names.value_subject(names.topic(isolated, EX)),
                                                    avro.load_schema())
    now = dt.datetime.now(dt.timezone.utc)
    bronze_frame(spark, values(sid, int(now.timestamp() * 1_000_000) - 1_000_000), names.topic(isolated, EX), now) \
        .coalesce(1).writeTo(names.qualified(isolated, names.bronze_table(EX))).append()

    def state() -> tuple[list[str], dict[int, str]]:
        silver = spark.table(names.qualified(isolated, names.silver_table(EX))).collect()
        dlq = spark.table(names.qualified(isolated, names.DLQ_TABLE)).where("NOT replayed").collect()
        return sorted(r["trade_id"] for r in silver), {r["bronze_offset"]: r["error_type"] for r in dlq}

    summary = run(spark, isolated, EX)

    assert summary.valid == 1 and summary.dead_lettered == EXPECTED_COUNTS
    expected = (["0"], {i + 1: category for i, (_, category) in enumerate(BAD_INPUTS)})
    assert state() == expected

    rebuilt = replay_silver(spark, isolated, EX)  # the Spark mapping of the replays: the same rules
    assert rebuilt.valid == 1 and rebuilt.dead_lettered == EXPECTED_COUNTS
    assert state() == expected

    revalidated = replay_dlq(spark, isolated, exchange=EX)
    assert revalidated.valid == 0 and revalidated.dead_lettered == EXPECTED_COUNTS
    assert state() == expected
