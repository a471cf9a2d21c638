"""The hand-written encoder writes exactly fastavro's bytes, and fastavro reads them back."""

from __future__ import annotations

import copy
import io
import random
from decimal import Decimal
from typing import Any

import fastavro
import pytest

from lakehouse import avro
from lakehouse.producer.codec import SchemaMismatchError, TradeEncoder, check_schema, encode_long, varint
from lakehouse.producer.generator import generate_frames
from lakehouse.producer.normalize import normalizer_for
from lakehouse.settings import load_settings

SCHEMA_ID = 7


def base_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "message_id": "1b4e28ba-2fa1-51d2-883f-0016d3cca427", "trade_id": "12345", "symbol": "BTCUSDT",
        "exchange": "BINANCE", "asset_class": "crypto", "timestamp": 1_672_515_782_136_000,
        "price": Decimal("16543.21000000"), "quantity": Decimal("0.00120000"), "currency": "USDT", "side": "SELL",
        "trade_conditions": [], "source_sequence": 12345, "ingestion_timestamp": 1_672_515_782_139_000,
        "platform_sequence": 1_700_000_000_000_001,
        "vendor_data": {"buyer_is_maker": "true", "event_time": "1672515782136000", "stream": "btcusdt@trade"},
    }
    record.update(changes)
    return record


EDGE_CASES = [
    {},
    {"price": Decimal("0E-8"), "quantity": Decimal("9999999999.99999999")},
    {"price": Decimal("-9999999999.99999999"), "quantity": Decimal("-0.00000001")},
    {"price": Decimal("-1.28"), "quantity": Decimal("-1.27")},  # two's complement sizes around 0x80
    {"price": Decimal("100"), "quantity": Decimal("1E+2")},  # fewer places than 8 are fine
    {"side": "BUY", "source_sequence": None, "vendor_data": None},
    {"vendor_data": {}, "trade_conditions": ["odd_lot", "late"]},
    {"symbol": "ÉTH/ÜSD", "currency": "ÜSD", "trade_id": "🚀" * 20, "message_id": "x" * 200},
    {"timestamp": 0, "ingestion_timestamp": -1, "platform_sequence": (1 << 63) - 1, "source_sequence": -(1 << 63)},
    {"timestamp": 63, "ingestion_timestamp": 64, "platform_sequence": 8191, "source_sequence": 8192},
    {"vendor_data": {f"k{i}": "v" * i for i in range(70)}},
]


def sample_records() -> list[dict[str, Any]]:
    """Records from generated frames of both exchanges (what the producer really encodes)."""
    out: list[dict[str, Any]] = []
    quotes = load_settings({}).producer_binance_quotes
    for exchange in ("binance", "kraken"):
        normalizer = normalizer_for(exchange, quotes)
        for frame in generate_frames(exchange, 400, seed=11, time_unit="us"):
            out += normalizer.normalize(frame, 1_709_251_300_000_000) or []
    return out


def fastavro_value(record: dict[str, Any]) -> bytes:
    return avro.encode(SCHEMA_ID, avro.parsed_trade_schema(), record)


@pytest.mark.parametrize("changes", EDGE_CASES)
def test_edge_cases_are_byte_identical_to_fastavro(changes: dict[str, Any]) -> None:
    record = base_record(**changes)
    assert TradeEncoder(SCHEMA_ID).encode(record) == fastavro_value(record)


def test_generated_records_are_byte_identical_to_fastavro_and_decode_back() -> None:
    encoder = TradeEncoder(SCHEMA_ID)
    records = sample_records()
    assert len(records) == 800
    for record in records:
        value = encoder.encode(record)
        assert value == fastavro_value(record)
        schema_id, body = avro.split_header(value)
        assert schema_id == SCHEMA_ID
        decoded = fastavro.schemaless_reader(io.BytesIO(body), avro.parsed_trade_schema())
        assert decoded == record


