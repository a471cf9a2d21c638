"""Silver decoding without Spark: every decode error's category and reason, schema evolution, caching."""

from __future__ import annotations

import copy
import io
import random
import struct
from decimal import Decimal
from typing import Any

import fastavro
import pyarrow as pa
import pytest

from lakehouse import avro
from lakehouse.registry import RegistryUnavailableError, UnknownSchemaError
from lakehouse.silver.decode import DECODED_ARROW_FIELDS, Decoder, decode_batch
from lakehouse.silver.synthetic import trade

NOW_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SCHEMA = avro.load_schema()
PARSED = avro.parsed_trade_schema()


def evolved(extra_field: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(SCHEMA)
    schema["fields"].append(extra_field)
    return schema


VENUE = {"name": "venue", "type": ["null", "string"], "default": None}


class FakeRegistry:
    """Schemas by id; counts lookups; can simulate an outage."""

    def __init__(self, schemas: dict[int, dict[str, Any]], down: bool = False) -> None:
        self.schemas = schemas
        self.down = down
        self.lookups: list[int] = []

    def get_schema(self, schema_id: int) -> dict[str, Any]:
        self.lookups.append(schema_id)
        if self.down:
            raise RegistryUnavailableError("schema registry http://127.0.0.1:1 unreachable: connection refused")
        if schema_id not in self.schemas:
            raise UnknownSchemaError(f"schema id {schema_id} is not registered")
        return self.schemas[schema_id]

    def register(self, subject: str, schema: dict[str, Any]) -> int:  # the Protocol's other methods: unused
        raise NotImplementedError

    def latest(self, subject: str) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError

    def subjects(self) -> list[str]:
        raise NotImplementedError


def body(record: dict[str, Any], schema: dict[str, Any] = SCHEMA) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def framed(schema_id: int, payload: bytes) -> bytes:
    return struct.pack(">bI", 0, schema_id) + payload


def decode(values: list[bytes | None], registry: FakeRegistry | None = None) -> list[dict[str, Any]]:
    batch = pa.RecordBatch.from_arrays([pa.array(values, pa.binary()), pa.array(range(len(values)), pa.int64())],
                                       names=["value", "bronze_offset"])
    out = decode_batch(batch, Decoder(registry or FakeRegistry({1: SCHEMA})))
    assert out.num_rows == len(values)
    return out.to_pylist()


def test_a_valid_record_decodes_into_every_v2_column_with_exact_decimals() -> None:
    record = trade(7, NOW_US, price=Decimal("42000.12345678"), quantity=Decimal("0.00000001"),
                   vendor_data={"is_buyer_maker": "true"}, trade_conditions=["market"], source_sequence=None)
    value = avro.encode(1, PARSED, record)
    (row,) = decode([value])
    assert row["decode_error_type"] is None and row["decode_error_reason"] is None
    assert row["schema_id"] == 1
    for name in ("message_id", "trade_id", "symbol", "exchange", "asset_class", "timestamp", "currency", "side",
                 "trade_conditions", "source_sequence", "ingestion_timestamp", "platform_sequence"):
        assert row[name] == record[name], name
    assert row["price"] == Decimal("42000.12345678") and row["quantity"] == Decimal("0.00000001")
    assert dict(row["vendor_data"]) == {"is_buyer_maker": "true"}
    assert row["value"] == value and row["bronze_offset"] == 0  # input columns pass through


def test_negative_and_large_decimals_keep_their_sign_and_digits() -> None:
    values = [avro.encode(1, PARSED, trade(i, NOW_US, price=p))
              for i, p in enumerate([Decimal("-1.5"), Decimal("9999999999.99999999"), Decimal("0")])]
    assert [r["price"] for r in decode(values)] == [Decimal("-1.5"), Decimal("9999999999.99999999"), Decimal("0")]


GOOD = avro.encode(1, PARSED, trade(1, NOW_US))


@pytest.mark.parametrize(("value", "error_type", "reason"), [
    pytest.param(None, "truncated", "empty value", id="null-value"),
    pytest.param(b"", "truncated", "empty value", id="empty-value"),
    pytest.param(b"\x01" + GOOD[1:], "bad_magic_byte", "magic byte is 1, expected 0", id="wrong-magic-byte"),
    pytest.param(b"{\"json\": true}", "bad_magic_byte", "magic byte is 123", id="json-text"),
    pytest.param(b"\x00\x00\x01", "truncated", "shorter than the 5-byte Confluent header", id="short-header"),
    pytest.param(framed(999, GOOD[5:]), "unknown_schema_id", "schema id 999 is not registered", id="unknown-id"),
    pytest.param(GOOD[:30], "truncated", "ends before the record does", id="truncated-body"),
    pytest.param(GOOD + b"\x00\x01", "corrupt_body", "2 trailing bytes after the Avro record", id="trailing-bytes"),
    pytest.param(framed(1, b"\x06\xff\xfe\xfd" + GOOD[5:]), "corrupt_body", "UnicodeDecodeError", id="bad-utf8"),
])
def test_each_decode_error_has_its_category_and_reason(value: bytes | None, error_type: str, reason: str) -> None:
    (row,) = decode([value])
    assert row["decode_error_type"] == error_type
    assert reason in row["decode_error_reason"]
    assert row["message_id"] is None and row["price"] is None  # nothing half-decoded leaks into the columns


def test_unknown_schema_id_row_keeps_the_id_for_the_dead_letter_table() -> None:
    (row,) = decode([framed(999, GOOD[5:])])
    assert row["schema_id"] == 999


def test_enum_index_out_of_range_is_a_corrupt_body() -> None:
    record = trade(1, NOW_US)
    # Write side as an int so the body carries enum index 5 where only 0 (BUY) and 1 (SELL) exist.
    as_int = copy.deepcopy(SCHEMA)
    next(f for f in as_int["fields"] if f["name"] == "side")["type"] = "int"
    (row,) = decode([framed(1, body({**record, "side": 5}, as_int))])
    assert row["decode_error_type"] == "corrupt_body"
    assert "IndexError" in row["decode_error_reason"]


def test_a_price_that_does_not_fit_decimal_18_8_is_a_decimal_overflow_not_a_failed_batch() -> None:
    wide = copy.deepcopy(SCHEMA)
    next(f for f in wide["fields"] if f["name"] == "price")["type"]["precision"] = 38
    value = framed(2, body(trade(1, NOW_US, price=Decimal("12345678901234567890.5")), wide))
    rows = decode([value, GOOD], FakeRegistry({1: SCHEMA, 2: wide}))
    assert rows[0]["decode_error_type"] == "decimal_overflow"
    assert rows[0]["decode_error_reason"] == ("price does not fit decimal(18,8): 12345678901234567890.50000000 has "
                                              "more than 10 integer digits")
    assert rows[0]["price"] is None and rows[0]["message_id"] is None  # nothing half-decoded, nothing truncated
    assert rows[1]["decode_error_type"] is None  # the rest of the batch is unaffected


@pytest.mark.parametrize(("field", "value"), [
    ("quantity", Decimal("10000000000")),            # 11 integer digits: one too many
    ("quantity", Decimal("-99999999999.5")),
    ("price", Decimal("12345678901")),
])
def test_a_decimal_with_more_than_10_integer_digits_written_as_decimal_18_8_is_a_decimal_overflow(
        field: str, value: Decimal) -> None:
    """The schema declares precision 18, but fastavro's writer counts only the digits the value
    carries, not its digits at scale 8: such a body is written and decodes, and storing its value
    would need 11 integer digits where the column has 10."""
    rows = decode([avro.encode(1, PARSED, trade(1, NOW_US, **{field: value})), GOOD])
    assert rows[0]["decode_error_type"] == "decimal_overflow"
    assert rows[0]["decode_error_reason"].startswith(f"{field} does not fit decimal(18,8): ")
    assert [r["decode_error_type"] for r in rows[1:]] == [None]


def test_the_largest_decimal_18_8_is_no_overflow() -> None:
    (row,) = decode([avro.encode(1, PARSED, trade(1, NOW_US, quantity=Decimal("-9999999999.99999999")))])
    assert row["decode_error_type"] is None and row["quantity"] == Decimal("-9999999999.99999999")


def test_a_writer_decimal_scale_is_rescaled_to_the_reader_scale() -> None:
    coarse = copy.deepcopy(SCHEMA)
    next(f for f in coarse["fields"] if f["name"] == "price")["type"]["scale"] = 2
    value = framed(3, body(trade(1, NOW_US, price=Decimal("123.45")), coarse))
    (row,) = decode([value], FakeRegistry({3: coarse}))
    assert row["price"] == Decimal("123.45000000")


def test_a_record_written_with_a_newer_schema_with_an_added_optional_field_decodes() -> None:
    newer = evolved(VENUE)
    value = framed(2, body({**trade(3, NOW_US), "venue": "spot"}, newer))
    (row,) = decode([value], FakeRegistry({1: SCHEMA, 2: newer}))
    assert row["decode_error_type"] is None
    assert row["schema_id"] == 2 and row["trade_id"] == "3" and row["price"] == trade(3, NOW_US)["price"]
    assert "venue" not in row  # the reader schema (the current file) decides the columns


def test_a_record_written_with_an_older_schema_gets_the_reader_default() -> None:
    older = copy.deepcopy(SCHEMA)
    older["fields"] = [f for f in older["fields"] if f["name"] != "vendor_data"]
    record = {k: v for k, v in trade(4, NOW_US).items() if k != "vendor_data"}
    (row,) = decode([framed(5, body(record, older))], FakeRegistry({5: older}))
    assert row["decode_error_type"] is None and row["vendor_data"] is None and row["trade_id"] == "4"


def test_a_writer_schema_the_reader_cannot_resolve_is_incompatible() -> None:
    other = {"type": "record", "name": "Quote", "fields": [{"name": "bid", "type": "double"}]}
    (row,) = decode([framed(6, body({"bid": 1.0}, other))], FakeRegistry({6: other}))
    assert row["decode_error_type"] == "incompatible_schema"
    assert "schema id 6 cannot be read as the current schema" in row["decode_error_reason"]


def test_a_registry_outage_raises_instead_of_dead_lettering() -> None:
    registry = FakeRegistry({1: SCHEMA}, down=True)
    with pytest.raises(RegistryUnavailableError):
        decode([GOOD], registry)


def test_writer_schemas_are_fetched_once_per_id_including_unknown_ids() -> None:
    registry = FakeRegistry({1: SCHEMA})
    decoder = Decoder(registry)
    values = [GOOD, framed(999, GOOD[5:])] * 50
    batch = pa.RecordBatch.from_arrays([pa.array(values, pa.binary())], names=["value"])
    for _ in range(3):
        decode_batch(batch, decoder)
    assert sorted(registry.lookups) == [1, 999]


def test_random_and_damaged_values_always_yield_one_row_each() -> None:
    rnd = random.Random(5)
    values: list[bytes | None] = []
    for i in range(3000):
        kind = i % 4
        if kind == 0:
            values.append(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 120))))
        elif kind == 1:
            damaged = bytearray(GOOD)
            for _ in range(rnd.randint(1, 4)):
                damaged[rnd.randrange(5, len(damaged))] = rnd.getrandbits(8)
            values.append(bytes(damaged))
        elif kind == 2:
            values.append(GOOD[:rnd.randrange(len(GOOD))])
        else:
            values.append(b"\x00\x00\x00\x00\x01" + bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 120))))
    rows = decode(values)
    for row in rows:
        failed = row["decode_error_type"] is not None
        assert failed == (row["decode_error_reason"] is not None)
        assert failed == (row["message_id"] is None)
    categories = {r["decode_error_type"] for r in rows}
    assert {"bad_magic_byte", "truncated", "corrupt_body"} <= categories


