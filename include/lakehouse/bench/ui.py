"""The Lakehouse page's cost: its JSON endpoint over a stack with a day of one-minute commits.

An isolated embedded stack (temporary LAKEHOUSE_HOME, free ports: broker, topics, registry, the
SQLite catalog and every table) gets a day of the pipeline's metadata: 1,440 append snapshots on
each exchange's Bronze and Silver table and on Gold, and a dead-letter commit every ten minutes per
exchange carrying the error-type counts Silver records. Each table's first commit writes one real
data file (a row of the table's own schema); every later commit appends that same file again, with
the summary properties the real writers set. To build the day in minutes rather than an hour,
an hour of snapshots (:data:`BATCH`) is staged in one transaction and committed at once: each is
a snapshot of its own (its manifest, its manifest list, its summary), only the metadata.json is
written once per hour instead of once per minute. The manifests are merged once an hour
(:data:`BATCH` of them, a merge append), as the hourly maintenance's ``rewrite_manifests`` keeps
a real table's manifest list short; with a manifest list growing by one entry per minute all day
the build writes O(commits²) manifest-list entries and took 875 s. What the page reads is
metadata only (snapshot lists and summaries, the newest append's manifest, checkpoints, Kafka
offsets), and that metadata has the shape of a day of minute commits: 1,440 snapshots, each with
its manifest list, a metadata.json of over a megabyte per table. Without any checkpoint the streams count every
append as unread, so the lag figures walk each table's whole history, as a stalled stack would.

Figures (the median of :data:`REPEATS` runs each):

- ``ui_figures_floor_ms``: the figures computed by calling the monitor directly
  (:func:`lakehouse.monitor.overview.report`), with an empty table-metadata cache as in a fresh
  process: what the page cannot be cheaper than;
- ``ui_page_cold_ms``: ``GET /api/health`` through the page's FastAPI app in-process (Airflow's
  login check replaced by a stub; the maintenance runs, an Airflow query, left out), on a new app
  (empty figures cache) and an empty metadata cache: a first viewer, or one after the TTL;
- ``ui_page_warm_ms``: the same request again within the TTL (served from the cache): every
  other viewer;
- ``ui_page_html_warm_ms``: ``GET /`` (the rendered page) within the TTL; ``ui_json_bytes``.

The target: the page loads in under a second on this stack. A viewer gets the cached figures
(``ui_page_warm_ms``: the page's app refreshes them in the background while the page is open); only
the first request after a quiet spell pays ``ui_page_cold_ms``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lakehouse import names, stack
from lakehouse.bench import free_port, report
from lakehouse.catalog import METADATA_CACHE, load_catalog, transaction
from lakehouse.settings import Settings, load_settings

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table, Transaction

COMMITS = 1440  # one day of one-minute commits
DLQ_EVERY = 10  # a dead-letter commit per exchange every this many minutes
REPEATS = 3
BATCH = 60  # snapshots staged per catalog commit while the history is built




def _value(field: pa.Field, now: dt.datetime) -> Any:
    """A valid value of an Arrow field (one row of any table of the product)."""
    kind = field.type
    if pa.types.is_struct(kind):
        return {kind.field(i).name: _value(kind.field(i), now) for i in range(kind.num_fields)}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        return []
    if pa.types.is_timestamp(kind):
        return now if kind.tz else now.replace(tzinfo=None)
    if pa.types.is_date(kind):
        return now.date()
    if pa.types.is_decimal(kind):
        return decimal.Decimal(1)
    if pa.types.is_boolean(kind):
        return False
    if pa.types.is_integer(kind):
        return 1
    if pa.types.is_floating(kind):
        return 1.0
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return b"\0" * (kind.byte_width if pa.types.is_fixed_size_binary(kind) else 1)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "bench"
    raise TypeError(f"no bench value for {field.name}: {kind}")


def _first_commit(table: Table, properties: dict[str, str]) -> DataFile:
    """One real row appended; returns its data file (the later commits append it again)."""
    schema = table.schema().as_arrow()
    now = dt.datetime.now(dt.timezone.utc)
    row = {f.name: _value(f, now) for f in schema}
    with transaction(table) as tx:
        tx.append(pa.Table.from_pylist([row], schema=schema), snapshot_properties=properties)
    snap = table.current_snapshot()
    assert snap is not None
    return next(iter(snap.manifests(table.io)[0].fetch_manifest_entry(table.io))).data_file


def _merge_append(tx: Transaction, data_file: DataFile, properties: dict[str, str]) -> None:
    """Stage one append of ``data_file`` that merges the manifests once there are :data:`BATCH` of them."""
    with tx.update_snapshot(snapshot_properties=properties).merge_append() as append:
        append.append_data_file(data_file)


def build_day(settings: Settings, commits: int) -> None:
    """``commits`` minute commits on every exchange's Bronze and Silver, on Gold, and the dead letters."""
    catalog = load_catalog(settings)
    tables: list[tuple[Table, dict[str, str]]] = [(catalog.load_table(names.GOLD_TABLE), {})]
    dlq = catalog.load_table(names.DLQ_TABLE)
    for exchange in settings.exchanges:
        tables.append((catalog.load_table(names.bronze_table(exchange)), {names.BRONZE_RUN_PROPERTY: "bench-ui"}))
        tables.append((catalog.load_table(names.silver_table(exchange)),
                       {names.SILVER_EXCHANGE_PROPERTY: exchange, names.SILVER_DEAD_PROPERTY: "{}"}))
    for table, _ in [*tables, (dlq, {})]:  # merge the manifests hourly (see the module doc)
        with transaction(table) as tx:
            tx.set_properties({"commit.manifest-merge.enabled": "true",
                               "commit.manifest.min-count-to-merge": str(BATCH)})
    files = [_first_commit(table, {**props, names.SILVER_BATCH_PROPERTY: "bench-ui:0"}) for table, props in tables]
    dead = {exchange: {names.SILVER_EXCHANGE_PROPERTY: exchange,
                       names.SILVER_DEAD_PROPERTY: json.dumps({"invalid_price": 2, "decode_error": 1})}
            for exchange in settings.exchanges}
    dlq_file = _first_commit(dlq, {**dead[settings.exchanges[0]], names.SILVER_BATCH_PROPERTY: "bench-ui:0"})
    for first in range(1, commits, BATCH):  # an hour of snapshots per catalog commit (see the module doc)
        batch = range(first, min(first + BATCH, commits))
        for (table, props), data_file in zip(tables, files):
            with transaction(table) as tx:
                for commit in batch:
                    _merge_append(tx, data_file, {**props, names.SILVER_BATCH_PROPERTY: f"bench-ui:{commit}"})
        dead_commits = [c for c in batch if c % DLQ_EVERY == 0]
        if dead_commits:
            with transaction(dlq) as tx:
                for commit in dead_commits:
                    for exchange in settings.exchanges:
                        _merge_append(tx, dlq_file, {**dead[exchange],
                                                     names.SILVER_BATCH_PROPERTY: f"bench-ui:{commit}"})


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def run(scale: float) -> None:
    commits = max(60, round(COMMITS * scale))
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-ui-"))
    settings = load_settings({"LAKEHOUSE_HOME": str(home), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
                              "LAKEHOUSE_STATSD_PORT": str(free_port()), "LAKEHOUSE_LOG_LEVEL": "WARNING"})
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))  # the app imports Airflow's auth check
    try:
        stack.up(settings)
        started = time.perf_counter()
        build_day(settings, commits)
        report("ui_history_commits", commits, "commits")
        report("ui_history_build_s", _ms(started) / 1000, "s")
        _measure(settings)
    finally:
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)


