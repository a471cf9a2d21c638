"""One frame in, Kafka records out: normalize, encode, produce, and count what happened.

:class:`Publisher` is shared by replay and live mode. Every frame is counted exactly once as
a trade frame, a skipped frame or a rejected frame; rejected frames go to the exchange's
rejects topic with the reason, so bad input never stops the producer and is never lost.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from lakehouse import names
from lakehouse.avro import load_schema
from lakehouse.metrics import StatsD
from lakehouse.producer.codec import TradeEncoder
from lakehouse.producer.normalize import Normalizer, Record, RejectedFrame, normalizer_for, now_us
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

# Counters sent to StatsD as ``producer.<name>`` with the tag ``exchange``.
METRIC_COUNTERS = ("produced", "skipped", "rejected", "duplicates", "delivery_errors", "reconnects", "rollovers")


@dataclass
class Stats:
    """What one producer run did; ``frames == trade_frames + skipped + rejected`` always holds."""

    frames: int = 0
    trade_frames: int = 0
    produced: int = 0
    skipped: int = 0
    rejected: int = 0
    duplicates: int = 0
    delivery_errors: int = 0
    reconnects: int = 0
    rollovers: int = 0
    undelivered: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def summary(self, exchange: str, elapsed_s: float) -> str:
        rate = self.produced / elapsed_s if elapsed_s > 0 else 0.0
        line = (f"{exchange}: frames={self.frames} produced={self.produced} skipped={self.skipped} "
                f"rejected={self.rejected} delivery_errors={self.delivery_errors}")
        if self.duplicates or self.reconnects or self.rollovers:
            line += f" duplicates={self.duplicates} reconnects={self.reconnects} rollovers={self.rollovers}"
        if self.undelivered:
            line += f" undelivered={self.undelivered}"
        return line + f" in {elapsed_s:.1f}s ({rate:.0f} trades/s)"


class Sink(Protocol):
    """Where encoded records go: Kafka (:class:`lakehouse.producer.kafka.KafkaSink`) or memory."""

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None: ...

    def poll(self, timeout: float = 0.0) -> int: ...

    def flush(self, timeout: float) -> int: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps (topic, key, value) in memory: for tests and ``lakehouse produce --dry-run``."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.count = 0
        self.messages: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        self.count += 1
        if self.keep:
            self.messages.append((topic, key, value))

    def poll(self, timeout: float = 0.0) -> int:
        if timeout > 0:
            time.sleep(timeout)  # behave like a producer's poll, so rate pacing does not spin
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def close(self) -> None:
        pass

    def values(self, topic: str) -> list[bytes]:
        return [value for t, _key, value in self.messages if t == topic]


class RecentIds:
    """The last ``size`` message_ids seen: drops repeats (Kraken snapshots, rollover overlap)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._order: collections.deque[str] = collections.deque()
        self._seen: set[str] = set()

    def add(self, key: str) -> bool:
        """True when ``key`` is new (and remember it), False when it was seen recently."""
        if key in self._seen:
            return False
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self._size:
            self._seen.discard(self._order.popleft())
        return True


def worth_logging(count: int) -> bool:
    """Log the first occurrences individually, then every thousandth: a broken feed must not flood logs."""
    return count <= 20 or count % 1000 == 0


