"""Metrics over plain StatsD (the ``statsd`` package, the client Airflow uses): UDP, fire and forget.

Plain StatsD has no tags, so a metric's label values travel in its name, after the metric name and
in the order :data:`METRICS` declares for it::

    incr("silver.records_dead_lettered", 3, {"exchange": "binance", "error_type": "decode_error"})
      -> lakehouse.silver.records_dead_lettered.binance.decode_error:3|c

statsd-exporter's mapping (``monitoring/statsd/mapping.yml``) turns each such name back into the
Prometheus series it was with DogStatsD tags:
``lakehouse_silver_records_dead_lettered{exchange="binance", error_type="decode_error"}``.
So :data:`METRICS` is the one place that says which labels a metric has and in which order; the
mapping file and ``tests/monitoring`` agree with it.

Label values are made safe for one dotted part (:func:`safe_label_value`): every character other
than ``A-Z a-z 0-9 _ -`` becomes ``_`` (dots would split the name, ``:`` ``|`` ``@`` ``#`` ``,``
``=`` are StatsD or tag syntax, non-ASCII cannot be sent) and an empty value becomes ``_``; so the
topic ``trades.binance`` is the label value ``trades_binance`` in Prometheus.

Metrics are best effort: the ``statsd`` client swallows socket errors, an unresolvable host
disables the client with a warning, and a metric that does not match :data:`METRICS` is logged
as an error and dropped (``strict=True``, for tests, raises :class:`MetricError` instead).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from statsd import StatsClient

from lakehouse.settings import Settings

log = logging.getLogger(__name__)

COUNTER, GAUGE, TIMER = "counter", "gauge", "timer"


class MetricError(ValueError):
    """A metric sent with a name, type or tags that :data:`METRICS` does not declare."""


@dataclass(frozen=True)
class MetricSpec:
    """What one metric is: its StatsD type and its label names, in the order they follow its name."""

    kind: str
    labels: tuple[str, ...] = ()


def _each(names: tuple[str, ...], kind: str, *labels: str) -> dict[str, MetricSpec]:
    return {name: MetricSpec(kind, labels) for name in names}


# Every metric the lakehouse sends (names without the prefix). Adding or changing one means a
# rule in monitoring/statsd/mapping.yml and an entry in tests/monitoring (the tests say which).
METRICS: dict[str, MetricSpec] = {
    # Bronze (lakehouse.bronze.run)
    **_each(("bronze.records", "bronze.bytes", "bronze.group_commit_failed"), COUNTER, "exchange"),
    "bronze.runs": MetricSpec(COUNTER, ("exchange", "status")),
    "bronze.duration_ms": MetricSpec(TIMER, ("exchange", "status")),
    **_each(("bronze.lag", "bronze.offset"), GAUGE, "exchange", "partition"),
    "bronze.data_loss": MetricSpec(COUNTER, ("exchange", "partition", "kind", "accepted")),
    "bronze.records_discarded": MetricSpec(COUNTER, ("exchange", "reason")),
    # Silver (lakehouse.silver.reporting)
    **_each(("silver.records_read", "silver.records_valid"), COUNTER, "exchange"),
    "silver.records_dead_lettered": MetricSpec(COUNTER, ("exchange", "error_type")),
    **_each(("silver.batch_dlq_rate", "silver.run_records_read", "silver.run_records_valid", "silver.dlq_rate"),
            GAUGE, "exchange"),
    "silver.run_records_dead_lettered": MetricSpec(GAUGE, ("exchange", "error_type")),
    **_each(("silver.batch_duration_ms", "silver.run_duration_ms"), TIMER, "exchange"),
    # Gold (lakehouse.gold.writer, lakehouse.gold.job); source = the exchange
    **_each(("gold.rows_in", "gold.rows_written", "gold.duplicates_removed", "gold.late_rows", "gold.bars_written"),
            COUNTER, "source"),
    **_each(("gold.max_event_lag_s", "gold.min_event_lag_s", "gold.files_scanned"), GAUGE, "source"),
    "gold.batch_ms": MetricSpec(TIMER, ("source",)),
    "gold.run_ms": MetricSpec(TIMER),
    "gold.failed_sources": MetricSpec(GAUGE),
    # Producers (lakehouse.producer.pipeline.METRIC_COUNTERS)
    **_each(tuple(f"producer.{name}" for name in ("produced", "skipped", "rejected", "duplicates", "delivery_errors",
                                                  "reconnects", "rollovers")), COUNTER, "exchange"),
    # Alerts (lakehouse.orchestration.alerts)
    "alerts": MetricSpec(COUNTER, ("event", "dag_id", "layer", "severity")),
    # pipeline_monitor figures (lakehouse.monitor.figures, lakehouse.monitor.run)
    **_each(("monitor.kafka_lag_records", "monitor.kafka_lag_seconds", "monitor.end_to_end_seconds"),
            GAUGE, "exchange"),
    **_each(("monitor.commit_age_seconds", "monitor.event_age_seconds"), GAUGE, "layer", "exchange", "table"),
    "monitor.dlq_rate": MetricSpec(GAUGE, ("exchange", "error_type")),
    **_each(("monitor.stalled_seconds", "monitor.layer_lag_records", "monitor.layer_lag_seconds"),
            GAUGE, "layer", "exchange"),
    **_each(("monitor.table_bytes", "monitor.table_data_files", "monitor.table_snapshots"),
            GAUGE, "layer", "exchange", "table"),
    "monitor.producer_idle_seconds": MetricSpec(GAUGE, ("exchange", "topic")),
    "monitor.alert_firing": MetricSpec(GAUGE, ("alert", "severity")),
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def safe_label_value(value: object) -> str:
    """``value`` as one dotted part: characters outside ``A-Za-z0-9_-`` become ``_``, empty is ``_``."""
    return _UNSAFE.sub("_", str(value)) or "_"


def dotted_name(name: str, kind: str, tags: Mapping[str, object] | None = None) -> str:
    """The StatsD name (without prefix) carrying ``tags``' values in the order :data:`METRICS` declares."""
    spec = METRICS.get(name)
    if spec is None:
        raise MetricError(f"metric {name!r} is not declared in lakehouse.metrics.METRICS")
    if spec.kind != kind:
        raise MetricError(f"metric {name!r} is a {spec.kind}, not a {kind}")
    given = dict(tags or {})
    if set(given) != set(spec.labels):
        raise MetricError(f"metric {name!r} takes the tags {list(spec.labels)}, got {sorted(given)} "
                          f"(unknown: {sorted(set(given) - set(spec.labels))}, "
                          f"missing: {sorted(set(spec.labels) - set(given))})")
    return ".".join((name, *(safe_label_value(given[label]) for label in spec.labels)))


