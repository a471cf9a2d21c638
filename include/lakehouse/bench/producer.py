"""Replay producer throughput on one core: normalize + Avro encode + produce, against its floor.

An isolated embedded broker (temp LAKEHOUSE_HOME, free port) receives generated recordings of
both exchanges, replayed exactly as ``lakehouse produce --replay`` does (file reading
included). The floor is a plain confluent-kafka producer with the same configuration sending
the same pre-encoded values from the same process; the ratio says how much of the Kafka
client's speed the Python side keeps. The producer process is pinned to one CPU (librdkafka's
threads included); the broker runs outside that pin.

The codec pair times the Avro step alone, in the same run: the producers' hand-written encoder
(lakehouse.producer.codec) against fastavro's ``schemaless_writer`` with the parsed schema and the
same Confluent framing (lakehouse.avro.encode), on the same normalized trades, after checking that
both write the same bytes. It is what justifies keeping the hand-written encoder (see codec.py).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from lakehouse import avro, broker, names
from lakehouse.bench import free_port, report
from lakehouse.producer.codec import TradeEncoder
from lakehouse.producer.generator import generate_frames, write_recording
from lakehouse.producer.kafka import KafkaSink, producer_config
from lakehouse.producer.normalize import normalizer_for
from lakehouse.producer.pipeline import MemorySink, Stats, build_publisher
from lakehouse.producer.replay import replay
from lakehouse.settings import Settings, load_settings

TRADES = {"binance": 200_000, "kraken": 100_000}
FLUSH_TIMEOUT_S = 300.0
# The codec pair: trades per exchange (times --scale) and interleaved timed rounds (the best counts).
CODEC_TRADES = {"binance": 40_000, "kraken": 20_000}
CODEC_ROUNDS = 5
CODEC_SCHEMA_ID = 1
CODEC_RECEIVED_US = 1_709_251_300_000_000

Encode = Callable[[Mapping[str, Any]], bytes]




@contextmanager
def _one_core() -> Iterator[int | None]:
    """Pin this process's current and future threads to one CPU (Linux); restore afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Run:
    """One timed run: records, wall seconds, and CPU seconds of this process (all its threads)."""

    records: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0

    def __iadd__(self, other: Run) -> Run:
        self.records += other.records
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        return self


@contextmanager
def _timed(run: Run) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    run.wall_s += time.perf_counter() - wall
    run.cpu_s += time.process_time() - cpu


