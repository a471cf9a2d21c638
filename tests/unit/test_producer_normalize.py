"""Playback of recorded frames through the normalizers: expected records field by field."""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from lakehouse.producer.normalize import (
    MESSAGE_ID_NAMESPACE,
    BinanceNormalizer,
    KrakenNormalizer,
    RejectedFrame,
    fit_decimal,
    message_id,
    normalizer_for,
)
from lakehouse.settings import load_settings

FRAMES = Path(__file__).resolve().parents[1] / "fixtures" / "frames"
RECEIVED = 1_700_000_000_123_456
SEQ = 5_000


def lines(name: str) -> list[str]:
    return [line for line in (FRAMES / name).read_text().splitlines() if line.strip()]


def binance() -> BinanceNormalizer:
    return BinanceNormalizer(load_settings({}).producer_binance_quotes, sequence_start=SEQ)


def kraken() -> KrakenNormalizer:
    return KrakenNormalizer(sequence_start=SEQ)


def micros(text: str) -> int:
    """Reference conversion, independent of the normalizer's fast path."""
    parsed = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp()) * 1_000_000 + parsed.microsecond


def expected(exchange: str, symbol: str, trade_id: int, ts: int, price: str, qty: str, currency: str, side: str,
             seq: int, vendor: dict[str, str]) -> dict[str, object]:
    return {
        "message_id": str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{exchange}:{symbol}:{trade_id}")),
        "trade_id": str(trade_id), "symbol": symbol, "exchange": exchange, "asset_class": "crypto",
        "timestamp": ts, "price": Decimal(price), "quantity": Decimal(qty), "currency": currency, "side": side,
        "trade_conditions": [], "source_sequence": trade_id, "ingestion_timestamp": RECEIVED,
        "platform_sequence": seq, "vendor_data": vendor,
    }


