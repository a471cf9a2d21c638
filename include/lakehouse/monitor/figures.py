"""The pipeline's health figures, per exchange and layer, from metadata only: no Spark, no scans.

What is read: Kafka end offsets and one record timestamp per lagging partition, each table's
snapshot list (commit times, summaries), the manifests of each table's newest append (column
upper bounds for the newest event time), and the streams' local checkpoints (what Silver and Gold
have consumed). A run costs a fraction of a second of CPU, so the ``pipeline_monitor`` DAG runs it
every minute without the Spark pool, and ``lakehouse health`` on demand.

Figures (gauge names; :mod:`lakehouse.monitor.rules` watches some of them):

- ``kafka_lag_records`` / ``kafka_lag_seconds``: records in Kafka that Bronze has not committed,
  and now minus the Kafka timestamp of the oldest of them (0 when caught up).
- ``commit_age_seconds`` / ``event_age_seconds`` per table (every table: each exchange's Bronze and
  Silver, and the shared ones with ``exchange=all``): now minus its last commit, and now minus the
  newest event time in it (the event-time column of :data:`EVENT_COLUMNS` / :data:`SHARED_TABLES`).
- ``end_to_end_seconds``: now minus the oldest trade produced but not yet in Gold. A record is
  known to wait in Kafka (its timestamp), in Bronze (the commit time of the first Bronze append
  Silver has not read) or in Silver (the same for Gold); the oldest of those is taken, so the
  figure is exact at the Kafka step and a lower bound of a few seconds at the others.
- ``layer_lag_records`` / ``layer_lag_seconds`` per layer (``silver``, ``gold``) and exchange: the
  records the layer's input table holds that the layer's stream has not read (the ``added-records``
  of the input's appends after the stream's checkpoint; an append read in part counts the share of
  its files not yet read), and now minus the commit time of the oldest of those appends (0 when
  caught up). Bronze's lag is ``kafka_lag_records`` / ``kafka_lag_seconds``.
- ``table_bytes`` / ``table_data_files`` / ``table_snapshots`` per table: the current snapshot's
  ``total-files-size`` and ``total-data-files``, and the snapshots the table's metadata holds.
- ``dlq_rate`` per error type and over all (``error_type=all``): dead letters over dead letters
  plus Silver rows, from the snapshot summaries of the last ``LAKEHOUSE_ALERT_DLQ_WINDOW_MINUTES``.
- ``stalled_seconds`` per layer: how long the layer has made no progress while its input has
  records it has not read (0 when it has nothing to do).
- ``producer_idle_seconds`` per topic: now minus the timestamp of its newest record.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lakehouse import names
from lakehouse.monitor import history
from lakehouse.monitor.alerting import Figure
from lakehouse.monitor.rules import (ALL_ERROR_TYPES, DLQ_RATE, KAFKA_LAG_SECONDS, PRODUCER_IDLE_SECONDS,
                                     STALLED_SECONDS)
from lakehouse.orchestration.pending import batch_ids, local_dir
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

log = logging.getLogger(__name__)

KAFKA_LAG_RECORDS = "kafka_lag_records"
COMMIT_AGE_SECONDS = "commit_age_seconds"
EVENT_AGE_SECONDS = "event_age_seconds"
END_TO_END_SECONDS = "end_to_end_seconds"
LAYER_LAG_RECORDS = "layer_lag_records"
LAYER_LAG_SECONDS = "layer_lag_seconds"
TABLE_BYTES = "table_bytes"
TABLE_DATA_FILES = "table_data_files"
TABLE_SNAPSHOTS = "table_snapshots"
TABLE_FIGURES = (COMMIT_AGE_SECONDS, EVENT_AGE_SECONDS, TABLE_BYTES, TABLE_DATA_FILES, TABLE_SNAPSHOTS)
STREAM_FIGURES = (STALLED_SECONDS, END_TO_END_SECONDS, LAYER_LAG_RECORDS, LAYER_LAG_SECONDS)
FIGURE_NAMES = (KAFKA_LAG_RECORDS, KAFKA_LAG_SECONDS, COMMIT_AGE_SECONDS, EVENT_AGE_SECONDS, END_TO_END_SECONDS,
                DLQ_RATE, STALLED_SECONDS, PRODUCER_IDLE_SECONDS, LAYER_LAG_RECORDS, LAYER_LAG_SECONDS, TABLE_BYTES,
                TABLE_DATA_FILES, TABLE_SNAPSHOTS)
# How long a run waits for Kafka before it reports Kafka unreadable: well inside the DAG's minute.
KAFKA_TIMEOUT_S = 10.0
# The column holding each layer's event time: Kafka's record time in Bronze, the trade's time after.
EVENT_COLUMNS = {"bronze": "timestamp", "silver": "timestamp", "gold": "timestamp"}
# The tables every exchange shares: (layer label, event-time column).
SHARED_TABLES = {names.GOLD_TABLE: ("gold", "timestamp"), names.OHLCV_TABLE: ("gold", "minute"),
                 names.DLQ_TABLE: ("dlq", "dlq_timestamp"), names.DLQ_ARCHIVE_TABLE: ("dlq", "archived_at"),
                 names.AUDIT_TABLE: ("audit", "event_time")}


@dataclass
class Health:
    """What one monitor run measured, and what it could not (one line per failure)."""

    at: float
    figures: list[Figure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unmeasured: set[str] = field(default_factory=set)  # figures missing because of an error

    def add(self, name: str, value: float, context: dict[str, Any] | None = None, **labels: str) -> None:
        self.figures.append(Figure(name, labels, float(value), context or {}))

    def failed(self, figures: Iterable[str], what: str, err: Exception) -> None:
        self.unmeasured.update(figures)
        self.errors.append(f"{what}: {err}")

    def value(self, name: str, **labels: str) -> float | None:
        return next((f.value for f in self.figures
                     if f.name == name and all(f.labels.get(k) == v for k, v in labels.items())), None)


@dataclass(frozen=True)
class StreamProgress:
    """Where a stream's checkpoint stands: the upstream snapshot its last committed batch reached
    (None before its first batch) and when that batch was committed (epoch seconds)."""

    snapshot_id: int | None
    position: int
    committed_at: float | None


def stream_progress(checkpoint_uri: str) -> StreamProgress | None:
    """The last *committed* batch of a local checkpoint (a batch in flight does not count yet);
    None for a remote checkpoint, which the monitor cannot read."""
    directory = local_dir(checkpoint_uri)
    if directory is None:
        return None
    commits = batch_ids(directory / "commits")
    if not commits:
        return StreamProgress(None, 0, None)
    last = commits[-1]
    lines = [ln for ln in (directory / "offsets" / str(last)).read_text().splitlines() if ln.strip()]
    offset = json.loads(lines[-1])
    committed_at = (directory / "commits" / str(last)).stat().st_mtime
    return StreamProgress(int(offset["snapshot_id"]), int(offset["position"]), committed_at)


def _appends(table: Table) -> list[Snapshot]:
    """The append snapshots of main's history, oldest first (what an Iceberg stream reads)."""
    return history.main_appends(table)


