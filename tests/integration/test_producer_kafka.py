"""Producers through the real embedded broker: records, keys, registry decoding, rejects, shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from lakehouse import avro, broker, names
from lakehouse.producer.generator import generate_frames, write_recording
from lakehouse.producer.kafka import KafkaSink
from lakehouse.producer.normalize import RejectedFrame, normalizer_for
from lakehouse.producer.pipeline import Stats, build_publisher
from lakehouse.producer.replay import read_frames, replay
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FRAMES = Path(__file__).resolve().parents[1] / "fixtures" / "frames"


def consume_all(settings: Settings, topic: str, timeout_s: float = 60.0) -> list[Message]:
    """Every record of ``topic``, reading each partition up to its true end (partition EOF)."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": f"test-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        done: set[int] = set()
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(done) < len(partitions):
            assert time.monotonic() < deadline, f"{topic}: no end of partitions {set(partitions) - done}"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                done.add(msg.partition())
                continue
            out.append(msg)
        return out
    finally:
        consumer.close()


def decode(settings: Settings, value: bytes) -> dict[str, Any]:
    schema_id, body = avro.split_header(value)
    schema = fastavro.parse_schema(registry_from_settings(settings).get_schema(schema_id))
    return fastavro.schemaless_reader(io.BytesIO(body), schema)  # type: ignore[return-value]


@pytest.mark.parametrize("exchange", ["binance", "kraken"])
def test_replay_every_trade_becomes_exactly_one_record_and_rejects_land_on_their_topic(
        isolated: Settings, tmp_path: Path, exchange: str) -> None:
    frames = [line for name in sorted(FRAMES.glob(f"{exchange}_*.jsonl"))
              for line in name.read_text().splitlines() if line.strip()]
    frames += list(generate_frames(exchange, 1500, seed=21))
    recording = tmp_path / "recording.jsonl.gz"
    write_recording(recording, frames)

    reference = normalizer_for(exchange, isolated.producer_binance_quotes)
    expected: dict[str, dict[str, Any]] = {}
    expected_rejects: list[tuple[str, str]] = []
    for frame in frames:
        try:
            for record in reference.normalize(frame, 0) or []:
                expected[record["message_id"]] = record
        except RejectedFrame as err:
            expected_rejects.append((frame, err.reason))

    stats = Stats()
    sink = KafkaSink(isolated, stats)
    try:
        replay(build_publisher(isolated, exchange, sink, stats=stats), recording)
        assert sink.flush(60) == 0
    finally:
        sink.close()
    assert stats.delivery_errors == 0 and stats.produced == len(expected) > 1500

    messages = consume_all(isolated, names.topic(isolated, exchange))
    assert len(messages) == len(expected)
    partitions_of: dict[str, set[int]] = {}
    last_sequence: dict[int, int] = {}
    for msg in messages:
        got = decode(isolated, msg.value())
        want = dict(expected.pop(got["message_id"]))  # KeyError: an unexpected or duplicated record
        sequence = got.pop("platform_sequence")
        assert got.pop("ingestion_timestamp") > 0
        for field in ("platform_sequence", "ingestion_timestamp"):
            want.pop(field)
        assert got == want
        assert msg.key() == got["symbol"].encode()
        partitions_of.setdefault(got["symbol"], set()).add(msg.partition())
        assert sequence > last_sequence.get(msg.partition(), 0)  # produced order is kept per partition
        last_sequence[msg.partition()] = sequence
    assert not expected
    assert all(len(parts) == 1 for parts in partitions_of.values())  # keyed by symbol

    rejects = [json.loads(m.value()) for m in consume_all(isolated, names.rejects_topic(isolated, exchange))]
    assert sorted((r["raw"], r["reason"]) for r in rejects) == sorted(expected_rejects)
    assert len(rejects) == stats.rejected and {r["exchange"] for r in rejects} == {exchange.upper()}


def test_sigterm_flushes_everything_accepted_and_exits_zero(isolated: Settings) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LAKEHOUSE_")}
    env.update(isolated.env())
    proc = subprocess.Popen([sys.executable, "-m", "lakehouse", "produce", "--exchange", "kraken", "--loop",
                             "--rate", "3000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    topic = names.topic(isolated, "kraken")
    try:
        deadline = time.monotonic() + 60
        while sum(hi for _lo, hi in broker.topic_offsets(isolated, topic).values()) < 3000:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "producer made no progress"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("produce kraken: ") and " delivery_errors=0 " in summary, summary
    produced = int(summary.split(" produced=")[1].split()[0])
    assert produced >= 3000
    records = [decode(isolated, m.value()) for m in consume_all(isolated, topic)]
    assert len(records) == produced  # nothing accepted was lost, nothing extra
    assert len({r["message_id"] for r in records}) == produced  # each loop iteration has its own ids
    now = time.time_ns() // 1000
    assert all(now - 600_000_000 < r["timestamp"] <= now for r in records)  # re-stamped: looks live


def test_cli_replays_the_shipped_sample_into_the_topic(isolated: Settings) -> None:
    from lakehouse.cli import build_parser
    from lakehouse.producer.replay import sample_path

    args = build_parser().parse_args(["produce", "--exchange", "binance"])
    assert args.func(args, isolated) == 0
    trades = len(consume_all(isolated, names.topic(isolated, "binance")))
    frames = list(read_frames(sample_path("binance")))
    assert trades == 4000 and len(frames) == 4001
    assert consume_all(isolated, names.rejects_topic(isolated, "binance")) == []


class ThreadedExchange:
    """A local Binance-like websocket server in its own thread (the producer runs as a subprocess).

    The first connection gets ``before`` and is then closed by the server; later connections get
    ``after`` and stay open.
    """

    def __init__(self, before: list[str], after: list[str]) -> None:
        self.before, self.after = before, after
        self.connections = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handler(self, ws: Any) -> None:
        self.connections += 1
        for frame in self.before if self.connections == 1 else self.after:
            await ws.send(frame)
        if self.connections == 1:
            await ws.close()
        else:
            await ws.wait_closed()

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedExchange:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_live_cli_reconnects_and_stops_cleanly_on_sigterm(isolated: Settings) -> None:
    frames = list(generate_frames("binance", 300, seed=8, time_unit="us"))
    before, after = frames[:100], frames[100:]
    reference = normalizer_for("binance", isolated.producer_binance_quotes)
    expected = {r["message_id"] for f in frames for r in reference.normalize(f, 0) or []}
    topic = names.topic(isolated, "binance")
    with ThreadedExchange(before, after) as exchange:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LAKEHOUSE_")}
        env.update(isolated.env())
        env.update({"LAKEHOUSE_PRODUCER_BINANCE_WS_URL": f"ws://127.0.0.1:{exchange.port}",
                    "LAKEHOUSE_PRODUCER_RECONNECT_MIN_S": "0.05", "LAKEHOUSE_PRODUCER_RECONNECT_MAX_S": "0.2"})
        proc = subprocess.Popen([sys.executable, "-m", "lakehouse", "produce", "--exchange", "binance", "--live",
                                 "--symbols", "btcusdt,ethusdt,solusdt,ethbtc"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 90
            while len(consume_all(isolated, topic)) < len(expected):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "live producer did not deliver every trade"
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert exchange.connections == 2
    assert proc.returncode == 0, err
    summary = out.strip().splitlines()[-1]
    assert " reconnects=1 " in summary and " delivery_errors=0 " in summary, summary
    records = [decode(isolated, m.value()) for m in consume_all(isolated, topic)]
    assert sorted(r["message_id"] for r in records) == sorted(expected)
