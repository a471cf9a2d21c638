"""The pipeline's recent past from Iceberg metadata only: records per minute through each layer and
the dead-letter rate by error type, over the last hours.

Every append snapshot says when it was committed and how many records it added (``added-records``
of its summary); Silver's dead-letter commits also say how many rows of which error type they hold
(:data:`lakehouse.names.SILVER_DEAD_PROPERTY`, tagged with the exchange). Binning those by commit
time gives the history without reading a data file or keeping a time series of our own: the
snapshots a table retains (a day by default) are the record. :func:`lakehouse.monitor.figures.dlq_rates`
sums the same per-snapshot figures over its alert window, so the chart and the alert agree.

Pure functions over snapshots (unit tests build a few by hand); :func:`history` reads the tables
:func:`lakehouse.monitor.figures.collect` already loaded.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lakehouse import names

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

# How far back the charts look, and their bins: minutes for throughput, five minutes for the
# dead-letter rate (a rate over one minute of a quiet exchange is mostly noise).
HOURS = 3
RECORDS_BIN_S = 60
DLQ_BIN_S = 300
UNRECORDED = "unrecorded"  # the error type of dead letters whose commit did not record their types
GOLD_SOURCE = "all"  # Gold is one table for every exchange: its throughput is not split by exchange


@dataclass(frozen=True)
class Commit:
    """One append: its commit time (epoch milliseconds) and the records it added."""

    at_ms: int
    records: int


# Commits that bring new rows: appends, and the overwrites Gold's MERGE writes. Compactions
# ("replace") and deletes add none.
_ADDING = ("append", "overwrite")


def _is_append(snap: Snapshot) -> bool:
    return snap.summary is not None and snap.summary.operation.value == "append"


def _adds_rows(snap: Snapshot) -> bool:
    return snap.summary is not None and snap.summary.operation.value in _ADDING


def summary_properties(snap: Snapshot) -> dict[str, str]:
    """A snapshot summary's properties (all but the operation) as a plain dict.

    pyiceberg's ``Summary.get`` and ``additional_properties`` reach them through pydantic's
    ``__getattr__`` for private attributes, about 8 µs an access: reading a day of minute snapshots
    that way cost the page 0.2 s of a 0.9 s computation. ``__pydantic_private__`` is where pydantic
    v2 keeps a model's private attributes (a slot: a plain attribute read); the property is the
    fallback should that change.
    """
    summary = snap.summary
    if summary is None:
        return {}
    private = getattr(summary, "__pydantic_private__", None)
    props = private.get("_additional_properties") if isinstance(private, dict) else None
    return props if isinstance(props, dict) else summary.additional_properties


def _added(snap: Snapshot) -> int:
    """The rows a commit brought: an overwrite's added records less the ones it rewrote away."""
    props = summary_properties(snap)
    added = int(props.get("added-records") or 0)
    if snap.summary is not None and snap.summary.operation.value == "overwrite":
        added -= int(props.get("deleted-records") or 0)
    return max(added, 0)