def unread_appends(table: Table, progress: StreamProgress) -> list[tuple[Snapshot, float]]:
    """The appends of ``table`` that a stream at ``progress`` has not read completely, oldest first,
    each with the share of its data files still unread (1.0 for an append not started)."""
    appends = _appends(table)
    if progress.snapshot_id is None:
        return [(snap, 1.0) for snap in appends]
    consumed = table.metadata.snapshot_by_id(progress.snapshot_id)
    if consumed is None:  # expired under the stream: everything left is newer than it
        return [(snap, 1.0) for snap in appends]
    unread = []
    for snap in appends:
        if snap.snapshot_id == progress.snapshot_id:
            added = int(snap.summary.get("added-data-files") or 0) if snap.summary is not None else 0
            if progress.position < added:
                unread.append((snap, (added - progress.position) / added))
        elif (snap.sequence_number or 0) > (consumed.sequence_number or 0):
            unread.append((snap, 1.0))
    return unread


def oldest_unread_append(table: Table, progress: StreamProgress) -> Snapshot | None:
    """The oldest append of ``table`` that a stream at ``progress`` has not read completely."""
    unread = unread_appends(table, progress)
    return unread[0][0] if unread else None


def unread_records(unread: Iterable[tuple[Snapshot, float]]) -> int:
    """Records in those appends not read yet: ``added-records`` times the unread share of the files
    (exact for appends not started, proportional for the one a stream stopped inside)."""
    return round(sum(int(history.summary_properties(snap).get("added-records") or 0) * share
                     for snap, share in unread))


