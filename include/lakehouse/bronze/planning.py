"""Pure planning of one Bronze run: committed offsets + watermarks -> offset ranges and losses.

Nothing here talks to Kafka, Iceberg or Spark, so every rule (data-loss detection, fair
admission control, task splitting, the offsets stored in the snapshot summary) is unit tested
on plain values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Kinds of data loss a plan can detect.
RETENTION_GAP = "retention_gap"
OFFSETS_RESET = "offsets_reset"
TOPIC_RECREATED = "topic_recreated"


class OffsetsFormatError(ValueError):
    """A snapshot's offsets property is not the JSON Bronze writes."""


@dataclass(frozen=True)
class Watermarks:
    """One partition's readable range at planning time: ``[low, end)``, where ``end`` is fixed when
    the run plans (every offset below it exists; records produced later are the next run's)."""

    low: int
    end: int


def tail_start(low: int, reported_high: int) -> int:
    """Where planning fetches a partition's tail: its last reported record.

    The embedded broker reports the base offset of the last record batch plus one, so a fetch
    there returns that whole batch; on Kafka it is the last record. An empty partition (or one
    emptied by retention) is fetched at ``low``, which answers with an end of partition.
    """
    return max(low, reported_high - 1)


def fixed_end(reported_high: int, *seen: int | None) -> int:
    """A partition's end for this run: the furthest boundary known to exist.

    Each value is a boundary that existed when it was read (the reported high watermark, last
    record fetched + 1, an end-of-partition offset; None when unknown), and a partition only
    grows, so the largest is one too. It is never waited for: later records are the next run's.
    """
    return max([reported_high, *(s for s in seen if s is not None)])