def test_random_records_are_byte_identical_to_fastavro() -> None:
    rng = random.Random(5)
    encoder = TradeEncoder(SCHEMA_ID)
    for _ in range(2000):
        unscaled = rng.randrange(-(10**18) + 1, 10**18) // (10 ** rng.randrange(0, 18))
        places = rng.randrange(0, 9)
        record = base_record(
            price=Decimal(unscaled).scaleb(-8), quantity=Decimal(rng.randrange(0, 10 ** (10 + places))).scaleb(-places),
            timestamp=rng.randrange(-(1 << 63), 1 << 63), platform_sequence=rng.getrandbits(rng.randrange(1, 63)),
            side=rng.choice(["BUY", "SELL"]), trade_id=str(rng.getrandbits(40)))
        assert encoder.encode(record) == fastavro_value(record)


def reference_varint(z: int) -> bytes:
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_varint_and_zigzag_match_the_avro_spec() -> None:
    rng = random.Random(9)
    values = [0, 1, 127, 128, 16383, 16384, (1 << 21) - 1, 1 << 21, (1 << 28) - 1, 1 << 28, (1 << 35) + 5,
              (1 << 64) - 1] + [rng.getrandbits(rng.randrange(1, 65)) for _ in range(20000)]
    for z in values:
        assert varint(z) == reference_varint(z), z
    for n in (0, -1, 1, -64, 64, (1 << 63) - 1, -(1 << 63)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert encode_long(n) == buf.getvalue()


@pytest.mark.parametrize("changes", [
    {"price": Decimal("0.123456789")},  # 9 places
    {"price": Decimal("10000000000")},  # 19 digits once scaled
    {"quantity": Decimal("325814906199")},  # 12 digits, 20 once scaled: fastavro would write it, Iceberg can't hold it
    {"quantity": 1.5},  # not a Decimal
    {"price": Decimal("NaN")},
    {"side": "HOLD"},
    {"timestamp": 1 << 63},
    {"timestamp": "1672515782136000"},
    {"symbol": None},
    {"vendor_data": {"k": 1}},
])
def test_values_that_do_not_fit_raise_value_error(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TradeEncoder(SCHEMA_ID).encode(base_record(**changes))


def test_a_missing_field_raises_value_error() -> None:
    record = base_record()
    del record["currency"]
    with pytest.raises(ValueError):
        TradeEncoder(SCHEMA_ID).encode(record)


def test_encoder_refuses_a_changed_schema() -> None:
    check_schema(avro.load_schema())
    changed = copy.deepcopy(avro.load_schema())
    changed["fields"].append({"name": "venue_fee", "type": ["null", "string"], "default": None})
    with pytest.raises(SchemaMismatchError):
        TradeEncoder(SCHEMA_ID, changed)
    reordered = copy.deepcopy(avro.load_schema())
    reordered["fields"][0], reordered["fields"][1] = reordered["fields"][1], reordered["fields"][0]
    with pytest.raises(SchemaMismatchError):
        check_schema(reordered)


def test_the_benchmarks_codec_pair_writes_the_same_framed_bytes() -> None:
    """``make bench`` times our encoder against fastavro's: both must write the same values."""
    from lakehouse.bench.producer import codec_encoders, encoded_by_both

    records = sample_records() + [base_record(**changes) for changes in EDGE_CASES]
    encoders = codec_encoders(SCHEMA_ID)
    assert list(encoders) == ["codec", "fastavro"]
    values = encoded_by_both(encoders, records)
    assert values == [encoders["fastavro"](record) for record in records]
    for record, value in zip(records, values):
        assert value[:avro.HEADER.size] == b"\x00" + SCHEMA_ID.to_bytes(4, "big")  # Confluent framing
        body = value[avro.HEADER.size:]
        assert fastavro.schemaless_reader(io.BytesIO(body), avro.parsed_trade_schema()) == record


def test_the_benchmark_refuses_to_time_encoders_that_disagree() -> None:
    from lakehouse.bench.producer import codec_encoders, encoded_by_both

    records = [base_record(), base_record(side="BUY"), base_record()]
    encoders = codec_encoders(SCHEMA_ID)
    codec = encoders["codec"]
    encoders["codec"] = lambda record: codec(record) + (b"!" if record["side"] == "BUY" else b"")
    with pytest.raises(RuntimeError, match="codec and fastavro disagree on record 1"):
        encoded_by_both(encoders, records)