def newest_event_time(table: Table, column: str) -> float | None:
    """The newest value of ``column`` (epoch seconds) in the files of the table's newest append,
    from their column upper bounds (the manifests of that one snapshot, no data file is read)."""
    from pyiceberg.conversions import from_bytes
    from pyiceberg.types import LongType, TimestampType, TimestamptzType

    appends = _appends(table)
    if not appends:
        return None
    snap = appends[-1]
    field_ = table.schema().find_field(column)
    if not isinstance(field_.field_type, LongType | TimestampType | TimestamptzType):
        raise TypeError(f"{column} of {'.'.join(table.name())} is {field_.field_type}, not a time")
    newest: int | None = None
    for manifest in snap.manifests(table.io):
        if manifest.added_snapshot_id != snap.snapshot_id:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            bound = (entry.data_file.upper_bounds or {}).get(field_.field_id)
            if bound is not None:
                value = from_bytes(field_.field_type, bound)
                newest = value if newest is None else max(newest, value)
    return None if newest is None else newest / 1_000_000  # microseconds in every layer


def _commit_time(snap: Snapshot | None) -> float | None:
    return None if snap is None else snap.timestamp_ms / 1000


def _table_figures(health: Health, table: Table, layer: str, exchange: str, table_name: str,
                   column: str) -> None:
    now = health.at
    snap = table.current_snapshot()
    if snap is not None:
        health.add(COMMIT_AGE_SECONDS, max(0.0, now - snap.timestamp_ms / 1000), layer=layer, exchange=exchange,
                   table=table_name)
    event = newest_event_time(table, column)
    if event is not None:
        health.add(EVENT_AGE_SECONDS, max(0.0, now - event), layer=layer, exchange=exchange, table=table_name)
    summary = snap.summary if snap is not None else None
    health.add(TABLE_BYTES, int(summary.get("total-files-size") or 0) if summary is not None else 0, layer=layer,
               exchange=exchange, table=table_name)
    health.add(TABLE_DATA_FILES, int(summary.get("total-data-files") or 0) if summary is not None else 0,
               layer=layer, exchange=exchange, table=table_name)
    health.add(TABLE_SNAPSHOTS, len(table.metadata.snapshots), layer=layer, exchange=exchange, table=table_name)


def _kafka_figures(health: Health, settings: Settings, exchange: str, bronze: Table) -> float | None:
    """Lag into Bronze and the producer's idle time; returns the age of the oldest unread record."""
    from lakehouse.bronze import iceberg, kafka

    now = health.at
    topic = names.topic(settings, exchange)
    group = names.bronze_reader_group(exchange)
    timeout = min(KAFKA_TIMEOUT_S, settings.bronze_kafka_timeout_s)
    _, committed, _ = iceberg.offsets_on_main(bronze, topic)
    marks = kafka.watermarks(settings.bootstrap_servers, group, topic, timeout)
    starts = {p: max((committed or {}).get(p, 0), m.low) for p, m in marks.items()}
    behind = {p: starts[p] for p, m in marks.items() if m.end > starts[p]}
    records = sum(marks[p].end - start for p, start in behind.items())
    oldest = kafka.record_timestamps(settings.bootstrap_servers, group, topic, behind, timeout)
    lag_s = max(0.0, now - min(oldest.values()) / 1000) if oldest else 0.0
    health.add(KAFKA_LAG_RECORDS, records, exchange=exchange)
    health.add(KAFKA_LAG_SECONDS, lag_s, {"records": records}, exchange=exchange)
    newest = kafka.record_timestamps(settings.bootstrap_servers, group, topic,
                                     {p: m.end - 1 for p, m in marks.items() if m.end > m.low}, timeout)
    if newest:
        health.add(PRODUCER_IDLE_SECONDS, max(0.0, now - max(newest.values()) / 1000), exchange=exchange, topic=topic)
    bronze_commit = _commit_time(bronze.current_snapshot())
    stalled = 0.0
    if records:
        stalled = min(lag_s, now - bronze_commit) if bronze_commit is not None else lag_s
    health.add(STALLED_SECONDS, max(0.0, stalled), layer="bronze", exchange=exchange)
    return lag_s if records else None