def main_appends(table: Table, overwrites: bool = False) -> list[Snapshot]:
    """The append snapshots of main's history (with ``overwrites``, Gold's MERGE commits too), oldest first (what an Iceberg stream reads; a
    Bronze run's branch that never reached main is not in it). Parents are found through an index
    built once: pyiceberg's ``snapshot_by_id`` scans the list, which over a day of minute snapshots
    makes the walk quadratic (about 0.1 s per walk of 1,440 snapshots)."""
    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    out = []
    snap = table.current_snapshot()
    while snap is not None:
        if _adds_rows(snap) if overwrites else _is_append(snap):
            out.append(snap)
        snap = by_id.get(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return out[::-1]


def appended(snapshots: Iterable[Snapshot], since_ms: int) -> list[Commit]:
    """The appends committed at or after ``since_ms`` (compactions and deletes add no records), oldest first."""
    commits = [Commit(s.timestamp_ms, _added(s))
               for s in snapshots if s.timestamp_ms >= since_ms and _adds_rows(s)]
    return sorted(commits, key=lambda c: c.at_ms)


def dead_letters(snapshots: Iterable[Snapshot], exchange: str, since_ms: int) -> list[tuple[int, Counter[str]]]:
    """(commit time ms, dead letters by error type) of each dead-letter append of ``exchange`` at or
    after ``since_ms``. A commit without readable counts counts its added records as
    :data:`UNRECORDED`: they are dead letters all the same."""
    out: list[tuple[int, Counter[str]]] = []
    for snap in snapshots:
        summary = snap.summary
        if snap.timestamp_ms < since_ms or summary is None or summary.operation.value != "append":
            continue
        props = summary_properties(snap)
        if props.get(names.SILVER_EXCHANGE_PROPERTY) != exchange:
            continue
        try:
            counts = json.loads(props.get(names.SILVER_DEAD_PROPERTY) or "{}")
        except ValueError:
            counts = {}
        if not isinstance(counts, dict) or not counts:
            counts = {UNRECORDED: int(props.get("added-records") or 0)}
        out.append((snap.timestamp_ms, Counter({str(k): int(v) for k, v in counts.items()})))
    return sorted(out, key=lambda item: item[0])


def bin_starts(start_ms: int, end_ms: int, bin_s: int) -> list[int]:
    """The starts (epoch ms) of the bins of ``bin_s`` seconds covering [start_ms, end_ms)."""
    step = bin_s * 1000
    return [start_ms + i * step for i in range(max(0, math.ceil((end_ms - start_ms) / step)))]


def window(now: float, hours: float, bin_s: int) -> tuple[int, int]:
    """[start, end) in epoch ms of the complete bins of the last ``hours``: aligned to the clock, so a
    bin holds the same commits from one refresh to the next; the bin still filling is left out."""
    step = bin_s * 1000
    end = int(now * 1000) // step * step
    return end - int(hours * 3600 * 1000) // step * step, end


def _index(at_ms: int, start_ms: int, bin_s: int, count: int) -> int | None:
    i = (at_ms - start_ms) // (bin_s * 1000)
    return i if 0 <= i < count else None


def per_minute(commits: Iterable[Commit], start_ms: int, bin_s: int, count: int) -> list[float]:
    """Records per minute in each of ``count`` bins of ``bin_s`` seconds from ``start_ms``."""
    totals = [0.0] * count
    for commit in commits:
        i = _index(commit.at_ms, start_ms, bin_s, count)
        if i is not None:
            totals[i] += commit.records
    return [t * 60 / bin_s for t in totals]


def dlq_rate_series(valid: Iterable[Commit], dead: Iterable[tuple[int, Counter[str]]], start_ms: int, bin_s: int,
                    count: int) -> dict[str, list[float | None]]:
    """Per error type, the dead-letter rate in each bin: its dead letters over the bin's rows (Silver
    rows plus every dead letter), the same ratio as the ``dlq_rate`` figure. None where the bin has
    no rows at all (nothing was processed: no rate, rather than a rate of 0)."""
    rows = [0] * count
    by_type: dict[str, list[int]] = {}
    for commit in valid:
        i = _index(commit.at_ms, start_ms, bin_s, count)
        if i is not None:
            rows[i] += commit.records
    for at_ms, counts in dead:
        i = _index(at_ms, start_ms, bin_s, count)
        if i is None:
            continue
        for error_type, n in counts.items():
            by_type.setdefault(error_type, [0] * count)[i] += n
            rows[i] += n
    return {t: [(n / rows[i] if rows[i] else None) for i, n in enumerate(series)]
            for t, series in sorted(by_type.items())}


@dataclass
class History:
    """The charts' data: bin starts and, per exchange, one series per layer or error type."""

    records_bins_ms: list[int]
    dlq_bins_ms: list[int]
    records: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # exchange -> layer -> per minute
    dlq_rate: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)  # exchange -> type -> rate

    def as_json(self) -> dict[str, Any]:
        return {"records_bin_seconds": RECORDS_BIN_S, "records_bins": [t / 1000 for t in self.records_bins_ms],
                "dlq_bin_seconds": DLQ_BIN_S, "dlq_bins": [t / 1000 for t in self.dlq_bins_ms],
                "records_per_minute": self.records, "dlq_rate": self.dlq_rate}


def history(exchanges: Iterable[str], tables: Mapping[str, Table], now: float, hours: float = HOURS) -> History:
    """The last ``hours`` of each exchange's Bronze and Silver appends, Gold's (for every exchange,
    under :data:`GOLD_SOURCE`) and the dead-letter rate by error type, from ``tables`` (by full name;
    a table missing there has no series)."""
    records_start, records_end = window(now, hours, RECORDS_BIN_S)
    dlq_start, dlq_end = window(now, hours, DLQ_BIN_S)
    out = History(bin_starts(records_start, records_end, RECORDS_BIN_S), bin_starts(dlq_start, dlq_end, DLQ_BIN_S))
    n_records, n_dlq = len(out.records_bins_ms), len(out.dlq_bins_ms)
    gold = tables.get(names.GOLD_TABLE)
    gold_series = (per_minute(appended(main_appends(gold, overwrites=True), records_start), records_start, RECORDS_BIN_S,
                              n_records) if gold is not None else None)
    dlq = tables.get(names.DLQ_TABLE)
    for exchange in exchanges:
        layers: dict[str, list[float]] = {}
        for layer, name in (("bronze", names.bronze_table(exchange)), ("silver", names.silver_table(exchange))):
            table = tables.get(name)
            if table is not None:
                layers[layer] = per_minute(appended(main_appends(table), records_start), records_start,
                                           RECORDS_BIN_S, n_records)
        if gold_series is not None:
            layers["gold"] = gold_series
        out.records[exchange] = layers
        silver = tables.get(names.silver_table(exchange))
        if silver is not None and dlq is not None:
            out.dlq_rate[exchange] = dlq_rate_series(appended(silver.metadata.snapshots, dlq_start),
                                                     dead_letters(dlq.metadata.snapshots, exchange, dlq_start),
                                                     dlq_start, DLQ_BIN_S, n_dlq)
    return out


__all__ = ["DLQ_BIN_S", "GOLD_SOURCE", "HOURS", "RECORDS_BIN_S", "UNRECORDED", "Commit", "History", "appended",
           "bin_starts", "dead_letters", "dlq_rate_series", "history", "main_appends", "per_minute", "window"]