@dataclass(frozen=True)
class Sample:
    """One StatsD line read back: declared metric name (no prefix), tags (safe values), value, type."""

    name: str
    tags: dict[str, str]
    value: float
    kind: str


_KIND_CODES = {"c": COUNTER, "g": GAUGE, "ms": TIMER}


def parse_line(line: str, prefix: str) -> Sample:
    """Read one line as :class:`StatsD` sends it (tests and captured datagrams: ``nc -ulk 8125``)."""
    stat, _, rest = line.partition(":")
    value, _, code = rest.partition("|")
    kind = _KIND_CODES.get(code)
    head = prefix.rstrip(".") + "."
    if kind is None or not stat.startswith(head):
        raise MetricError(f"{line!r} is not a {head}* counter, gauge or timer line")
    parts = stat[len(head):].split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        spec = METRICS.get(name)
        if spec is not None and spec.kind == kind and len(spec.labels) == len(parts) - cut:
            return Sample(name, dict(zip(spec.labels, parts[cut:], strict=True)), float(value), kind)
    raise MetricError(f"{line!r} is not a metric of lakehouse.metrics.METRICS")


class StatsD:
    """Counters, gauges and timers with tags, sent as plain StatsD names (see the module doc)."""

    def __init__(self, host: str, port: int, prefix: str, *, strict: bool = False) -> None:
        prefix = prefix.rstrip(".")
        if not _NAME.match(prefix):
            raise ValueError(f"StatsD prefix {prefix!r} must be dotted parts of A-Za-z0-9_- (LAKEHOUSE_STATSD_PREFIX)")
        self._strict = strict
        self._client: StatsClient | None
        try:
            self._client = StatsClient(host, port, prefix=prefix)
        except OSError as err:  # the host does not resolve: run without metrics rather than fail the job
            log.warning("statsd host %s:%s unusable, metrics are not sent: %s", host, port, err)
            self._client = None

    @classmethod
    def from_settings(cls, settings: Settings) -> StatsD:
        return cls(settings.statsd_host, settings.statsd_port, settings.statsd_prefix)

    def _stat(self, name: str, kind: str, tags: Mapping[str, object] | None) -> str | None:
        try:
            return dotted_name(name, kind, tags)
        except MetricError as err:
            if self._strict:
                raise
            log.error("metric dropped: %s", err)
            return None

    def incr(self, name: str, value: float = 1, tags: Mapping[str, object] | None = None) -> None:
        stat = self._stat(name, COUNTER, tags)
        if stat is not None and self._client is not None:
            self._client.incr(stat, value)

    def gauge(self, name: str, value: float, tags: Mapping[str, object] | None = None) -> None:
        stat = self._stat(name, GAUGE, tags)
        if stat is not None and self._client is not None:
            self._client.gauge(stat, value)

    def timing(self, name: str, ms: float, tags: Mapping[str, object] | None = None) -> None:
        stat = self._stat(name, TIMER, tags)
        if stat is not None and self._client is not None:
            self._client.timing(stat, ms)

    def close(self) -> None:
        """Close the socket; later sends are dropped (the ``statsd`` client would fail on them)."""
        if self._client is not None:
            self._client.close()
            self._client = None