def _stream_figures(health: Health, upstream: Table, checkpoint: str, layer: str, exchange: str) -> float | None:
    """The layer's lag and stalled time; returns the age of the oldest upstream append it has not read."""
    now = health.at
    progress = stream_progress(checkpoint)
    if progress is None:
        health.failed(STREAM_FIGURES, f"{layer} {exchange}",
                      ValueError(f"checkpoint {checkpoint} is not local; its progress is unknown"))
        return None
    unread = unread_appends(upstream, progress)
    if not unread:
        health.add(LAYER_LAG_RECORDS, 0, layer=layer, exchange=exchange)
        health.add(LAYER_LAG_SECONDS, 0.0, layer=layer, exchange=exchange)
        health.add(STALLED_SECONDS, 0.0, layer=layer, exchange=exchange)
        return None
    waiting = max(0.0, now - unread[0][0].timestamp_ms / 1000)
    records = unread_records(unread)
    health.add(LAYER_LAG_RECORDS, records, layer=layer, exchange=exchange)
    health.add(LAYER_LAG_SECONDS, waiting, {"records": records}, layer=layer, exchange=exchange)
    stalled = waiting if progress.committed_at is None else min(waiting, now - progress.committed_at)
    health.add(STALLED_SECONDS, max(0.0, stalled), layer=layer, exchange=exchange)
    return waiting


def dlq_rates(silver: Table, dlq: Table, exchange: str, since_ms: int) -> tuple[int, Counter[str]]:
    """(Silver rows, dead letters by error type) that Silver runs of ``exchange`` committed after
    ``since_ms``, from snapshot summaries: Silver appends' record counts, and the dead-letter
    counts recorded on the dead-letter table's appends of that exchange."""
    valid = sum(c.records for c in history.appended(silver.metadata.snapshots, since_ms))
    dead: Counter[str] = Counter()
    for _, counts in history.dead_letters(dlq.metadata.snapshots, exchange, since_ms):
        dead.update(counts)
    return valid, dead


def _dlq_figures(health: Health, settings: Settings, silver: Table, dlq: Table, exchange: str) -> None:
    window = settings.alert_dlq_window_minutes
    valid, dead = dlq_rates(silver, dlq, exchange, int((health.at - window * 60) * 1000))
    total = valid + sum(dead.values())
    shares = {t: (n / total if total else 0.0) for t, n in dead.most_common()}
    words = ", ".join(f"{t} {s:.1%}" for t, s in shares.items()) or "none"
    health.add(DLQ_RATE, sum(shares.values()), {"window": window, "error_types": words, "rows": total},
               exchange=exchange, error_type=ALL_ERROR_TYPES)
    for error_type, share in shares.items():
        health.add(DLQ_RATE, share, {"window": window, "rows": total}, exchange=exchange, error_type=error_type)


