"""The local schema registry and the Confluent wire format (the remote registry: test_registry_client.py)."""

from __future__ import annotations

import decimal
import io
from pathlib import Path

import fastavro
import pytest

from lakehouse import avro
from lakehouse.registry import LocalSchemaRegistry, UnknownSchemaError

SCHEMA = avro.load_schema()
RECORD = {
    "message_id": "m", "trade_id": "1", "symbol": "BTCUSDT", "exchange": "BINANCE", "asset_class": "crypto",
    "timestamp": 1_700_000_000_000_000, "price": decimal.Decimal("42000.12345678"),
    "quantity": decimal.Decimal("0.00100000"), "currency": "USDT", "side": "BUY", "trade_conditions": [],
    "source_sequence": 1, "ingestion_timestamp": 1_700_000_000_000_100, "platform_sequence": 7,
    "vendor_data": {"buyer_is_maker": "false"},
}


def test_local_registry_is_persistent_and_idempotent(tmp_path: Path) -> None:
    reg = LocalSchemaRegistry(tmp_path)
    first = reg.register("a-value", SCHEMA)
    assert reg.register("a-value", SCHEMA) == first
    assert reg.register("b-value", SCHEMA) == first  # ids are global, as in Confluent
    evolved = {**SCHEMA, "fields": [*SCHEMA["fields"], {"name": "venue", "type": ["null", "string"], "default": None}]}
    second = reg.register("a-value", evolved)
    assert second != first
    again = LocalSchemaRegistry(tmp_path)  # a new process sees the same store
    assert again.get_schema(first) == SCHEMA
    assert again.latest("a-value") == (second, evolved)
    assert again.subjects() == ["a-value", "b-value"]
    with pytest.raises(UnknownSchemaError):
        again.get_schema(999)
    with pytest.raises(UnknownSchemaError):
        again.latest("missing-value")


def test_wire_format_round_trip() -> None:
    parsed = avro.parsed_trade_schema()
    value = avro.encode(42, parsed, RECORD)
    assert value[0] == 0 and value[1:5] == (42).to_bytes(4, "big")
    schema_id, body = avro.split_header(value)
    assert schema_id == 42
    decoded = fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
    assert decoded == RECORD


@pytest.mark.parametrize(("value", "error"), [
    (b"", avro.TruncatedError),
    (None, avro.TruncatedError),
    (b"\x00\x00\x01", avro.TruncatedError),
    (b"\x07\x00\x00\x00\x01abc", avro.BadMagicByteError),
    (b"{\"json\": true}", avro.BadMagicByteError),
])
def test_header_errors_are_typed(value: bytes | None, error: type[avro.DecodeError]) -> None:
    with pytest.raises(error):
        avro.split_header(value)
    assert issubclass(error, avro.DecodeError)


def test_decimal_that_does_not_fit_the_scale_is_refused() -> None:
    with pytest.raises(ValueError):
        avro.encode(1, avro.parsed_trade_schema(), {**RECORD, "price": decimal.Decimal("1.123456789")})