def _measure(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from lakehouse.monitor.overview import report as figures_report
    from lakehouse.ui.app import AUTHORIZED, create_app

    for client_logger in ("httpx", "httpx2"):  # importing Airflow's auth check logs every request at INFO
        logging.getLogger(client_logger).setLevel(logging.WARNING)

    def compute() -> dict[str, Any]:
        return {**figures_report(settings), "maintenance": []}

    floor, cold, warm, html_warm = [], [], [], []
    size = 0
    for _ in range(REPEATS):
        METADATA_CACHE.clear()
        started = time.perf_counter()
        figures = figures_report(settings)
        floor.append(_ms(started))
        if figures["errors"]:
            raise RuntimeError(f"the monitor could not measure: {figures['errors']}")
    for _ in range(REPEATS):
        METADATA_CACHE.clear()
        app = create_app(compute)
        app.dependency_overrides[AUTHORIZED] = lambda: None
        with TestClient(app) as client:
            started = time.perf_counter()
            response = client.get("/api/health")
            cold.append(_ms(started))
            response.raise_for_status()
            size = len(response.content)
            started = time.perf_counter()
            client.get("/api/health").raise_for_status()
            warm.append(_ms(started))
            started = time.perf_counter()
            client.get("/").raise_for_status()
            html_warm.append(_ms(started))
    report("ui_figures_floor_ms", statistics.median(floor), "ms")
    report("ui_page_cold_ms", statistics.median(cold), "ms")
    report("ui_page_warm_ms", statistics.median(warm), "ms")
    report("ui_page_html_warm_ms", statistics.median(html_warm), "ms")
    report("ui_json_bytes", size, "bytes")
