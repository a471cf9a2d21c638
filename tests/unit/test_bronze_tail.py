"""Planning fixes each partition's end offset from one short tail fetch, never waiting for an end of
partition, on a simulated broker: tansu's under-reported ListOffsets or Kafka's exact one, producers
writing or stopped."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError

from lakehouse.bronze import kafka
from lakehouse.bronze.errors import KafkaUnavailableError
from lakehouse.bronze.planning import fixed_end, tail_start

TOPIC = "crypto.trades.kraken"


# --- the pure rules --------------------------------------------------------------------------------

def test_tail_fetch_starts_at_the_last_reported_record() -> None:
    assert tail_start(0, 101) == 100  # tansu: the base offset of the last batch; Kafka: the last record
    assert tail_start(0, 0) == 0  # empty partition: answered with an end of partition
    assert tail_start(500, 500) == 500  # emptied by retention: never below the low watermark
    assert tail_start(40, 10) == 40


def test_end_is_the_furthest_boundary_known_to_exist() -> None:
    assert fixed_end(101) == 101
    assert fixed_end(101, None) == 101
    assert fixed_end(101, 150) == 150
    assert fixed_end(101, 150, None, 180) == 180
    assert fixed_end(200, 150) == 200


# --- a simulated broker ----------------------------------------------------------------------------

@dataclass
class Event:
    """A confluent-kafka Message: a record, or an error event (end of partition, fetch error)."""

    _partition: int
    _offset: int
    code: int | None = None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> Any:
        if self.code is None:
            return None
        return SimpleNamespace(code=lambda: self.code, str=lambda: f"error {self.code}")


@dataclass
class Log:
    """One partition as record batches ``(base, count)``; ``low`` is its first offset."""

    batches: list[tuple[int, int]] = field(default_factory=list)
    low: int = 0

    @property
    def end(self) -> int:
        return self.batches[-1][0] + self.batches[-1][1] if self.batches else self.low

    def append(self, count: int) -> None:
        self.batches.append((self.end, count))


class Broker:
    """Partitions that grow by ``grow`` records each at every fetch round (producers writing) or
    not at all; ListOffsets answers like tansu 0.6.0 (last batch's base + 1) or like Kafka (exact)."""

    def __init__(self, batches: dict[int, list[int]], *, tansu: bool = True, grow: int = 0,
                 low: dict[int, int] | None = None) -> None:
        self.logs = {p: Log(low=(low or {}).get(p, 0)) for p in batches}
        for p, counts in batches.items():
            for count in counts:
                self.logs[p].append(count)
        self.tansu = tansu
        self.grow = grow
        self.fail_partition: int | None = None
        self.silent = False

    def reported(self, p: int) -> int:
        log = self.logs[p]
        return log.batches[-1][0] + 1 if self.tansu and log.batches else log.end

    def fetch(self, p: int, position: int) -> list[Event]:
        """One fetch response for partition ``p``: the whole batch holding ``position``, or EOF."""
        if self.fail_partition == p:
            return [Event(p, position, KafkaError.OFFSET_OUT_OF_RANGE)]
        log = self.logs[p]
        if position >= log.end:
            return [Event(p, log.end, KafkaError._PARTITION_EOF)]
        base, count = next((b, c) for b, c in log.batches if b <= position < b + c)
        return [Event(p, o) for o in range(max(base, position), base + count)]

    def produce(self) -> None:
        if self.grow:
            for log in self.logs.values():
                log.append(self.grow)


class FakeConsumer:
    """The Consumer calls planning makes. A consume() that may wait (timeout > 0) lets one fetch
    round happen: every assigned partition with nothing queued locally gets one response, queued
    whole as librdkafka does, and the producers write. A zero-timeout consume() only takes what is
    queued, unless ``prefetch`` (fetches that keep landing while the caller drains)."""

    def __init__(self, broker: Broker, prefetch: bool = False) -> None:
        self.broker = broker
        self.prefetch = prefetch
        self.positions: dict[int, int] = {}
        self.queue: deque[Event] = deque()
        self.consumes = 0
        self.closed = False

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = SimpleNamespace(error=None, partitions={p: None for p in self.broker.logs})
        return SimpleNamespace(topics={topic: meta})

    def get_watermark_offsets(self, tp: Any, timeout: float | None = None, cached: bool = False) -> tuple[int, int]:
        assert not cached, "planning reads the reported end from the broker"
        return self.broker.logs[tp.partition].low, self.broker.reported(tp.partition)

    def assign(self, tps: list[Any]) -> None:
        self.positions = {tp.partition: tp.offset for tp in tps}

    def unassign(self) -> None:
        self.positions = {}

    def consume(self, num_messages: int, timeout: float) -> list[Event]:
        self.consumes += 1
        if not self.broker.silent and (timeout > 0 or self.prefetch):
            queued = {e.partition() for e in self.queue}
            for p, position in self.positions.items():
                if p in queued:
                    continue
                events = self.broker.fetch(p, position)
                records = [e for e in events if e.error() is None]
                if records:
                    self.positions[p] = records[-1].offset() + 1
                self.queue.extend(events)
            self.broker.produce()
        return [self.queue.popleft() for _ in range(min(num_messages, len(self.queue)))]

    def close(self) -> None:
        self.closed = True


def plan_ends(monkeypatch: pytest.MonkeyPatch, broker: Broker, timeout_s: float = 2.0,
              prefetch: bool = False) -> tuple[dict[int, int], FakeConsumer]:
    """watermarks() on ``broker``: the end offsets it fixes, and the consumer it used."""
    made: list[FakeConsumer] = []

    def factory(config: dict[str, Any]) -> FakeConsumer:
        assert config["enable.partition.eof"] is True
        made.append(FakeConsumer(broker, prefetch))
        return made[-1]

    monkeypatch.setattr(kafka, "Consumer", factory)
    marks = kafka.watermarks("bootstrap:9092", "g", TOPIC, timeout_s)
    assert made and made[-1].closed and all(m.low == broker.logs[p].low for p, m in marks.items())
    return {p: m.end for p, m in marks.items()}, made[-1]


def test_ends_are_fixed_while_producers_keep_writing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every fetch brings a new batch, so no end of partition ever comes: the old planning waited for one.
    broker = Broker({0: [500, 500], 1: [300], 2: [50, 50, 50]}, grow=200)
    reported = {p: broker.reported(p) for p in broker.logs}
    before = {p: log.end for p, log in broker.logs.items()}
    assert reported[0] < before[0] and reported[2] < before[2]  # tansu under-reports batched partitions
    ends, consumer = plan_ends(monkeypatch, broker)
    after = {p: log.end for p, log in broker.logs.items()}
    # Each end reaches at least the true end when planning began and is a boundary that exists;
    # records produced later are the next run's.
    assert all(before[p] <= ends[p] <= after[p] for p in ends)
    assert consumer.consumes <= 3


def test_taking_what_keeps_arriving_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fetches that land as fast as planning takes them: planning stops after TAIL_DRAIN_S anyway.
    monkeypatch.setattr(kafka, "TAIL_DRAIN_S", 0.05)
    broker = Broker({0: [100], 1: [100]}, grow=100)
    ends, consumer = plan_ends(monkeypatch, broker, prefetch=True)
    assert all(100 < ends[p] <= broker.logs[p].end for p in ends)
    assert consumer.consumes > 2


def test_ends_reach_the_true_end_once_producers_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    # tansu reports the last batch's base + 1; the last batches hold more records than one
    # consume() returns, so the end comes from draining what the fetch queued, not the first call.
    broker = Broker({0: [10, 25_000], 1: [7], 2: [30_000, 12_345]})
    assert broker.reported(0) == 11 and broker.reported(2) == 30_001
    for _ in range(2):  # every run plans the same, true end
        ends, _consumer = plan_ends(monkeypatch, broker)
        assert ends == {0: 25_010, 1: 7, 2: 42_345}


def test_ends_on_kafka_are_its_exact_reported_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker({0: [10, 25_000], 1: [7], 2: []}, tansu=False)
    ends, _consumer = plan_ends(monkeypatch, broker)
    assert ends == {0: 25_010, 1: 7, 2: 0} == {p: broker.reported(p) for p in ends}


def test_empty_and_expired_partitions_end_at_their_low_watermark(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker({0: [], 1: []}, low={1: 800})
    ends, _consumer = plan_ends(monkeypatch, broker)
    assert ends == {0: 0, 1: 800}


def test_a_fetch_error_fails_planning(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker({0: [10], 1: [10]})
    broker.fail_partition = 1
    with pytest.raises(KafkaUnavailableError, match=f"reading the tail of {TOPIC} partition 1"):
        plan_ends(monkeypatch, broker)


def test_a_broker_that_never_answers_fails_planning_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker({0: [10], 1: [10]})
    broker.silent = True
    with pytest.raises(KafkaUnavailableError, match=r"no fetch answer from .* partitions \[0, 1\] within 0.1s"):
        plan_ends(monkeypatch, broker, timeout_s=0.1)


def test_probe_keeps_the_furthest_boundary_of_each_partition() -> None:
    broker = Broker({0: [5, 5], 1: [3]})
    consumer = FakeConsumer(broker)
    seen = kafka.probe_tail(consumer, TOPIC, {0: 5, 1: 3}, 2.0)  # type: ignore[arg-type]
    assert seen == {0: 10, 1: 3}  # records 5..9 of partition 0; partition 1 answered with its end
    assert consumer.positions == {}  # unassigned again