def collect(settings: Settings, now: float | None = None, loaded: dict[str, Table] | None = None) -> Health:
    """Every figure for every exchange. A part that cannot be read (Kafka down, a table missing)
    is reported in :attr:`Health.errors` and the rest is still measured.

    ``loaded``, when given, receives every table read, by full name: a caller reading more from the
    same metadata (:mod:`lakehouse.monitor.history`) then loads nothing twice."""
    from pyiceberg.exceptions import NoSuchTableError

    from lakehouse.bronze.errors import BronzeError
    from lakehouse.catalog import load_catalog

    health = Health(at=time.time() if now is None else now)
    catalog = load_catalog(settings)
    dlq: Table | None = None
    for name, (layer, column) in SHARED_TABLES.items():
        try:
            table = catalog.load_table(name)
        except NoSuchTableError as err:
            health.failed((*TABLE_FIGURES, DLQ_RATE), name, err)
            continue
        if loaded is not None:
            loaded[name] = table
        dlq = table if name == names.DLQ_TABLE else dlq
        _table_figures(health, table, layer, "all", name, column)
    for exchange in settings.exchanges:
        try:
            bronze = catalog.load_table(names.bronze_table(exchange))
            silver = catalog.load_table(names.silver_table(exchange))
        except NoSuchTableError as err:
            health.failed(FIGURE_NAMES, f"{exchange} tables", err)
            continue
        if loaded is not None:
            loaded[names.bronze_table(exchange)] = bronze
            loaded[names.silver_table(exchange)] = silver
        _table_figures(health, bronze, "bronze", exchange, names.bronze_table(exchange), EVENT_COLUMNS["bronze"])
        _table_figures(health, silver, "silver", exchange, names.silver_table(exchange), EVENT_COLUMNS["silver"])
        waits: list[float] = []
        errors = len(health.errors)
        try:
            kafka_wait = _kafka_figures(health, settings, exchange, bronze)
            if kafka_wait is not None:
                waits.append(kafka_wait)
        except BronzeError as err:  # Kafka down or topic missing: one line, the rest goes on
            health.failed((KAFKA_LAG_RECORDS, KAFKA_LAG_SECONDS, PRODUCER_IDLE_SECONDS, END_TO_END_SECONDS,
                           STALLED_SECONDS), f"kafka {exchange}", err)
        for upstream, checkpoint, layer in (
                (bronze, names.checkpoint(settings, "silver", exchange), "silver"),
                (silver, names.gold_checkpoint(settings, exchange), "gold")):
            try:
                wait = _stream_figures(health, upstream, checkpoint, layer, exchange)
            except (OSError, ValueError, KeyError) as err:
                health.failed(STREAM_FIGURES, f"{layer} {exchange} checkpoint", err)
                continue
            if wait is not None:
                waits.append(wait)
        if len(health.errors) == errors:  # every stage of this exchange was read
            health.add(END_TO_END_SECONDS, max(waits, default=0.0), exchange=exchange)
        if dlq is not None:
            _dlq_figures(health, settings, silver, dlq, exchange)
    return health


def publish(settings: Settings, health: Health) -> None:
    """Every figure as a StatsD gauge ``monitor.<figure>`` tagged with its labels."""
    from lakehouse.metrics import StatsD

    statsd = StatsD.from_settings(settings)
    try:
        for figure in health.figures:
            statsd.gauge(f"monitor.{figure.name}", round(figure.value, 6), dict(figure.labels))
    finally:
        statsd.close()


def as_json(health: Health) -> dict[str, Any]:
    return {"at": health.at, "errors": list(health.errors),
            "figures": [{"name": f.name, "labels": dict(f.labels), "value": f.value} for f in health.figures]}


__all__ = ["COMMIT_AGE_SECONDS", "END_TO_END_SECONDS", "EVENT_AGE_SECONDS", "FIGURE_NAMES", "KAFKA_LAG_RECORDS",
           "LAYER_LAG_RECORDS", "LAYER_LAG_SECONDS", "STREAM_FIGURES", "TABLE_BYTES", "TABLE_DATA_FILES",
           "TABLE_FIGURES", "TABLE_SNAPSHOTS", "Health", "StreamProgress", "as_json", "collect", "dlq_rates",
           "newest_event_time", "oldest_unread_append", "publish", "stream_progress", "unread_appends",
           "unread_records"]
