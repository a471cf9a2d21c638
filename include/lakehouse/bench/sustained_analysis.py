"""Pure analysis of the sustained-load benchmark (``lakehouse bench sustained``).

Everything here works on plain data that the runner collected (samples, timestamps, rows of the
Airflow metadata DB, alert lines, run reports), so each figure can be checked on small inline
data in unit tests; the runner (:mod:`lakehouse.bench.sustained`) only collects and prints.

Times are epoch seconds (floats) unless a name says otherwise; minute ``m`` of a run is the
interval ``(t0 + 60 (m-1), t0 + 60 m]`` after the producers started at ``t0``.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Tries of a task that count as failures (a retried try is recorded as up_for_retry in Airflow 3).
FAILED_STATES = frozenset({"failed", "up_for_retry", "upstream_failed"})
FINISHED_STATES = frozenset({"success"}) | FAILED_STATES
# The producers stop a moment after the last whole minute: a slope window may end that much later.
SLOPE_TOLERANCE_S = 5.0


@dataclass(frozen=True)
class Window:
    """A time interval ``[start, end]`` in epoch seconds."""

    start: float
    end: float

    def __contains__(self, t: object) -> bool:
        return isinstance(t, (int, float)) and self.start <= t <= self.end

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Sample:
    """What the runner saw at one moment: reported topic ends and table row counts (None: not read)."""

    t: float
    end_offsets: int | None = None
    tables: Mapping[str, int] = field(default_factory=dict)  # layer (bronze/silver/dlq/gold) -> rows


@dataclass(frozen=True)
class TaskTry:
    """One try of an Airflow task instance (from task_instance or task_instance_history)."""

    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    state: str | None
    start: float | None
    end: float | None
    duration: float | None


# --- windows and statistics --------------------------------------------------------------------

def steady_window(t0: float, stopped_at: float, warmup_s: float) -> Window | None:
    """The steady state: after the warm-up, until the producers stopped (None if the run was shorter)."""
    start = t0 + warmup_s
    return Window(start, stopped_at) if stopped_at > start else None


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation), None for no values."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return None
    return float(np.percentile(arr, q))


def summary(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """count, p50, p99, max (None where there is nothing to summarize)."""
    arr = np.asarray(values, dtype=float)
    return {"count": int(arr.size), "p50": percentile(arr, 50), "p99": percentile(arr, 99),
            "max": float(arr.max()) if arr.size else None}


def median(values: Iterable[float]) -> float | None:
    items = list(values)
    return float(statistics.median(items)) if items else None


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope dy/dx; None for fewer than 3 points or no spread in x."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    if len(xs) < 3:
        return None
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    dx = x - x.mean()
    denominator = float((dx * dx).sum())
    if denominator == 0.0:
        return None
    return float((dx * (y - y.mean())).sum() / denominator)


# --- produced records over time -----------------------------------------------------------------

def produced_by(sorted_ts: np.ndarray | Sequence[float], t: float) -> int:
    """How many records were produced at or before ``t`` (``sorted_ts``: producer times, ascending)."""
    return int(np.searchsorted(np.asarray(sorted_ts, dtype=float), t, side="right"))


def seconds_behind(t: float, in_gold: int, sorted_ts: np.ndarray | Sequence[float]) -> float:
    """Age at ``t`` of the oldest record not yet in Gold (0 when Gold holds everything produced by then).

    Gold is taken to hold the oldest ``in_gold`` records, which holds closely for a pipeline that
    moves each topic partition in order; it is what a consumer-lag-in-seconds metric shows.
    """
    arr = np.asarray(sorted_ts, dtype=float)
    produced = int(np.searchsorted(arr, t, side="right"))
    if in_gold >= produced:
        return 0.0
    return max(0.0, t - float(arr[max(0, in_gold)]))


def lag_series(samples: Sequence[Sample], sorted_ts: np.ndarray | Sequence[float] | None
               ) -> list[dict[str, float | int | None]]:
    """Per sample: produced (exact from producer times, else the reported topic ends), Gold, lag, seconds behind."""
    out: list[dict[str, float | int | None]] = []
    for s in samples:
        produced = produced_by(sorted_ts, s.t) if sorted_ts is not None else s.end_offsets
        gold = s.tables.get("gold")
        lag = produced - gold if produced is not None and gold is not None else None
        behind = seconds_behind(s.t, gold, sorted_ts) if sorted_ts is not None and gold is not None else None
        out.append({"t": s.t, "produced": produced, "gold": gold, "lag": lag, "seconds_behind": behind})
    return out


def lag_slope(series: Sequence[Mapping[str, Any]], t0: float, from_min: float, to_min: float,
              produced_until: float) -> float | None:
    """Slope of the lag in records per minute between minutes ``from_min`` and ``to_min`` after ``t0``.

    None when the producers did not run through the whole interval (after they stop the lag only
    drains, which would read as a falling slope) or when there are too few samples.
    """
    start, end = t0 + from_min * 60, t0 + to_min * 60
    if produced_until + SLOPE_TOLERANCE_S < end:
        return None
    points = [(p["t"], p["lag"]) for p in series if p.get("lag") is not None and start <= p["t"] <= end]
    slope = linear_slope([(t - t0) / 60 for t, _ in points], [lag for _, lag in points])
    return slope


# --- per-minute bucketing ------------------------------------------------------------------------

def minute_of(t: float | np.ndarray, t0: float) -> np.ndarray:
    """Minute number (1-based) of each time: minute m is (t0 + 60 (m-1), t0 + 60 m]."""
    return np.ceil((np.asarray(t, dtype=float) - t0) / 60.0).astype(np.int64)


def per_minute_stats(times: np.ndarray | Sequence[float], values: np.ndarray | Sequence[float], t0: float,
                     minutes: int) -> list[dict[str, float | int | None]]:
    """p50/p99/max/count of ``values`` grouped by the minute of ``times``, for minutes 1..``minutes``."""
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    bucket = minute_of(t, t0) if t.size else np.zeros(0, dtype=np.int64)
    out = []
    for m in range(1, minutes + 1):
        out.append({"minute": m, **summary(v[bucket == m])})
    return out


def last_sample_at(samples: Sequence[Sample], t: float, tolerance_s: float) -> Sample | None:
    """The last sample taken at or before ``t``, if it is at most ``tolerance_s`` old."""
    best = None
    for s in samples:
        if s.t <= t:
            best = s
        else:
            break
    if best is None or t - best.t > tolerance_s:
        return None
    return best


def per_minute_table(samples: Sequence[Sample], sorted_ts: np.ndarray | Sequence[float] | None, t0: float,
                     minutes: int, tolerance_s: float = 15.0) -> list[dict[str, Any]]:
    """One row per minute: what was produced (total and in that minute), in each layer, lag at its end."""
    rows: list[dict[str, Any]] = []
    previous_total: int | None = 0
    for m in range(1, minutes + 1):
        t_end = t0 + 60 * m
        sample = last_sample_at(samples, t_end, tolerance_s)
        if sorted_ts is not None:
            total: int | None = produced_by(sorted_ts, t_end)
        else:  # without producer times: the topic ends the last sample reported
            total = sample.end_offsets if sample is not None else None
        row: dict[str, Any] = {
            "minute": m, "produced_total": total,
            "produced": total - previous_total if total is not None and previous_total is not None else None,
            "sample_t": None, "end_offsets": None, "bronze": None, "silver": None, "dlq": None, "gold": None,
            "lag": None, "seconds_behind": None}
        if sample is not None:
            [point] = lag_series([sample], sorted_ts)
            row.update({"sample_t": sample.t, "end_offsets": sample.end_offsets,
                        **{layer: sample.tables.get(layer) for layer in ("bronze", "silver", "dlq", "gold")},
                        "lag": point["lag"], "seconds_behind": point["seconds_behind"]})
        previous_total = total
        rows.append(row)
    return rows


# --- the Confluent-framed V2 value ------------------------------------------------------------------

def message_id_of(value: bytes | None) -> str | None:
    """The ``message_id`` of a V2 trade value without decoding the rest: it is the record's first field.

    Confluent framing (magic byte 0, 4-byte schema id), then an Avro string: zig-zag varint length
    and UTF-8 bytes. None when the value is not framed that way.
    """
    if not value or len(value) < 6 or value[0] != 0:
        return None
    pos, shift, zigzag = 5, 0, 0
    while True:
        if pos >= len(value) or shift > 63:
            return None
        byte = value[pos]
        pos += 1
        zigzag |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    length = (zigzag >> 1) ^ -(zigzag & 1)
    if length < 0 or pos + length > len(value):
        return None
    try:
        return value[pos:pos + length].decode()
    except UnicodeDecodeError:
        return None


# --- Gold freshness and completeness --------------------------------------------------------------

def freshness_seconds(producer_us: np.ndarray | Sequence[int], gold_ts_us: np.ndarray | Sequence[int],
                      window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(producer time s, freshness s) of the Gold rows whose producer time falls in ``window``."""
    produced = np.asarray(producer_us, dtype=np.float64) / 1e6
    gold = np.asarray(gold_ts_us, dtype=np.float64) / 1e6
    keep = (produced >= window.start) & (produced <= window.end) & ~np.isnan(gold)
    return produced[keep], gold[keep] - produced[keep]