def _floor(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> Run:
    """A plain producer sending pre-encoded values (same config, same process)."""
    producer = Producer(producer_config(settings, "bench-floor"))
    produce = producer.produce
    run = Run(records=len(messages))
    with _timed(run):
        for count, (key, value) in enumerate(messages, 1):
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
            if count % 1024 == 0:
                producer.poll(0)
        remaining = producer.flush(FLUSH_TIMEOUT_S)
    producer.close()
    if remaining:
        raise RuntimeError(f"floor: {remaining} records not acknowledged")
    return run


def _pipeline(settings: Settings, exchange: str, recording: Path) -> Run:
    """Replay ``recording`` into Kafka through the real publisher, as ``lakehouse produce`` does."""
    stats = Stats()
    sink = KafkaSink(settings, stats, client_id="bench-producer")
    publisher = build_publisher(settings, exchange, sink, stats=stats)
    run = Run()
    with _timed(run):
        replay(publisher, recording)
        remaining = sink.flush(FLUSH_TIMEOUT_S)
    sink.close()
    if remaining or stats.delivery_errors or stats.rejected:
        raise RuntimeError(f"pipeline {exchange}: {stats.as_dict()} remaining={remaining}")
    run.records = stats.produced
    return run


def codec_records(scale: float, binance_quotes: Sequence[str]) -> list[dict[str, Any]]:
    """Normalized trades of both exchanges from generated frames: what the producers encode."""
    records: list[dict[str, Any]] = []
    for exchange, trades in CODEC_TRADES.items():
        normalizer = normalizer_for(exchange, binance_quotes)
        for frame in generate_frames(exchange, max(1000, int(trades * scale)), seed=42, time_unit="us"):
            records += normalizer.normalize(frame, CODEC_RECEIVED_US) or []
    return records


def codec_encoders(schema_id: int) -> dict[str, Encode]:
    """The pair, each writing magic byte, 4-byte schema id and Avro body: ours, then fastavro's."""
    return {"codec": TradeEncoder(schema_id).encode,
            "fastavro": functools.partial(avro.encode, schema_id, avro.parsed_trade_schema())}


def encoded_by_both(encoders: Mapping[str, Encode], records: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Every record's value, once checked to be the same bytes from each encoder.

    Raises ``RuntimeError`` naming the first record they disagree on: timing encoders that write
    different values would compare nothing.
    """
    outputs = {name: [encode(record) for record in records] for name, encode in encoders.items()}
    (first_name, first), *others = outputs.items()
    for name, values in others:
        for index, (ours, theirs) in enumerate(zip(first, values)):
            if ours != theirs:
                raise RuntimeError(f"{first_name} and {name} disagree on record {index} "
                                   f"({records[index].get('message_id')}): {ours.hex()} != {theirs.hex()}")
    return first


def _codec_pair(scale: float, settings: Settings) -> None:
    """Our encoder against fastavro's on the same trades, pinned to one core; best of the rounds.

    Timed in the encoding thread's CPU seconds: for this single-threaded pure-Python loop that is
    its wall time on a dedicated core, and unlike wall time it does not move with whatever else
    shares the machine (wall-time ratios on a busy 2-core machine ranged 1.9 to 2.5 between runs).
    """
    records = codec_records(scale, settings.producer_binance_quotes)
    encoders = codec_encoders(CODEC_SCHEMA_ID)
    encoded_by_both(encoders, records)  # also the warm-up (our encoder's caches, fastavro's first calls)
    best = {name: float("inf") for name in encoders}
    with _one_core():
        for _ in range(CODEC_ROUNDS):
            for name, encode in encoders.items():  # interleaved: a busy moment hits both alike
                start = time.thread_time()
                for record in records:
                    encode(record)
                best[name] = min(best[name], time.thread_time() - start)
    codec, fastavro = len(records) / best["codec"], len(records) / best["fastavro"]
    report("producer_codec_records_per_s", codec, "records/s")
    report("producer_fastavro_records_per_s", fastavro, "records/s")
    report("producer_codec_vs_fastavro", codec / fastavro, "ratio")


def run(scale: float) -> None:
    _codec_pair(scale, load_settings({}))
    with tempfile.TemporaryDirectory(prefix="lakehouse-bench-producer-") as tmp:
        home = Path(tmp)
        settings = load_settings({"LAKEHOUSE_HOME": str(home / "home"), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
                                  "LAKEHOUSE_STATSD_PORT": str(free_port()), "LAKEHOUSE_LOG_LEVEL": "WARNING"})
        broker.start(settings)
        try:
            broker.ensure_topics(settings)
            pipeline, floor, cpu_only = Run(), Run(), Run()
            for exchange, trades in TRADES.items():
                recording = home / f"{exchange}.jsonl"
                write_recording(recording, generate_frames(exchange, max(1000, int(trades * scale)), seed=42))
                # Normalize + encode only (no Kafka); its output is the floor's input.
                sink = MemorySink()
                encode_only = build_publisher(settings, exchange, sink)
                with _timed(cpu_only):
                    replay(encode_only, recording)
                cpu_only.records += encode_only.stats.produced
                topic = names.topic(settings, exchange)
                messages = [(key or b"", value) for t, key, value in sink.messages if t == topic]
                with _one_core():
                    floor += _floor(settings, topic, messages)
                    this = _pipeline(settings, exchange, recording)
                pipeline += this
                report(f"producer_{exchange}_records_per_s", this.records / this.wall_s, "records/s")
            report("producer_normalize_encode_records_per_s", cpu_only.records / cpu_only.wall_s, "records/s")
            report("producer_records_per_s", pipeline.records / pipeline.wall_s, "records/s")
            report("producer_floor_records_per_s", floor.records / floor.wall_s, "records/s")
            report("producer_vs_floor", (pipeline.records / pipeline.wall_s) / (floor.records / floor.wall_s), "ratio")
            # Per CPU-second of the pinned process (its librdkafka threads included): what one
            # dedicated core sustains, robust to other processes sharing the machine.
            report("producer_records_per_cpu_s", pipeline.records / pipeline.cpu_s, "records/cpu-s")
            report("producer_floor_records_per_cpu_s", floor.records / floor.cpu_s, "records/cpu-s")
        finally:
            broker.stop(settings)