def playback(normalizer: BinanceNormalizer | KrakenNormalizer, name: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for frame in lines(name):
        records = normalizer.normalize(frame.encode(), RECEIVED)
        assert records is not None, frame
        out += records
    return out


def assert_records(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w
        # Decimal equality ignores scale: the values must also carry exactly 8 places for decimal(18,8).
        for field in ("price", "quantity"):
            assert g[field].as_tuple().exponent == -8, (field, g[field])  # type: ignore[union-attr]


def test_binance_plain_millisecond_frames() -> None:
    assert_records(playback(binance(), "binance_trades_plain.jsonl"), [
        expected("BINANCE", "BNBBTC", 12345, 1672515782136000, "0.001", "100", "BTC", "SELL", SEQ,
                 {"buyer_is_maker": "true", "event_time": "1672515782136000"}),
        expected("BINANCE", "BTCUSDT", 2456789012, 1672515782139000, "16543.21", "0.0012", "USDT", "BUY", SEQ + 1,
                 {"buyer_is_maker": "false", "event_time": "1672515782140000"}),
        expected("BINANCE", "BTCFDUSD", 98765, 1700000000000000, "37000", "0.5", "FDUSD", "SELL", SEQ + 2,
                 {"buyer_is_maker": "true", "event_time": "1700000000001000"}),
    ])


def test_binance_combined_microsecond_frames() -> None:
    assert_records(playback(binance(), "binance_trades_combined_us.jsonl"), [
        expected("BINANCE", "ETHUSDT", 1000000001, 1672515782136100, "1200.5", "1.25", "USDT", "BUY", SEQ,
                 {"buyer_is_maker": "false", "event_time": "1672515782136123", "stream": "ethusdt@trade"}),
        expected("BINANCE", "ETHBTC", 400000000, 1672515782137000, "0.0726", "0.01", "BTC", "SELL", SEQ + 1,
                 {"buyer_is_maker": "true", "event_time": "1672515782137001", "stream": "ethbtc@trade"}),
    ])


def test_kraken_snapshot_and_update_frames() -> None:
    assert_records(playback(kraken(), "kraken_trades.jsonl"), [
        expected("KRAKEN", "BTC/USD", 61234567, micros("2023-09-25T07:49:30.123456Z"), "26500.1", "0.00012345",
                 "USD", "BUY", SEQ, {"frame_type": "snapshot", "ord_type": "limit"}),
        expected("KRAKEN", "BTC/USD", 61234568, micros("2023-09-25T07:49:31.000001Z"), "26500.0", "1.5",
                 "USD", "SELL", SEQ + 1, {"frame_type": "snapshot", "ord_type": "market"}),
        expected("KRAKEN", "MATIC/USD", 4665906, micros("2023-09-25T07:49:37.708706Z"), "0.5117", "40",
                 "USD", "SELL", SEQ + 2, {"frame_type": "update", "ord_type": "market"}),
        expected("KRAKEN", "ETH/USD", 50111222, micros("2023-09-25T07:49:38.000000Z"), "1585.37", "3",
                 "USD", "BUY", SEQ + 3, {"frame_type": "update", "ord_type": "market"}),
        expected("KRAKEN", "ETH/USD", 50111223, micros("2023-09-25T07:49:38.000000Z"), "1585.42", "0.2",
                 "USD", "BUY", SEQ + 4, {"frame_type": "update", "ord_type": "market"}),
    ])


def test_kraken_empty_snapshot_is_a_trade_frame_without_trades() -> None:
    assert kraken().normalize('{"channel":"trade","type":"snapshot","data":[]}', RECEIVED) == []


@pytest.mark.parametrize("name,factory", [("binance_non_trade.jsonl", binance), ("kraken_non_trade.jsonl", kraken)])
def test_non_trade_frames_are_skipped(name: str, factory) -> None:  # type: ignore[no-untyped-def]
    normalizer = factory()
    for frame in lines(name):
        assert normalizer.normalize(frame, RECEIVED) is None, frame


BINANCE_REJECT_REASONS = [
    "not JSON", "not a JSON object", "not JSON", "lacks field 'p'", "does not fit decimal(18,8)",
    "does not fit decimal(18,8)", "known quote asset", "not a boolean", "must be a decimal string",
    "not a finite number", "not a non-negative 64-bit integer", "not a positive integer epoch time",
    "combined-stream frame", "unrecognized frame", "not a non-empty string",
]
KRAKEN_REJECT_REASONS = [
    "not JSON", "must be JSON numbers", "lacks field 'qty'", "not RFC 3339", "neither 'buy' nor 'sell'",
    "does not fit decimal(18,8)", "neither 'snapshot' nor 'update'", "not BASE/QUOTE", "no 'data' list",
    "no time zone", "not a non-negative 64-bit integer", "unrecognized frame", "not BASE/QUOTE",
    "neither 'buy' nor 'sell'",
]


@pytest.mark.parametrize("name,factory,reasons", [
    ("binance_malformed.jsonl", binance, BINANCE_REJECT_REASONS),
    ("kraken_malformed.jsonl", kraken, KRAKEN_REJECT_REASONS),
])
def test_malformed_frames_are_rejected_with_a_reason(name: str, factory, reasons: list[str]) -> None:  # type: ignore[no-untyped-def]
    frames = lines(name)
    assert len(frames) == len(reasons)
    normalizer = factory()
    for frame, reason in zip(frames, reasons):
        with pytest.raises(RejectedFrame) as info:
            normalizer.normalize(frame, RECEIVED)
        assert reason in info.value.reason, (frame, info.value.reason)


def test_a_frame_with_one_bad_trade_is_rejected_whole() -> None:
    frame = lines("kraken_malformed.jsonl")[10]
    assert frame.count('"trade_id"') == 2
    with pytest.raises(RejectedFrame):
        kraken().normalize(frame, RECEIVED)


def test_message_id_is_uuid5_of_exchange_symbol_and_trade_id() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        symbol = rng.choice(["BTCUSDT", "ETH/USD", "SOL/EUR", "ÉTH/ÜSD"])
        trade_id = str(rng.getrandbits(rng.choice([8, 32, 63])))
        assert message_id("KRAKEN", symbol, trade_id) == str(
            uuid.uuid5(MESSAGE_ID_NAMESPACE, f"KRAKEN:{symbol}:{trade_id}"))


def test_the_same_trade_in_a_snapshot_and_an_update_gets_the_same_message_id() -> None:
    trade = ('{"symbol":"BTC/USD","side":"buy","price":26500.1,"qty":0.1,"ord_type":"limit","trade_id":42,'
             '"timestamp":"2023-09-25T07:49:30.123456Z"}')
    normalizer = kraken()
    first = normalizer.normalize('{"channel":"trade","type":"update","data":[%s]}' % trade, RECEIVED)
    again = normalizer.normalize('{"channel":"trade","type":"snapshot","data":[%s]}' % trade, RECEIVED + 9)
    assert first and again
    assert first[0]["message_id"] == again[0]["message_id"]
    assert first[0]["platform_sequence"] < again[0]["platform_sequence"]


@pytest.mark.parametrize("value,want", [
    ("0.001", "0.00100000"), ("16543.21000000", "16543.21000000"), ("100", "100.00000000"),
    ("9999999999.99999999", "9999999999.99999999"), ("-1.5", "-1.50000000"), ("0", "0E-8"),
    (Decimal("0.5117"), "0.51170000"), (40, "40.00000000"), ("1E+2", "100.00000000"),
    ("12345.123456780000000000", "12345.12345678"),
])
def test_fit_decimal_keeps_values_exactly(value: object, want: str) -> None:
    got = fit_decimal(value, "price")
    assert got == Decimal(want) and got.as_tuple().exponent == -8


@pytest.mark.parametrize("value", ["0.000000001", "10000000000", "12345678901.00000000", "1.123456789",
                                   "NaN", "Infinity", "-Infinity", "sNaN", "", "abc", "1.2.3", "1e30", None])
def test_fit_decimal_rejects_what_does_not_fit(value: object) -> None:
    with pytest.raises(RejectedFrame):
        fit_decimal(value, "price")


@pytest.mark.parametrize("symbol,currency", [
    ("BTCUSDT", "USDT"), ("BTCFDUSD", "FDUSD"), ("ETHBTC", "BTC"), ("BNBETH", "ETH"), ("USDTTRY", "TRY"),
    ("btcusdc", "USDC"), ("SOLEUR", "EUR"),
])
def test_binance_quote_currency_is_the_longest_known_suffix(symbol: str, currency: str) -> None:
    assert binance().currency(symbol) == currency


def test_binance_symbol_without_known_quote_is_rejected() -> None:
    for symbol in ("FOOBAR", "USDT"):
        with pytest.raises(RejectedFrame):
            binance().currency(symbol)


def test_platform_sequence_is_seeded_from_the_start_time_so_it_grows_across_restarts() -> None:
    frame = lines("binance_trades_plain.jsonl")[0]
    first = BinanceNormalizer(["BTC"])
    before_first = first.normalize(frame, RECEIVED)
    after = [first.normalize(frame, RECEIVED) for _ in range(3)]
    time.sleep(0.002)
    restarted = BinanceNormalizer(["BTC"]).normalize(frame, RECEIVED)
    assert before_first and restarted and all(after)
    sequences = [before_first[0]["platform_sequence"]] + [r[0]["platform_sequence"] for r in after if r]
    assert sequences == sorted(set(sequences))
    assert restarted[0]["platform_sequence"] > sequences[-1]
    assert sequences[0] >= time.time_ns() // 1000 - 60_000_000  # seeded from now, in microseconds


def test_kraken_timestamps_fast_path_agrees_with_the_general_parser() -> None:
    normalizer = kraken()
    rng = random.Random(3)
    for _ in range(500):
        value = rng.randrange(1_500_000_000_000_000, 1_900_000_000_000_000)
        text = dt.datetime.fromtimestamp(value / 1e6, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        text += f".{value % 1_000_000:06d}Z"
        assert normalizer.timestamp_us(text) == micros(text)
    assert normalizer.timestamp_us("2023-09-25T09:49:37.7087+02:00") == micros("2023-09-25T07:49:37.708700Z")


def test_restamp_moves_trade_times_to_receipt_and_shifts_ids_per_symbol_per_iteration() -> None:
    normalizer = kraken()
    normalizer.restamp = True
    frames = lines("kraken_trades.jsonl")

    def run(received: int) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for frame in frames:
            out += normalizer.normalize(frame, received) or []
        return out

    normalizer.begin_iteration(0)
    first = run(RECEIVED)
    normalizer.begin_iteration(1)
    second = run(RECEIVED + 10_000_000)
    # Each frame's latest trade is stamped with its receipt time; spacing inside a frame is kept.
    assert first[1]["timestamp"] == RECEIVED
    assert first[0]["timestamp"] == RECEIVED - (micros("2023-09-25T07:49:31.000001Z")
                                                - micros("2023-09-25T07:49:30.123456Z"))
    assert second[2]["timestamp"] == RECEIVED + 10_000_000
    # Ids continue above the recording's range, per symbol (BTC/USD spans 61234567..61234568).
    assert [r["source_sequence"] for r in second] == [61234569, 61234570, 4665907, 50111224, 50111225]
    assert [r["trade_id"] for r in second] == [str(r["source_sequence"]) for r in second]
    assert not {r["message_id"] for r in first} & {r["message_id"] for r in second}


def test_binance_restamp_keeps_the_event_to_trade_lag() -> None:
    normalizer = binance()
    normalizer.restamp = True
    record = (normalizer.normalize(lines("binance_trades_plain.jsonl")[1], RECEIVED) or [])[0]
    assert record["vendor_data"]["event_time"] == str(RECEIVED)  # type: ignore[index]
    assert record["timestamp"] == RECEIVED - 1000  # T was 1 ms before E


def test_normalizer_for_unknown_exchange_fails() -> None:
    assert isinstance(normalizer_for("kraken"), KrakenNormalizer)
    with pytest.raises(ValueError):
        normalizer_for("coinbase")