def test_decoded_schema_is_the_v2_columns_then_id_and_errors() -> None:
    names = [f.name for f in DECODED_ARROW_FIELDS]
    assert names[:15] == [f["name"] for f in SCHEMA["fields"]]
    assert names[15:] == ["schema_id", "decode_error_type", "decode_error_reason"]


def test_a_body_cut_anywhere_is_truncated() -> None:
    rows = decode([GOOD[:cut] for cut in range(avro.HEADER.size + 1, len(GOOD))])
    assert {r["decode_error_type"] for r in rows} == {"truncated"}


def test_the_raw_value_is_left_out_when_not_kept() -> None:
    batch = pa.RecordBatch.from_arrays([pa.array([GOOD], pa.binary()), pa.array([7], pa.int64())],
                                       names=["value", "bronze_offset"])
    out = decode_batch(batch, Decoder(FakeRegistry({1: SCHEMA})), keep_value=False)
    assert out.schema.names[-1] == "bronze_offset" and "value" not in out.schema.names
    assert out.column("trade_id").to_pylist() == ["1"]


def test_decimal_bytes_convert_vectorized_exactly_like_int_from_bytes() -> None:
    from lakehouse.silver.decode import _big_endian_int64

    rng = random.Random(7)
    picks = [0, 1, -1, 127, 128, -128, -129, 255, 256, 2**62, -(2**62), 2**63 - 1, -(2**63) + 1]
    numbers = [rng.choice(picks + [rng.randint(-10**17, 10**17)] * 5) for _ in range(5000)]
    raws = [None if i % 97 == 0 else b"" if i % 89 == 0 else
            n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True) for i, n in enumerate(numbers)]
    expected = [0 if r is None else int.from_bytes(r, "big", signed=True) for r in raws]
    column = pa.array(raws, pa.binary())
    assert _big_endian_int64(column).tolist() == expected
    assert _big_endian_int64(column.slice(3, 500)).tolist() == expected[3:503]
    assert _big_endian_int64(pa.array([b"\x01" * 9], pa.binary())) is None  # longer than int64: careful path
