"""Publisher: every frame counted once, trades encoded via the registry, rejects kept with reasons."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import fastavro
import pytest
from support import make_env

from lakehouse import avro, names
from lakehouse.metrics import StatsD
from lakehouse.producer.normalize import KrakenNormalizer, RejectedFrame, normalizer_for
from lakehouse.producer.pipeline import MemorySink, Publisher, RecentIds, Stats, build_publisher
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings

FRAMES = Path(__file__).resolve().parents[1] / "fixtures" / "frames"
RECEIVED = 1_700_000_000_000_000


def fixture_frames(exchange: str) -> list[str]:
    out: list[str] = []
    for name in sorted(FRAMES.glob(f"{exchange}_*.jsonl")):
        out += [line for line in name.read_text().splitlines() if line.strip()]
    return out


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return load_settings(make_env(tmp_path / "home"))


def decode(settings: Settings, value: bytes) -> dict[str, object]:
    schema_id, body = avro.split_header(value)
    schema = fastavro.parse_schema(registry_from_settings(settings).get_schema(schema_id))
    return fastavro.schemaless_reader(io.BytesIO(body), schema)  # type: ignore[return-value]


@pytest.mark.parametrize("exchange", ["binance", "kraken"])
def test_every_frame_is_produced_skipped_or_rejected_and_trades_decode_back(settings: Settings, exchange: str) -> None:
    sink = MemorySink()
    publisher = build_publisher(settings, exchange, sink)
    frames = fixture_frames(exchange)
    reference = normalizer_for(exchange, settings.producer_binance_quotes)
    expected, expected_rejects, expected_skips = [], [], 0
    for frame in frames:
        publisher.handle(frame.encode(), RECEIVED)
        try:
            records = reference.normalize(frame, RECEIVED)
        except RejectedFrame as err:
            expected_rejects.append((frame, err.reason))
            continue
        if records is None:
            expected_skips += 1
        else:
            expected += records
    stats = publisher.stats
    assert stats.frames == len(frames) == stats.trade_frames + stats.skipped + stats.rejected
    assert (stats.produced, stats.skipped, stats.rejected) == (len(expected), expected_skips, len(expected_rejects))
    assert expected and expected_rejects and expected_skips

    topic = names.topic(settings, exchange)
    produced = [(key, decode(settings, value)) for t, key, value in sink.messages if t == topic]
    assert len(produced) == len(expected)
    sequences = []
    for (key, got), want in zip(produced, expected):
        sequences.append(got.pop("platform_sequence"))
        want = dict(want)
        want.pop("platform_sequence")
        assert got == want
        assert key == str(want["symbol"]).encode()
    assert sequences == sorted(set(sequences))

    rejects = [json.loads(value) for value in sink.values(names.rejects_topic(settings, exchange))]
    assert [(r["raw"], r["reason"]) for r in rejects] == expected_rejects
    assert {r["exchange"] for r in rejects} == {exchange.upper()}
    assert {r["received_at"] for r in rejects} == {RECEIVED}


def test_build_publisher_registers_the_schema_under_the_value_subject(settings: Settings) -> None:
    sink = MemorySink()
    publisher = build_publisher(settings, "kraken", sink)
    subject = names.value_subject(names.topic(settings, "kraken"))
    schema_id, schema = registry_from_settings(settings).latest(subject)
    assert schema == avro.load_schema()
    publisher.handle((FRAMES / "kraken_trades.jsonl").read_text().splitlines()[1])
    assert avro.split_header(sink.messages[0][2])[0] == schema_id


def test_a_frame_with_one_bad_trade_produces_nothing_but_its_reject(settings: Settings) -> None:
    sink = MemorySink()
    publisher = build_publisher(settings, "kraken", sink)
    bad = (FRAMES / "kraken_malformed.jsonl").read_text().splitlines()[10]
    publisher.handle(bad, RECEIVED)
    assert sink.values(names.topic(settings, "kraken")) == []
    assert len(sink.values(names.rejects_topic(settings, "kraken"))) == 1
    assert (publisher.stats.rejected, publisher.stats.produced) == (1, 0)


def test_unforeseen_normalizer_errors_become_rejects(settings: Settings) -> None:
    class Broken(KrakenNormalizer):
        def normalize(self, raw: bytes | str, received_us: int) -> None:
            raise TypeError("unexpected shape")

    sink = MemorySink()
    publisher = build_publisher(settings, "kraken", sink)
    publisher.normalizer = Broken()
    publisher.handle("{}", RECEIVED)
    (reject,) = [json.loads(v) for v in sink.values(names.rejects_topic(settings, "kraken"))]
    assert reject["reason"] == "cannot normalize: TypeError: unexpected shape"


def test_live_publisher_drops_repeated_trades(settings: Settings) -> None:
    snapshot = (FRAMES / "kraken_trades.jsonl").read_text().splitlines()[0]
    sink = MemorySink()
    live = build_publisher(settings, "kraken", sink, live=True)
    for _ in range(3):
        live.handle(snapshot, RECEIVED)
    assert (live.stats.produced, live.stats.duplicates, live.stats.trade_frames) == (2, 4, 3)
    replaying = build_publisher(settings, "kraken", MemorySink())
    for _ in range(3):
        replaying.handle(snapshot, RECEIVED)
    assert (replaying.stats.produced, replaying.stats.duplicates) == (6, 0)


def test_recent_ids_forget_the_oldest() -> None:
    recent = RecentIds(2)
    assert [recent.add(k) for k in "abab"] == [True, True, False, False]
    assert recent.add("c") and recent.add("a") and not recent.add("c")


def test_metrics_are_sent_as_deltas_tagged_with_the_exchange(settings: Settings) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    statsd = StatsD("127.0.0.1", receiver.getsockname()[1], "lakehouse")
    try:
        publisher = build_publisher(settings, "binance", MemorySink(), statsd=statsd)
        frames = fixture_frames("binance")
        for frame in frames:
            publisher.handle(frame, RECEIVED)
        publisher.report_metrics()
        first = {receiver.recv(512).decode() for _ in range(3)}
        assert first == {"lakehouse.producer.produced.binance:5|c",
                         "lakehouse.producer.skipped.binance:5|c",
                         "lakehouse.producer.rejected.binance:15|c"}
        publisher.handle("not json", RECEIVED)
        publisher.report_metrics()
        assert receiver.recv(512).decode() == "lakehouse.producer.rejected.binance:1|c"
    finally:
        statsd.close()
        receiver.close()


def test_summary_line_names_every_count() -> None:
    stats = Stats(frames=10, trade_frames=6, produced=9, skipped=3, rejected=1, delivery_errors=2)
    line = stats.summary("kraken", 2.0)
    for part in ("frames=10", "produced=9", "skipped=3", "rejected=1", "delivery_errors=2", "(4 trades/s)"):
        assert part in line


def test_memory_sink_publisher_counts_without_keeping(settings: Settings) -> None:
    sink = MemorySink(keep=False)
    publisher = Publisher(normalizer_for("kraken"), build_publisher(settings, "kraken", sink).encoder, sink,
                          topic="t", rejects_topic="t.rejects")
    for frame in fixture_frames("kraken"):
        publisher.handle(frame, RECEIVED)
    assert sink.count == publisher.stats.produced + publisher.stats.rejected and not sink.messages


def test_a_trade_whose_frame_was_rejected_is_not_remembered_as_seen(settings: Settings) -> None:
    class FlakyEncoder:
        calls = 0

        def encode(self, record: dict[str, object]) -> bytes:
            FlakyEncoder.calls += 1
            if FlakyEncoder.calls == 1:
                raise ValueError("does not fit")
            return b"value"

    sink = MemorySink()
    publisher = Publisher(normalizer_for("kraken"), FlakyEncoder(), sink, topic="t",  # type: ignore[arg-type]
                          rejects_topic="t.rejects", dedupe_window=100)
    update = (FRAMES / "kraken_trades.jsonl").read_text().splitlines()[1]
    publisher.handle(update, RECEIVED)
    publisher.handle(update, RECEIVED)
    assert (publisher.stats.rejected, publisher.stats.produced, publisher.stats.duplicates) == (1, 1, 0)
    assert json.loads(sink.values("t.rejects")[0])["reason"] == "cannot encode: does not fit"
