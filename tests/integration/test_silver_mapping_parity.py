"""Silver's row mapping exists twice: in Arrow, in the streaming job's Spark tasks
(:func:`lakehouse.silver.tasks.run_task`: ``silver_batch``/``dlq_batch`` over ``validate_batch``), and
in Spark columns, in the replays (:func:`lakehouse.silver.transform.silver_rows`/``dlq_rows`` over
``transform``). Fed the same Bronze records (valid ones and at least one of every dead-letter
category a record can reach) at the same instant, both must give the same Silver rows and the same
dead-letter rows, column for column."""

from __future__ import annotations

import copy
import datetime as dt
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from local_checks import encode_with
from lakehouse import avro, names, tables
from lakehouse.catalog import load_catalog
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings
from lakehouse.silver import decode, rules
from lakehouse.silver.batch import batch_context, run_tasks
from lakehouse.silver.synthetic import bronze_frame, trade
from lakehouse.silver.transform import dlq_rows, from_bronze, silver_rows, transform

pytestmark = pytest.mark.integration

EX = "binance"
INGESTED = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)  # the reference time of the time rules
NOW = INGESTED + dt.timedelta(minutes=5, microseconds=123_456)  # when both paths write: the same instant
AT_US = int(INGESTED.timestamp() * 1_000_000) - 1_000_000
UNREGISTERED_ID = 4242
# Not reachable from a Bronze record: the decoder reads ``side`` as the schema's enum (BUY, SELL),
# and a writer whose enum has another symbol cannot be read at all (incompatible_schema, below).
UNREACHABLE = {"invalid_side"}


def _schema(field: str, kind: Any) -> dict[str, Any]:
    """The V2 schema with the type of ``field`` replaced by ``kind``."""
    schema = copy.deepcopy(avro.load_schema())
    next(f for f in schema["fields"] if f["name"] == field)["type"] = kind
    return schema


def _schemas() -> dict[str, dict[str, Any]]:
    base = avro.load_schema()
    newer = copy.deepcopy(base)
    newer["fields"].append({"name": "venue", "type": ["null", "string"], "default": None})
    older = copy.deepcopy(base)
    older["fields"] = [f for f in older["fields"] if f["name"] != "vendor_data"]
    coarse = _schema("price", {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2})
    hold = _schema("side", {"type": "enum", "name": "Side", "symbols": ["BUY", "SELL", "HOLD"]})
    quote = {"type": "record", "name": "Quote", "fields": [{"name": "bid", "type": "double"}]}
    return {"base": base, "newer": newer, "older": older, "coarse": coarse, "hold": hold, "quote": quote}