class Publisher:
    """Normalizes, encodes and produces the frames of one exchange; counts everything in ``stats``."""

    def __init__(self, normalizer: Normalizer, encoder: TradeEncoder, sink: Sink, *, topic: str,
                 rejects_topic: str, stats: Stats | None = None, statsd: StatsD | None = None,
                 metrics_interval_s: float = 1.0, dedupe_window: int = 0) -> None:
        self.normalizer = normalizer
        self.encoder = encoder
        self.sink = sink
        self.topic = topic
        self.rejects_topic = rejects_topic
        self.stats = stats if stats is not None else Stats()
        self.statsd = statsd
        self.metrics_interval_s = metrics_interval_s
        self._recent = RecentIds(dedupe_window) if dedupe_window > 0 else None
        self._keys: dict[str, bytes] = {}
        self._reported = dict.fromkeys(METRIC_COUNTERS, 0)
        self._next_report = time.monotonic() + metrics_interval_s

    @property
    def exchange(self) -> str:
        return self.normalizer.exchange

    def handle(self, raw: bytes | str, received_us: int | None = None) -> int:
        """Process one raw frame as received; returns the number of records produced."""
        stats = self.stats
        stats.frames += 1
        if received_us is None:
            received_us = now_us()
        try:
            records = self.normalizer.normalize(raw, received_us)
        except RejectedFrame as err:
            self._reject(raw, err.reason, received_us)
            return 0
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            # A frame shape no rule foresaw: it still goes to the rejects topic, with the cause.
            self._reject(raw, f"cannot normalize: {type(err).__name__}: {err}", received_us)
            return 0
        if records is None:
            stats.skipped += 1
            return 0
        try:
            if len(records) == 1:  # Binance: always one trade per frame
                values = [self.encoder.encode(records[0])]
            else:
                encode = self.encoder.encode
                values = [encode(r) for r in records]
        except ValueError as err:
            self._reject(raw, f"cannot encode: {err}", received_us)
            return 0
        stats.trade_frames += 1
        if self._recent is not None:  # only trades that will really be produced are remembered
            records, values = self._drop_repeats(records, values)
        produce, topic, keys = self.sink.produce, self.topic, self._keys
        for record, value in zip(records, values):
            symbol = record["symbol"]
            key = keys.get(symbol)
            if key is None:
                key = keys[symbol] = symbol.encode()
            produce(topic, value, key)
        stats.produced += len(values)
        return len(values)

    def _drop_repeats(self, records: list[Record], values: list[bytes]) -> tuple[list[Record], list[bytes]]:
        recent = self._recent
        assert recent is not None
        fresh = [(r, v) for r, v in zip(records, values) if recent.add(r["message_id"])]
        self.stats.duplicates += len(records) - len(fresh)
        return [r for r, _ in fresh], [v for _, v in fresh]

    def _reject(self, raw: bytes | str, reason: str, received_us: int) -> None:
        self.stats.rejected += 1
        text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
        value = json.dumps({"exchange": self.normalizer.venue, "reason": reason, "raw": text,
                            "received_at": received_us}).encode()
        self.sink.produce(self.rejects_topic, value, None)
        if worth_logging(self.stats.rejected):
            log.warning("frame rejected", extra={"exchange": self.exchange, "reason": reason,
                                                  "rejected_total": self.stats.rejected})

    def maybe_report(self) -> None:
        """Send counter deltas to StatsD when the metrics interval has passed (cheap to call often)."""
        if time.monotonic() >= self._next_report:
            self.report_metrics()

    def report_metrics(self) -> None:
        self._next_report = time.monotonic() + self.metrics_interval_s
        if self.statsd is None:
            return
        tags = {"exchange": self.exchange}
        for name in METRIC_COUNTERS:
            value = getattr(self.stats, name)
            delta = value - self._reported[name]
            if delta:
                self.statsd.incr(f"producer.{name}", delta, tags)
                self._reported[name] = value


def build_publisher(settings: Settings, exchange: str, sink: Sink, *, stats: Stats | None = None,
                    live: bool = False, statsd: StatsD | None = None) -> Publisher:
    """A publisher wired from settings: registers the V2 schema under the topic's value subject."""
    topic = names.topic(settings, exchange)
    schema_id = registry_from_settings(settings).register(names.value_subject(topic), load_schema())
    return Publisher(
        normalizer_for(exchange, settings.producer_binance_quotes),
        TradeEncoder(schema_id),
        sink,
        topic=topic,
        rejects_topic=names.rejects_topic(settings, exchange),
        stats=stats,
        statsd=statsd,
        metrics_interval_s=settings.producer_metrics_interval_s,
        dedupe_window=settings.producer_dedupe_window if live else 0,
    )