@dataclass(frozen=True)
class OffsetRange:
    """Records ``[start, end)`` of one partition; one Spark task reads one range."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class DataLoss:
    """Offsets Bronze can never read: deleted by retention, or the topic went backwards (recreated).

    ``committed`` is the next offset Bronze expected; ``low``/``end`` the partition's readable range.
    """

    topic: str
    partition: int
    kind: str
    committed: int
    low: int
    end: int

    @property
    def missing(self) -> tuple[int, int | None]:
        """The offsets lost: ``[committed, low)`` for a gap; for a reset, the committed offsets
        that no longer exist, ``[end, committed)`` (new records ``[low, end)`` are read on acceptance);
        for a recreated topic, the old incarnation's offsets from ``committed`` on, to an end no
        broker knows any more (None)."""
        if self.kind == RETENTION_GAP:
            return self.committed, self.low
        if self.kind == TOPIC_RECREATED:
            return self.committed, None
        return self.end, self.committed

    @property
    def records(self) -> int:
        """Records known lost (a recreated topic's unread tail is unknown: 0)."""
        lo, hi = self.missing
        return 0 if hi is None else max(0, hi - lo)

    def describe(self) -> str:
        lo, hi = self.missing
        if self.kind == RETENTION_GAP:
            return (f"{self.topic} partition {self.partition}: offsets [{lo}, {hi}) were deleted by retention "
                    f"before Bronze read them")
        if self.kind == TOPIC_RECREATED:
            return (f"{self.topic} partition {self.partition}: the topic was recreated, records of the old topic "
                    f"from offset {lo} on were never read; the new topic holds offsets [{self.low}, {self.end})")
        return (f"{self.topic} partition {self.partition}: committed offset {self.committed} is beyond the end "
                f"offset {self.end}, offsets [{lo}, {hi}) no longer exist (topic recreated or truncated)")

    def as_dict(self) -> dict[str, object]:
        lo, hi = self.missing
        return {"topic": self.topic, "partition": self.partition, "kind": self.kind, "committed": self.committed,
                "low": self.low, "end": self.end, "missing_from": lo, "missing_to": hi}


@dataclass(frozen=True)
class Incarnation:
    """The embedded broker restarted: its topics are new (memory storage), their offsets start at 0.

    Bronze's committed offsets belong to ``previous_id``; the run starts the topic ``current_id``
    from offset 0. ``ends_at_stop`` are the old topic's end offsets recorded when the broker
    stopped (None when it was not stopped cleanly), so the records that were produced and never
    reached Bronze can be counted.
    """

    topic: str
    previous_id: str
    current_id: str
    committed: Mapping[int, int]
    ends_at_stop: Mapping[int, int] | None

    @property
    def unread(self) -> int | None:
        """Records of the old topic Bronze never read (None: unknown, the end offsets were not recorded)."""
        if self.ends_at_stop is None:
            return None
        return sum(max(0, end - self.committed.get(p, 0)) for p, end in self.ends_at_stop.items())

    def describe(self) -> str:
        unread = "an unknown number of" if self.unread is None else str(self.unread)
        return (f"{self.topic} is a new topic (id {self.previous_id} -> {self.current_id}, the embedded broker "
                f"restarted): reading it from offset 0; {unread} records of the old topic never reached Bronze")

    def as_dict(self) -> dict[str, object]:
        return {"topic": self.topic, "previous_topic_id": self.previous_id, "topic_id": self.current_id,
                "committed": {str(p): o for p, o in sorted(self.committed.items())},
                "ends_at_stop": None if self.ends_at_stop is None else
                {str(p): o for p, o in sorted(self.ends_at_stop.items())},
                "unread_records": self.unread}


@dataclass(frozen=True)
class Plan:
    """What one run reads and what it commits.

    ``tasks`` are the ranges cut into pieces of at most ``bronze_records_per_task`` records;
    :func:`group_tasks` packs them into Spark tasks once the number of slots is known.
    ``next_offsets`` holds every partition (not only those that moved): it is written whole into
    the snapshot summary, so any single Bronze snapshot is enough to resume.
    """

    topic: str
    ranges: tuple[OffsetRange, ...]
    tasks: tuple[OffsetRange, ...]
    losses: tuple[DataLoss, ...]
    next_offsets: dict[int, int]
    available: int

    @property
    def records(self) -> int:
        return sum(r.count for r in self.ranges)

    @property
    def changes_offsets(self) -> bool:
        """Whether committing this plan moves any offset (otherwise the run writes no snapshot)."""
        return bool(self.ranges) or bool(self.losses)


def detect_losses(topic: str, committed: Mapping[int, int], marks: Mapping[int, Watermarks],
                  recreated: bool = False) -> list[DataLoss]:
    """Partitions whose committed offset is outside ``[low, end]``, or all of them when the topic
    was ``recreated`` (its id changed: the committed offsets belong to a topic that is gone).

    A partition Bronze never read counts as committed at 0 (Kafka's first offset), so records
    that expired before the first run are reported too. A committed partition missing from the
    topic (recreated with fewer partitions) is a reset to an empty partition.
    """
    if recreated:
        return [DataLoss(topic, p, TOPIC_RECREATED, committed.get(p, 0), marks.get(p, Watermarks(0, 0)).low,
                         marks.get(p, Watermarks(0, 0)).end) for p in sorted(set(committed) | set(marks))]
    losses = []
    for partition in sorted(set(committed) | set(marks)):
        mark = marks.get(partition, Watermarks(0, 0))
        offset = committed.get(partition, 0)
        if offset < mark.low:
            losses.append(DataLoss(topic, partition, RETENTION_GAP, offset, mark.low, mark.end))
        elif offset > mark.end:
            losses.append(DataLoss(topic, partition, OFFSETS_RESET, offset, mark.low, mark.end))
    return losses


def allocate_fair(available: Mapping[int, int], cap: int) -> dict[int, int]:
    """Split ``cap`` records across partitions max-min fairly (water filling).

    Partitions with less than an equal share get all they have; the rest share what remains
    equally, lower partition numbers taking the remainder, so no partition starves behind a
    large backlog in another.
    """
    if cap < 0:
        raise ValueError("cap must not be negative")
    alloc = {p: 0 for p in available}
    pending = sorted((p for p, n in available.items() if n > 0), key=lambda p: (available[p], p))
    remaining = cap
    while pending and remaining > 0:
        share = remaining // len(pending)
        smallest = pending[0]
        if available[smallest] <= share:
            alloc[smallest] = available[smallest]
            remaining -= available[smallest]
            pending.pop(0)
            continue
        extra = remaining - share * len(pending)
        for p in sorted(pending):
            alloc[p] = share + (1 if extra > 0 else 0)
            extra -= 1
        break
    return alloc


def split_tasks(ranges: list[OffsetRange], records_per_task: int) -> list[OffsetRange]:
    """Cut each range into consecutive pieces of at most ``records_per_task`` records."""
    if records_per_task <= 0:
        raise ValueError("records_per_task must be greater than zero")
    tasks = []
    for r in ranges:
        for start in range(r.start, r.end, records_per_task):
            tasks.append(OffsetRange(r.topic, r.partition, start, min(r.end, start + records_per_task)))
    return tasks


def group_tasks(chunks: Sequence[OffsetRange], slots: int) -> list[tuple[OffsetRange, ...]]:
    """Pack range pieces into Spark tasks: at most one piece per partition in a task, since one
    consumer reads all of a task's partitions at once, and balanced by records (largest first,
    each into the lightest task without that partition) over at least ``slots`` tasks."""
    if not chunks:
        return []
    per_partition: dict[int, int] = {}
    for c in chunks:
        per_partition[c.partition] = per_partition.get(c.partition, 0) + 1
    count = min(len(chunks), max(slots, max(per_partition.values())))
    groups: list[list[OffsetRange]] = [[] for _ in range(count)]
    totals = [0] * count
    for chunk in sorted(chunks, key=lambda c: (-c.count, c.partition, c.start)):
        free = [i for i in range(count) if all(c.partition != chunk.partition for c in groups[i])]
        best = min(free, key=lambda i: (totals[i], i))
        groups[best].append(chunk)
        totals[best] += chunk.count
    return [tuple(sorted(g, key=lambda c: c.partition)) for g in groups if g]


def plan_run(topic: str, committed: Mapping[int, int], marks: Mapping[int, Watermarks], *,
             max_records: int, records_per_task: int, accept_loss: bool, recreated: bool = False) -> Plan:
    """Plan a run from the committed offsets to the end offsets fixed at planning.

    Losses are returned in the plan either way; the caller fails the run unless ``accept_loss``.
    With ``accept_loss`` a lost partition restarts at its low watermark (the first offset that
    still exists), which is where Kafka's ``auto.offset.reset=earliest`` would put a consumer.
    ``recreated``: the topic's id is not the one the offsets were committed for (see
    :func:`detect_losses`).
    """
    losses = detect_losses(topic, committed, marks, recreated)
    starts = {p: committed.get(p, 0) for p in marks}
    if accept_loss:
        for loss in losses:
            if loss.partition in marks:
                starts[loss.partition] = marks[loss.partition].low
    lost = {loss.partition for loss in losses}
    available = {p: (0 if p in lost and not accept_loss else max(0, marks[p].end - starts[p])) for p in marks}
    alloc = allocate_fair(available, max_records)
    ranges = [OffsetRange(topic, p, starts[p], starts[p] + n) for p, n in sorted(alloc.items()) if n > 0]
    next_offsets = {p: starts[p] + alloc[p] for p in sorted(marks)}
    return Plan(topic=topic, ranges=tuple(ranges), tasks=tuple(split_tasks(ranges, records_per_task)),
                losses=tuple(losses), next_offsets=next_offsets, available=sum(available.values()))


# --- the offsets property in the snapshot summary ------------------------------------------------

def encode_offsets(topic: str, next_offsets: Mapping[int, int]) -> str:
    """JSON ``{topic: {partition: next offset}}`` written into the snapshot summary."""
    return json.dumps({topic: {str(p): int(o) for p, o in sorted(next_offsets.items())}}, separators=(",", ":"))


def decode_offsets(raw: str, topic: str) -> dict[int, int]:
    """The next offsets of ``topic`` from a snapshot's property (empty if the topic is absent)."""
    try:
        data = json.loads(raw)
        return {int(p): int(o) for p, o in data.get(topic, {}).items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise OffsetsFormatError(f"unreadable Bronze offsets property {raw[:200]!r}: {err}") from err