def records(settings: Settings) -> list[tuple[bytes | None, str | None]]:
    """(Kafka value, the dead-letter category it must get or None for a valid trade)."""
    registry = registry_from_settings(settings)
    subject = names.value_subject(names.topic(settings, EX))
    schemas = _schemas()
    ids = {name: registry.register(subject if name in ("base", "newer", "older") else f"parity-{name}-value", s)
           for name, s in schemas.items()}
    parsed = avro.parsed_trade_schema()

    def enc(i: int, **kw: Any) -> bytes:
        return avro.encode(ids["base"], parsed, trade(i, AT_US, **kw))

    def with_schema(name: str, record: dict[str, Any]) -> bytes:
        return encode_with(ids[name], schemas[name], record)

    good = enc(99)
    noise = random.Random(7)
    older = {k: v for k, v in trade(6, AT_US).items() if k != "vendor_data"}
    return [
        # valid: every shape of the optional fields, a newer and an older writer schema, a coarser decimal
        *[(enc(i), None) for i in range(5)],
        (with_schema("older", older), None),
        (with_schema("newer", {**trade(7, AT_US), "venue": "spot"}), None),
        (with_schema("coarse", trade(8, AT_US, price=Decimal("123.45"))), None),
        (enc(9, quantity=Decimal("9999999999.99999999"), vendor_data={}), None),      # the largest decimal(18,8)
        (enc(10, timestamp=AT_US - 2 * 86_400_000_000), None),                         # another day's partition
        # rule categories
        (enc(20, price=Decimal(0)), "invalid_price"),
        (enc(21, quantity=Decimal("-1")), "invalid_quantity"),
        (enc(22, symbol=""), "missing_symbol"),
        (enc(23, timestamp=AT_US + 3_600_000_000), "invalid_timestamp"),               # an hour in the future
        (enc(24, timestamp=AT_US - 400 * 86_400_000_000), "invalid_timestamp"),        # 400 days old
        (enc(25, message_id=""), "missing_message_id"),
        (enc(26, asset_class="equity"), "invalid_asset_class"),
        (enc(27, exchange="  "), "empty_exchange"),
        (enc(28, trade_id=" "), "empty_trade_id"),
        (enc(29, currency=""), "empty_currency"),
        (enc(30, exchange="KRAKEN"), "exchange_mismatch"),
        (enc(31, price=Decimal(0), symbol="", currency=""), "invalid_price"),          # several rules broken
        # decode categories
        (b"\x01" + good[1:], "bad_magic_byte"),
        (b"\x9f" + bytes(noise.getrandbits(8) for _ in range(40)), "bad_magic_byte"),
        (good[:len(good) // 2], "truncated"),
        (b"\x00\x00\x01", "truncated"),                                                 # shorter than the header
        (b"", "truncated"),
        (None, "truncated"),                                                            # a tombstone
        (avro.HEADER.pack(avro.MAGIC_BYTE, UNREGISTERED_ID) + good[5:], "unknown_schema_id"),
        (good + b"\x00\x00\x00", "corrupt_body"),
        (with_schema("quote", {"bid": 1.0}), "incompatible_schema"),
        (with_schema("hold", trade(40, AT_US, side="HOLD")), "incompatible_schema"),  # see UNREACHABLE
        (enc(41, quantity=Decimal("12345678901")), "decimal_overflow"),                # 11 integer digits
    ]


def categories() -> set[str]:
    """Every dead-letter category: the rules' and the decoder's (each DecodeError subclass raised)."""
    decode_errors: set[str] = set()
    pending = list(avro.DecodeError.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("lakehouse."):  # not a test's own stand-in
            decode_errors.add(cls.error_type)
        pending += cls.__subclasses__()
    assert {decode.IncompatibleSchemaError.error_type, decode.DecimalOverflowError.error_type} <= decode_errors
    return set(rules.CATEGORIES) | decode_errors


@pytest.fixture()
def local(tmp_path: Path) -> Settings:
    """A catalog and registry of this test's own under a temporary home (the tasks write data files
    into its tables; nothing is committed, the shared stack's tables are not touched)."""
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home")})
    tables.ensure_tables(settings)
    return settings


def _rows(frame: DataFrame) -> tuple[list[tuple[str, str]], dict[int, dict[str, Any]]]:
    """(column names and Spark types, rows by Bronze offset), failing on a repeated offset."""
    rows = [r.asDict(recursive=True) for r in frame.collect()]
    by_offset = {r["bronze_offset"]: r for r in rows}
    assert len(by_offset) == len(rows), "a Bronze row came out twice"
    return [(f.name, f.dataType.simpleString()) for f in frame.schema.fields], by_offset


def _written(spark: SparkSession, files: list[Any]) -> DataFrame:
    return spark.read.parquet(*[f.file_path for f in files])


def test_the_job_and_the_replays_map_the_same_bronze_records_to_the_same_rows(spark: SparkSession,
                                                                               local: Settings) -> None:
    pairs = records(local)
    expected = {offset: category for offset, (_, category) in enumerate(pairs)}
    assert set(expected.values()) - {None} == categories() - UNREACHABLE, "a dead-letter category has no record"
    bronze = bronze_frame(spark, [value for value, _ in pairs], names.topic(local, EX), INGESTED).cache()
    try:
        # The streaming job's mapping: its tasks over the batch, as process_batch runs them.
        catalog = load_catalog(local)
        context = batch_context(local, EX, catalog.load_table(names.silver_table(EX)),
                                catalog.load_table(names.DLQ_TABLE), NOW)
        written = run_tasks(from_bronze(bronze), context)
        job_silver = _rows(_written(spark, written.silver_files))
        job_dlq = _rows(_written(spark, written.dlq_files))

        # The replays' mapping: Spark columns over the same rows.
        validated = transform(from_bronze(bronze), local, exchange=EX)
        replay_silver = _rows(silver_rows(validated, NOW))
        replay_dlq = _rows(dlq_rows(validated, EX, NOW))
    finally:
        bronze.unpersist()

    assert {o: r["error_type"] for o, r in job_dlq[1].items()} == {o: c for o, c in expected.items() if c}
    assert set(job_silver[1]) == {o for o, c in expected.items() if c is None}
    assert written.valid == len(job_silver[1]) and sum(written.dead.values()) == len(job_dlq[1])

    assert job_silver[0] == replay_silver[0], "Silver columns or types differ"
    assert job_dlq[0] == replay_dlq[0], "dead-letter columns or types differ"
    for offset in sorted(job_silver[1]):
        assert job_silver[1][offset] == replay_silver[1].get(offset), f"Silver row of offset {offset}"
    for offset in sorted(job_dlq[1]):
        assert job_dlq[1][offset] == replay_dlq[1].get(offset), f"dead-letter row of offset {offset}"
    assert set(replay_silver[1]) == set(job_silver[1]) and set(replay_dlq[1]) == set(job_dlq[1])

    several = next(r for r in job_dlq[1].values() if r["message_id"] == trade(31, AT_US)["message_id"])
    assert "symbol_present" in several["error_reason"] and "currency_present" in several["error_reason"]
