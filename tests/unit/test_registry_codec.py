"""Schema registry backends and the Confluent wire format."""

from __future__ import annotations

import decimal
import io
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import fastavro
import pytest

from local_checks import http_server

from lakehouse import avro
from lakehouse.registry import (
    HttpSchemaRegistry,
    LocalSchemaRegistry,
    RegistryUnavailableError,
    UnknownSchemaError,
)

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


class _FakeConfluent(BaseHTTPRequestHandler):
    """The subset of Confluent Schema Registry's REST API the client uses."""

    schemas: dict[int, str] = {}
    subjects: dict[str, list[int]] = {}

    def _reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        subject = self.path.split("/")[2]
        schema = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
        ids = [i for i, s in self.schemas.items() if s == schema]
        schema_id = ids[0] if ids else len(self.schemas) + 1
        self.schemas[schema_id] = schema
        self.subjects.setdefault(subject, []).append(schema_id)
        self._reply(200, {"id": schema_id})

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["schemas", "ids"] and int(parts[2]) in self.schemas:
            self._reply(200, {"schema": self.schemas[int(parts[2])]})
        elif parts[0] == "subjects" and len(parts) == 1:
            self._reply(200, list(self.subjects))
        elif parts[0] == "subjects" and parts[1] in self.subjects:
            schema_id = self.subjects[parts[1]][-1]
            self._reply(200, {"id": schema_id, "schema": self.schemas[schema_id], "version": 1})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def confluent_url() -> Iterator[str]:
    with http_server(_FakeConfluent) as root:
        yield root


def test_http_registry_speaks_confluent_rest(confluent_url: str) -> None:
    reg = HttpSchemaRegistry(confluent_url)
    schema_id = reg.register("crypto.trades.binance-value", SCHEMA)
    assert reg.get_schema(schema_id) == SCHEMA
    assert reg.latest("crypto.trades.binance-value") == (schema_id, SCHEMA)
    assert reg.subjects() == ["crypto.trades.binance-value"]
    with pytest.raises(UnknownSchemaError):
        reg.get_schema(12345)


def test_unreachable_http_registry_is_an_outage_not_an_unknown_schema() -> None:
    from conftest import free_port

    reg = HttpSchemaRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        reg.get_schema(1)


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
