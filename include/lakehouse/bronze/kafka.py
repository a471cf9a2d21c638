"""Kafka access for Bronze: end offsets fixed on the driver at planning, offset ranges read into
Arrow on executors, and the consumer-group commit that lets standard tooling show lag.

The embedded broker (tansu 0.6.0) answers ListOffsets(latest) with the base offset of the last
record batch plus one, which can be below the true end. So planning fetches each partition once
from its last reported record and fixes as end the furthest boundary it saw (the reported end,
the last record fetched + 1, an end-of-partition offset). It never waits for an end of
partition: while producers write, that end keeps moving and the event may never come. Records
produced after the fixed end belong to the next run; once producers stop, the fetch returns the
whole last batch and the end is the true end. On Apache Kafka ListOffsets is exact and the
fetch only confirms it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from lakehouse import broker
from lakehouse.bronze.errors import KafkaReadError, KafkaUnavailableError, TopicMissingError
from lakehouse.bronze.planning import OffsetRange, Watermarks, fixed_end, tail_start

if TYPE_CHECKING:
    from lakehouse.settings import Settings

log = logging.getLogger(__name__)

# Messages per consume() call and rows per Arrow batch handed to Spark.
CONSUME_BATCH = 10_000
ARROW_BATCH_ROWS = 50_000
# Planning takes what the tail fetch already queued locally for at most this long (never waits for more).
TAIL_DRAIN_S = 0.5


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


def topic_id(settings: Settings, topic: str) -> str | None:
    """Which incarnation of the topic the run reads (:func:`lakehouse.broker.current_topic_ids`)."""
    try:
        return broker.current_topic_ids(settings, [topic], settings.bronze_kafka_timeout_s).get(topic)
    except KafkaException as err:
        raise KafkaUnavailableError(f"cannot describe topic {topic}: {_kafka_error(err)}") from err


def watermarks(bootstrap: str, group_id: str, topic: str, timeout_s: float) -> dict[int, Watermarks]:
    """Per partition the low watermark and an end offset fixed now: every offset below it exists.

    One short fetch per partition from its last reported record, never a wait for the end of a
    partition (see the module doc); at most ``timeout_s`` for the broker to answer at all.
    """
    # A fetch at the end of a partition is held by the broker for fetch.wait.max.ms (500 ms by
    # default) before it answers with an end-of-partition: keep that short here.
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
        seen = probe_tail(consumer, topic, {p: tail_start(*reported[p]) for p in parts}, timeout_s)
        return {p: Watermarks(reported[p][0], fixed_end(reported[p][1], seen.get(p))) for p in parts}
    finally:
        consumer.close()


def probe_tail(consumer: Consumer, topic: str, starts: Mapping[int, int], timeout_s: float) -> dict[int, int]:
    """Fetch from ``starts`` until every partition answered once (records or an end of partition),
    then take what those answers already brought; returns per partition the furthest boundary seen
    (last record read + 1, or the end-of-partition offset).

    It needs one answer per partition however fast producers write (``timeout_s`` only bounds a
    broker that does not answer), and never waits for more: the drain takes only what is queued.
    librdkafka queues a partition's records of one fetch response at once, so the drain sees the
    whole record batch at ``starts``: once producers stop, that is the last batch, ending at the
    true end. The high watermark librdkafka caches from fetch responses
    (``get_watermark_offsets(cached=True)``) is not used: it is the high watermark even for a
    read_committed consumer (librdkafka's default, as the readers are), so on Kafka with open
    transactions it can lie beyond the last offset they can read.
    """
    consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < len(starts):
            if time.monotonic() > deadline:
                missing = sorted(set(starts) - set(seen))
                raise KafkaUnavailableError(f"no fetch answer from {topic} partitions {missing} within {timeout_s:g}s")
            _observe(topic, consumer.consume(CONSUME_BATCH, 0.02), seen)
        drain_end = time.monotonic() + TAIL_DRAIN_S
        while time.monotonic() < drain_end:
            msgs = consumer.consume(CONSUME_BATCH, 0)
            if not msgs:
                break
            _observe(topic, msgs, seen)
    finally:
        consumer.unassign()
    return seen


def _observe(topic: str, msgs: Sequence[Any], seen: dict[int, int]) -> None:
    """Raise ``seen`` to the boundaries ``msgs`` prove exist; fail on a fetch error."""
    for msg in msgs:
        err, p = msg.error(), msg.partition()
        if err is None:
            boundary = msg.offset() + 1
        elif err.code() == KafkaError._PARTITION_EOF:
            boundary = msg.offset()
        else:
            raise KafkaUnavailableError(f"reading the tail of {topic} partition {p}: {err.str()}")
        seen[p] = max(seen.get(p, boundary), boundary)


def record_timestamps(bootstrap: str, group_id: str, topic: str, offsets: Mapping[int, int],
                      timeout_s: float) -> dict[int, int]:
    """Per partition, the Kafka timestamp (ms) of the record at ``offsets[p]``: one short fetch each.

    A partition whose offset is past its end (or whose record is gone) is left out. Used by the
    monitor for "how old is the oldest record Bronze has not read" and "when did the last record
    arrive"; it reads at most one fetch per partition, never the backlog.
    """
    if not offsets:
        return {}
    consumer = Consumer(consumer_config(bootstrap, group_id, **{"fetch.wait.max.ms": 10,
                                                                "auto.offset.reset": "latest",
                                                                "max.partition.fetch.bytes": 64 * 1024}))
    found: dict[int, int] = {}
    answered: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
        while len(answered) < len(offsets):
            if time.monotonic() > deadline:
                missing = sorted(set(offsets) - answered)
                raise KafkaUnavailableError(f"no fetch answer from {topic} partitions {missing} within {timeout_s:g}s")
            for msg in consumer.consume(100, 0.05):
                p, err = msg.partition(), msg.error()
                if p in answered:
                    continue
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaUnavailableError(f"reading {topic} partition {p}: {err.str()}")
                answered.add(p)
                if err is None and msg.offset() == offsets[p]:
                    kind, stamp = msg.timestamp()
                    if kind != 0:  # TIMESTAMP_NOT_AVAILABLE
                        found[p] = stamp
    except KafkaException as err:
        raise KafkaUnavailableError(f"reading {topic}: {_kafka_error(err)}") from err
    finally:
        consumer.close()
    return found


def commit_group(bootstrap: str, group_id: str, topic: str, next_offsets: Mapping[int, int],
                 known_ends: Mapping[int, int], timeout_s: float) -> dict[int, int]:
    """Commit ``next_offsets`` to the consumer group and return the lag (end - committed) per partition.

    The end is the larger of the high watermark reported now and the end fixed at planning
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

