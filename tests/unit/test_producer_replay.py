"""Replay mode (recordings, loop re-stamping, stop) and the generator behind the shipped samples."""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lakehouse.producer.generator import (
    BINANCE_INSTRUMENTS,
    KRAKEN_INSTRUMENTS,
    SAMPLES,
    generate_frames,
    sample_frames,
    write_recording,
)
from lakehouse.producer.normalize import now_us, normalizer_for
from lakehouse.producer.pipeline import MemorySink, Publisher
from lakehouse.producer.replay import ReplayError, read_frames, replay, sample_path
from lakehouse.settings import load_settings

QUOTES = load_settings({}).producer_binance_quotes


class RecordingEncoder:
    """Stands in for the Avro encoder: keeps the records so tests can read them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def encode(self, record: dict[str, Any]) -> bytes:
        self.records.append(record)
        return b""


def publisher(exchange: str) -> tuple[Publisher, RecordingEncoder]:
    encoder = RecordingEncoder()
    return Publisher(normalizer_for(exchange, QUOTES), encoder, MemorySink(keep=False),  # type: ignore[arg-type]
                     topic="t", rejects_topic="t.rejects"), encoder


def normalize_all(exchange: str, frames: list[str]) -> tuple[list[dict[str, Any]], int, int]:
    normalizer = normalizer_for(exchange, QUOTES)
    records: list[dict[str, Any]] = []
    skipped = trade_frames = 0
    for frame in frames:
        out = normalizer.normalize(frame, now_us())
        if out is None:
            skipped += 1
        else:
            trade_frames += 1
            records += out
    return records, skipped, trade_frames


def test_read_frames_handles_gzip_plain_blank_lines_and_crlf(tmp_path: Path) -> None:
    frames = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b'{"a":1}\r\n\n{"b":2}\n   \n{"c":3}')
    zipped = tmp_path / "no-suffix"
    zipped.write_bytes(gzip.compress(b"\n".join(frames) + b"\n"))
    assert list(read_frames(plain)) == frames
    assert list(read_frames(zipped)) == frames


def test_read_frames_reports_missing_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(ReplayError):
        list(read_frames(tmp_path / "missing.jsonl"))
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"a":1}\n' * 1000)[:-30])
    with pytest.raises(ReplayError):
        list(read_frames(broken))


@pytest.mark.parametrize("exchange", ["binance", "kraken"])
def test_shipped_samples_are_the_generators_output(exchange: str) -> None:
    shipped = [frame.decode() for frame in read_frames(sample_path(exchange))]
    assert shipped == list(sample_frames(exchange))
    assert sample_path(exchange).stat().st_size < 150_000


@pytest.mark.parametrize("exchange,instruments", [("binance", BINANCE_INSTRUMENTS), ("kraken", KRAKEN_INSTRUMENTS)])
def test_samples_are_realistic(exchange: str, instruments: tuple[Any, ...]) -> None:
    frames = list(sample_frames(exchange))
    records, skipped, _ = normalize_all(exchange, frames)
    assert len(records) == SAMPLES[exchange]["trades"]
    assert skipped >= 1  # subscription answers, status, heartbeats
    sides = Counter(r["side"] for r in records)
    assert min(sides["BUY"], sides["SELL"]) > 0.35 * len(records)
    start = {i.symbol: i.price for i in instruments}
    by_symbol: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_symbol.setdefault(r["symbol"], []).append(r)
    assert set(by_symbol) == set(start)
    for symbol, rows in by_symbol.items():
        assert all(Decimal("0.8") * start[symbol] < r["price"] < Decimal("1.2") * start[symbol] for r in rows)
        assert all(r["quantity"] > 0 for r in rows)
        ids = [r["source_sequence"] for r in rows]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive per symbol, none missing
        times = [r["timestamp"] for r in rows]
        assert times == sorted(times)


@pytest.mark.parametrize("exchange", ["binance", "kraken"])
@pytest.mark.parametrize("trades", [0, 1, 7, 250])
def test_generator_writes_exactly_the_trades_asked_for(exchange: str, trades: int) -> None:
    records, _, _ = normalize_all(exchange, list(generate_frames(exchange, trades, seed=3)))
    assert len(records) == trades


def test_generator_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    assert list(generate_frames("kraken", 300, seed=5)) == list(generate_frames("kraken", 300, seed=5))
    assert list(generate_frames("kraken", 300, seed=5)) != list(generate_frames("kraken", 300, seed=6))
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_recording(first, generate_frames("binance", 300, seed=5))
    write_recording(second, generate_frames("binance", 300, seed=5))
    assert first.read_bytes() == second.read_bytes()  # gzip without a timestamp: reproducible files


def test_generator_binance_options() -> None:
    plain_us = list(generate_frames("binance", 5, seed=1, time_unit="us", combined=False, start_us=1_700_000_000_000_000))
    records, _, _ = normalize_all("binance", plain_us)
    assert all(r["timestamp"] >= 1_700_000_000_000_000 and "stream" not in r["vendor_data"] for r in records)
    combined_ms = list(generate_frames("binance", 5, seed=1, start_us=1_700_000_000_000_000))
    records_ms, _, _ = normalize_all("binance", combined_ms)
    assert all(r["timestamp"] % 1000 == 0 and "stream" in r["vendor_data"] for r in records_ms)


def test_replay_counts_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "kraken.jsonl"
    write_recording(path, generate_frames("kraken", 500, seed=2))
    pub, encoder = publisher("kraken")
    replay(pub, path)
    frames = list(read_frames(path))
    records, skipped, trade_frames = normalize_all("kraken", [f.decode() for f in frames])
    assert (pub.stats.frames, pub.stats.trade_frames, pub.stats.skipped) == (len(frames), trade_frames, skipped)
    assert pub.stats.produced == len(encoder.records) == len(records) == 500
    assert [r["message_id"] for r in encoder.records] == [r["message_id"] for r in records]


def test_loop_restamps_times_and_gives_each_iteration_new_ids(tmp_path: Path) -> None:
    path = tmp_path / "binance.jsonl.gz"
    write_recording(path, generate_frames("binance", 100, seed=2))
    pub, encoder = publisher("binance")
    started = now_us()
    replay(pub, path, loop=True, max_trades=250)
    finished = now_us()
    records = encoder.records
    assert len(records) == 250
    assert len({r["message_id"] for r in records}) == 250
    assert all(started - 5_000 <= r["timestamp"] <= finished for r in records)  # ~now, never in the future
    by_symbol: dict[str, list[int]] = {}
    for r in records:
        by_symbol.setdefault(r["symbol"], []).append(r["source_sequence"])
    for ids in by_symbol.values():  # ids keep climbing across iterations, without gaps or repeats
        assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_loop_over_a_recording_without_trades_fails(tmp_path: Path) -> None:
    path = tmp_path / "quiet.jsonl"
    path.write_text('{"channel":"heartbeat"}\n' * 3)
    pub, _ = publisher("kraken")
    with pytest.raises(ReplayError):
        replay(pub, path, loop=True)


def test_stop_event_ends_the_replay(tmp_path: Path) -> None:
    path = tmp_path / "kraken.jsonl"
    write_recording(path, generate_frames("kraken", 50, seed=2))
    stop = threading.Event()
    pub, encoder = publisher("kraken")
    original = pub.handle

    def handle_then_stop(raw: bytes | str, received_us: int | None = None) -> int:
        produced = original(raw, received_us)
        if produced:
            stop.set()
        return produced

    pub.handle = handle_then_stop  # type: ignore[method-assign]
    replay(pub, path, loop=True, stop=stop)
    assert pub.stats.trade_frames == 1


def test_rate_must_be_positive(tmp_path: Path) -> None:
    pub, _ = publisher("kraken")
    with pytest.raises(ReplayError):
        replay(pub, tmp_path / "x", rate=0)


class MillisecondPollSink(MemorySink):
    """Polls like librdkafka: the timeout is whole milliseconds, so a sub-millisecond wait is poll(0)."""

    def __init__(self) -> None:
        super().__init__(keep=False)
        self.polls = 0

    def poll(self, timeout: float = 0.0) -> int:
        self.polls += 1
        time.sleep(int(timeout * 1000) / 1000)
        return 0


def test_paced_replay_waits_instead_of_spinning_and_keeps_its_rate(tmp_path: Path) -> None:
    path = tmp_path / "binance.jsonl"
    write_recording(path, generate_frames("binance", 600, seed=3))
    sink = MillisecondPollSink()
    pub = Publisher(normalizer_for("binance", QUOTES), RecordingEncoder(), sink,  # type: ignore[arg-type]
                    topic="t", rejects_topic="t.rejects")
    started = time.monotonic()
    replay(pub, path, rate=2000)  # 600 trades, 0.5 ms apart: 0.3 s
    elapsed = time.monotonic() - started
    assert pub.stats.produced == 600
    assert 0.27 <= elapsed < 1.0
    # One wait per ~10 ms of schedule, not a poll(0) loop between every two trades.
    assert sink.polls < 100, sink.polls
