"""The V2 trade schema and the Confluent wire format (magic byte 0, 4-byte schema id, Avro body).

Decode failures are typed so Silver can put each in its own dead-letter category.
"""

from __future__ import annotations

import io
import json
import struct
from functools import lru_cache
from importlib import resources
from typing import Any

import fastavro

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
TRADE_SCHEMA_FILE = "trade_v2.avsc"


class DecodeError(ValueError):
    """A Kafka value that cannot be decoded; ``error_type`` is its dead-letter category."""

    error_type = "decode_error"


class BadMagicByteError(DecodeError):
    error_type = "bad_magic_byte"


class TruncatedError(DecodeError):
    error_type = "truncated"


class UnknownSchemaIdError(DecodeError):
    error_type = "unknown_schema_id"


class CorruptBodyError(DecodeError):
    error_type = "corrupt_body"


@lru_cache(maxsize=None)
def load_schema(name: str = TRADE_SCHEMA_FILE) -> dict[str, Any]:
    """The schema file as JSON (what gets registered)."""
    return json.loads(resources.files("lakehouse.schemas").joinpath(name).read_text())


@lru_cache(maxsize=None)
def parsed_trade_schema() -> Any:
    return fastavro.parse_schema(load_schema())


def encode(schema_id: int, parsed_schema: Any, record: dict[str, Any]) -> bytes:
    """Serialize ``record`` in the Confluent wire format."""
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC_BYTE, schema_id))
    fastavro.schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def split_header(value: bytes | None) -> tuple[int, bytes]:
    """Return (schema_id, body) or raise a typed :class:`DecodeError`."""
    if value is None or len(value) == 0:
        raise TruncatedError("empty value: no Confluent header")
    if value[0] != MAGIC_BYTE:
        raise BadMagicByteError(f"magic byte is {value[0]}, expected {MAGIC_BYTE}")
    if len(value) < HEADER.size:
        raise TruncatedError(f"value is {len(value)} bytes, shorter than the 5-byte Confluent header")
    _, schema_id = HEADER.unpack_from(value)
    return schema_id, value[HEADER.size:]
