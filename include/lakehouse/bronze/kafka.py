"""Kafka access for Bronze: true end offsets on the driver, offset ranges read into Arrow on
executors, and the consumer-group commit that lets standard tooling show lag.

The embedded broker (tansu 0.6.0) answers ListOffsets(latest) with the base offset of the last
record batch plus one, which can be below the true end; fetch responses carry the true high
watermark. So the driver reads the tail of each partition with ``enable.partition.eof`` and
takes the end offset from the end-of-partition event. On Apache Kafka the same code reads one
record per partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from lakehouse.bronze.errors import KafkaReadError, KafkaUnavailableError, TopicMissingError
from lakehouse.bronze.planning import OffsetRange, Watermarks

log = logging.getLogger(__name__)

# Messages per consume() call and rows per Arrow batch handed to Spark.
CONSUME_BATCH = 10_000
ARROW_BATCH_ROWS = 50_000


def consumer_config(bootstrap: str, group_id: str, **extra: Any) -> dict[str, Any]:
    """Assign-only consumer settings shared by planning, reading and the group commit."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        # A planned offset that does not exist is an error, never a silent jump.
        "auto.offset.reset": "error",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        "queued.max.messages.kbytes": 64 * 1024,
        # librdkafka's default waits 1 s before fetching again once its queue is full, which caps
        # a fast reader at about one queue per second (~125k records/s here): retry after 10 ms.
        "fetch.queue.backoff.ms": 10,
        "socket.timeout.ms": 10_000,
        **extra,
    }


def _kafka_error(err: KafkaException | KafkaError) -> str:
    kerr = err.args[0] if isinstance(err, KafkaException) and err.args else err
    return kerr.str() if isinstance(kerr, KafkaError) else str(kerr)


def partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as err:
        raise KafkaUnavailableError(f"cannot list topic {topic}: {_kafka_error(err)}") from err
    if meta is None or meta.error is not None or not meta.partitions:
        reason = f" ({meta.error.str()})" if meta is not None and meta.error is not None else ""
        raise TopicMissingError(f"topic {topic} does not exist{reason}: run 'lakehouse up' or create it")
    return sorted(meta.partitions)


def watermarks(bootstrap: str, group_id: str, topic: str, timeout_s: float) -> dict[int, Watermarks]:
    """Per partition the low watermark and the TRUE end offset, read at this moment."""
    # End of partition is only reported once a fetch at the end returns, and the broker holds
    # such a fetch for fetch.wait.max.ms (500 ms by default): keep that short here.
    consumer = Consumer(consumer_config(bootstrap, group_id, **{"fetch.wait.max.ms": 10}))
    try:
        parts = partitions(consumer, topic, timeout_s)
        reported: dict[int, tuple[int, int]] = {}
        for p in parts:
            try:
                reported[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s,
                                                             cached=False)
            except KafkaException as err:
                raise KafkaUnavailableError(f"cannot read watermarks of {topic} partition {p}: "
                                            f"{_kafka_error(err)}") from err
        # Start at the last reported record (the last batch's base offset under the tansu quirk).
        starts = {p: max(low, high - 1) for p, (low, high) in reported.items()}
        ends = _ends_at_eof(consumer, topic, starts, timeout_s)
        return {p: Watermarks(reported[p][0], max(ends[p], reported[p][1])) for p in parts}
    finally:
        consumer.close()


def _ends_at_eof(consumer: Consumer, topic: str, starts: Mapping[int, int], timeout_s: float) -> dict[int, int]:
    consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    ends: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(ends) < len(starts):
        if time.monotonic() > deadline:
            missing = sorted(set(starts) - set(ends))
            raise KafkaUnavailableError(f"no end-of-partition from {topic} partitions {missing} within {timeout_s:g}s")
        for msg in consumer.consume(CONSUME_BATCH, 0.02):
            err = msg.error()
            if err is None:
                continue
            if err.code() == KafkaError._PARTITION_EOF:
                ends.setdefault(msg.partition(), msg.offset())
            else:
                raise KafkaUnavailableError(f"reading the tail of {topic} partition {msg.partition()}: {err.str()}")
    consumer.unassign()
    return ends


def commit_group(bootstrap: str, group_id: str, topic: str, next_offsets: Mapping[int, int],
                 known_ends: Mapping[int, int], timeout_s: float) -> dict[int, int]:
    """Commit ``next_offsets`` to the consumer group and return the lag (end - committed) per partition.

    The end is the larger of the high watermark reported now and the true end seen at planning
    (the embedded broker's reported end can lag the true end); lag is clamped at zero.
    """
    consumer = Consumer(consumer_config(bootstrap, group_id))
    try:
        offsets = [TopicPartition(topic, p, o) for p, o in sorted(next_offsets.items())]
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=False)
        lag = {}
        for p, o in sorted(next_offsets.items()):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
            lag[p] = max(0, max(high, known_ends.get(p, 0)) - o)
        return lag
    finally:
        consumer.close()


def group_offsets(bootstrap: str, group_id: str, topic: str, parts: Sequence[int], timeout_s: float) -> dict[int, int]:
    """The group's committed offsets (partitions without a commit are left out)."""
    consumer = Consumer(consumer_config(bootstrap, group_id))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=timeout_s)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        consumer.close()


# --- executors: one offset range -> Arrow record batches -------------------------------------------