def missing_from_gold(produced_ids: Sequence[str | None], produced_ts: np.ndarray | Sequence[float],
                      gold_ids: Iterable[str | None], window: Window) -> int:
    """Records produced within ``window`` whose message_id Gold does not hold (ids are unique per trade)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = np.asarray(produced_ts, dtype=float)
    mask = (ts >= window.start) & (ts <= window.end)
    ids = pa.array(produced_ids, type=pa.string()).filter(pa.array(mask))
    gold = gold_ids if isinstance(gold_ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(gold_ids), pa.string())
    if isinstance(gold, pa.ChunkedArray):
        gold = gold.combine_chunks()
    present = pc.is_in(ids, value_set=gold.cast(pa.string()))
    return int(len(ids) - pc.sum(present.cast(pa.int64())).as_py()) if len(ids) else 0


# --- Airflow metadata, alerts, run reports ------------------------------------------------------

def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an ISO time as Airflow (SQLite) and the alert log write it; naive means UTC."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def task_summary(tries: Sequence[TaskTry], layer_of_dag: Mapping[str, str], window: Window | None,
                 after: float) -> dict[str, dict[str, Any]]:
    """Per layer: duration p50/max of the tries that ran to success or failure and started in ``window``
    (skipped tries, runs with nothing new, are only counted), failed tries in total and among those that
    started at or after ``after`` (the end of the warm-up)."""
    out: dict[str, dict[str, Any]] = {}
    for layer in dict.fromkeys(layer_of_dag.values()):
        mine = [t for t in tries if layer_of_dag.get(t.dag_id) == layer]
        durations = [t.duration for t in mine if t.state in FINISHED_STATES and t.duration is not None
                     and (window is None or (t.start is not None and t.start in window))]
        failed = [t for t in mine if t.state in FAILED_STATES]
        out[layer] = {
            "tries": len(mine),
            "skipped": sum(1 for t in mine if t.state == "skipped"),
            "steady_finished": len(durations),
            "duration_p50_s": percentile(durations, 50),
            "duration_max_s": max(durations) if durations else None,
            "failed": len(failed),
            "failed_after_warmup": sum(1 for t in failed if t.start is not None and t.start >= after),
        }
    return out


def alert_counts(alerts: Sequence[Mapping[str, Any]], event: str, after: float) -> dict[str, Any]:
    """How many alerts of ``event`` there were, how many at or after ``after``, and per layer."""
    mine = [a for a in alerts if a.get("event") == event]
    late = [a for a in mine if (parse_time(a.get("emitted_at")) or 0.0) >= after]
    by_layer: dict[str, int] = {}
    for a in mine:
        key = str(a.get("layer") or a.get("dag_id") or "?")
        by_layer[key] = by_layer.get(key, 0) + 1
    return {"total": len(mine), "after_warmup": len(late), "by_layer": by_layer}


def phase_medians(reports: Sequence[Mapping[str, Any]], phases: Sequence[str], window: Window | None
                  ) -> dict[str, Any]:
    """Median seconds per phase over the run reports submitted within ``window`` (None: all of them)."""
    def when(r: Mapping[str, Any]) -> float | None:
        for key in ("submitted_at", "finished_at"):
            value = r.get(key)
            if isinstance(value, (int, float)):
                return float(value)
        return None

    chosen = [r for r in reports if window is None or (when(r) is not None and when(r) in window)]
    medians = {}
    for p in phases:
        values = [float(r["phases"][p]) for r in chosen
                  if isinstance(r.get("phases"), Mapping) and isinstance(r["phases"].get(p), (int, float))]
        medians[p] = median(values)
    return {"runs": len(chosen), "phases": medians}


# --- output ------------------------------------------------------------------------------------------

def format_value(value: float | None) -> str:
    """The number format of ``lakehouse.bench.report``; "n/a" for a figure that could not be measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def bench_line(name: str, value: float | None, unit: str) -> str:
    """One ``BENCH <name> <value> <unit>`` line."""
    if not name or any(ch.isspace() for ch in name) or not unit or any(ch.isspace() for ch in unit):
        raise ValueError(f"BENCH name and unit must be single words, got {name!r} {unit!r}")
    return f"BENCH {name} {format_value(value)} {unit}"


__all__ = ["FAILED_STATES", "Sample", "TaskTry", "Window", "alert_counts", "bench_line", "format_value",
           "freshness_seconds", "lag_series", "lag_slope", "last_sample_at", "linear_slope", "median",
           "message_id_of", "minute_of", "missing_from_gold", "parse_time", "per_minute_stats", "per_minute_table",
           "percentile", "phase_medians", "produced_by", "seconds_behind", "steady_window", "summary",
           "task_summary"]