@dataclass(frozen=True)
class ReadContext:
    """Everything an executor needs to read its range (pickled into the Spark task)."""

    bootstrap: str
    group_id: str
    timeout_s: float
    ingestion_us: int
    schema: pa.Schema


def messages_to_batch(messages: Sequence[Any], task: OffsetRange, ingestion_us: int,
                      schema: pa.Schema) -> pa.RecordBatch:
    """Kafka messages of one partition -> one Arrow batch with Spark's Kafka source columns.

    ``timestampType`` follows Spark (Kafka's ids): 0 CreateTime, 1 LogAppendTime, -1 none;
    librdkafka numbers them one higher. A record without headers gets an empty list: Kafka has no
    null headers, and pyiceberg's writer stores a null list of structs as an empty one anyway.
    """
    n = len(messages)
    kinds, stamps = zip(*[m.timestamp() for m in messages]) if n else ((), ())
    librd_types = pa.array(kinds, pa.int32())
    millis = pa.array(stamps, pa.int64())
    ts = pc.if_else(pc.equal(librd_types, 0), pa.scalar(None, pa.int64()), pc.multiply(millis, 1000))
    zeros = pa.array([0] * n, pa.int32())
    columns = [
        pa.array([m.key() for m in messages], pa.binary()),
        pa.array([m.value() for m in messages], pa.binary()),
        pa.array([task.topic], pa.string()).take(zeros),
        pa.array([task.partition], pa.int32()).take(zeros),
        pa.array([m.offset() for m in messages], pa.int64()),
        ts.cast(schema.field("timestamp").type),
        pc.subtract(librd_types, pa.scalar(1, pa.int32())),
        pa.array([m.headers() or () for m in messages], schema.field("headers").type),
        pa.array([ingestion_us], pa.int64()).cast(schema.field("ingestion_timestamp").type).take(zeros),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def read_ranges(ranges: Sequence[OffsetRange], ctx: ReadContext) -> Iterator[pa.RecordBatch]:
    """Read exactly the records of ``ranges`` (offsets ``[start, end)``, at most one range per
    partition of one topic) with one consumer, as Arrow batches of one partition each.

    One consumer fetches all its partitions in each request, as a plain consumer of the topic
    does (the embedded broker answers a fetch with about one record batch per partition, so a
    consumer per partition would be three times slower). A partition stops at its first
    offset >= end; an end-of-partition below ``end`` or an out-of-range error means planned
    records are gone, which fails the task rather than writing less.
    """
    todo = {r.partition: r for r in ranges if r.count > 0}
    if len(todo) != len([r for r in ranges if r.count > 0]) or len({r.topic for r in ranges}) > 1:
        raise ValueError("read_ranges takes at most one range per partition of a single topic")
    if not todo:
        return
    topic = next(iter(todo.values())).topic
    planned = dict(todo)
    consumer = Consumer(consumer_config(ctx.bootstrap, ctx.group_id))
    try:
        consumer.assign([TopicPartition(topic, p, r.start) for p, r in todo.items()])
        position = {p: r.start for p, r in todo.items()}
        pending: dict[int, list[Any]] = {p: [] for p in todo}
        last_progress = time.monotonic()

        def finish(p: int) -> None:
            del todo[p]
            consumer.pause([TopicPartition(topic, p)])

        while todo:
            msgs = consumer.consume(CONSUME_BATCH, 1.0)
            if not msgs:
                if time.monotonic() - last_progress > ctx.timeout_s:
                    stuck = ", ".join(f"partition {p} at {position[p]} (end {r.end})" for p, r in todo.items())
                    raise KafkaReadError(f"no progress reading {topic} for {ctx.timeout_s:g}s: {stuck}")
                continue
            last_progress = time.monotonic()
            # Events (end of partition, errors) are rare: one pass finds them, records stay a list.
            events = [m for m in msgs if m.error() is not None]
            if events:
                msgs = [m for m in msgs if m.error() is None]
            for p, part in _by_partition(msgs).items():
                r = todo.get(p)
                if r is None:  # already complete: records past its end are not this run's
                    continue
                last = part[-1].offset()
                if last >= r.end:
                    part = [m for m in part if m.offset() < r.end]
                position[p] = max(position[p], last + 1)
                pending[p] += part
                if len(pending[p]) >= ARROW_BATCH_ROWS:
                    yield messages_to_batch(pending[p], r, ctx.ingestion_us, ctx.schema)
                    pending[p] = []
                if position[p] >= r.end:
                    finish(p)
            for event in events:
                err, p = event.error(), event.partition()
                if err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaReadError(f"reading {topic} partition {p}: {err.str()}")
                r = todo.get(p)
                if r is None:
                    continue
                if event.offset() < r.end:
                    raise KafkaReadError(f"{topic} partition {p} ends at {event.offset()}, before the planned end "
                                         f"{r.end} (topic truncated or recreated?)")
                finish(p)
        for p, part in pending.items():
            if part:
                yield messages_to_batch(part, planned[p], ctx.ingestion_us, ctx.schema)
    finally:
        consumer.close()


def _by_partition(messages: list[Any]) -> dict[int, list[Any]]:
    """Split a consume() result by partition, keeping order (one partition: no copy)."""
    if not messages:
        return {}
    first = messages[0].partition()
    if messages[-1].partition() == first and all(m.partition() == first for m in messages):
        return {first: messages}
    out: dict[int, list[Any]] = {}
    for m in messages:
        out.setdefault(m.partition(), []).append(m)
    return out

