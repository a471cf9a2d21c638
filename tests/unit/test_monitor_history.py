"""The monitor's history (records per minute, dead-letter rate by error type) and per-layer lag
figures, on snapshots built by hand: no catalog, no Spark."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyiceberg.table.snapshots import Operation, Snapshot, Summary

from lakehouse import names
from lakehouse.metrics import METRICS
from lakehouse.monitor import figures as F
from lakehouse.monitor import history as H

EX = "binance"
T0 = 1_800_000_000_000  # epoch ms on a five-minute boundary, so bins start at T0


def snap(sid: int, at_ms: int, records: int, *, op: Operation = Operation.APPEND, files: int = 1,
         parent: int | None = None, **props: str) -> Snapshot:
    return Snapshot(snapshot_id=sid, parent_snapshot_id=parent, sequence_number=sid, timestamp_ms=at_ms,
                    manifest_list=f"snap-{sid}.avro",
                    summary=Summary(op, **{"added-records": str(records), "added-data-files": str(files), **props}))


def chain(*specs: tuple[int, int, int]) -> list[Snapshot]:
    """Snapshots (id, commit time ms, records), each the parent of the next."""
    out: list[Snapshot] = []
    for sid, at_ms, records in specs:
        out.append(snap(sid, at_ms, records, parent=out[-1].snapshot_id if out else None))
    return out


@dataclass
class FakeMetadata:
    snapshots: list[Snapshot] = field(default_factory=list)

    def snapshot_by_id(self, sid: int) -> Snapshot | None:
        return next((s for s in self.snapshots if s.snapshot_id == sid), None)


@dataclass
class FakeTable:
    """What the monitor reads of a pyiceberg Table: its metadata's snapshots and the current one."""

    metadata: FakeMetadata

    def current_snapshot(self) -> Snapshot | None:
        return self.metadata.snapshots[-1] if self.metadata.snapshots else None


def dead(sid: int, at_ms: int, exchange: str, counts: dict[str, int] | None, records: int = 0) -> Snapshot:
    props = {names.SILVER_EXCHANGE_PROPERTY: exchange}
    if counts is not None:
        props[names.SILVER_DEAD_PROPERTY] = json.dumps(counts)
    return snap(sid, at_ms, records or sum((counts or {}).values()), **props)


def test_t0_is_a_minute_and_five_minute_boundary() -> None:
    assert T0 % 300_000 == 0


def test_appended_counts_appends_since_the_start_only() -> None:
    snaps = [snap(1, T0 - 1, 100), snap(2, T0, 10), snap(3, T0 + 5, 7, op=Operation.REPLACE),
             snap(4, T0 + 9, 0, op=Operation.DELETE), snap(5, T0 + 60_000, 3)]
    assert H.appended(reversed(snaps), T0) == [H.Commit(T0, 10), H.Commit(T0 + 60_000, 3)]


def test_main_appends_follow_mains_ancestry_only() -> None:
    """A Bronze run's branch that never reached main is not what the layer committed."""
    snaps = [snap(1, T0, 5), snap(2, T0 + 1, 6, parent=1), snap(3, T0 + 2, 99, parent=1),
             snap(5, T0 + 3, 0, op=Operation.REPLACE, parent=2), snap(4, T0 + 4, 7, parent=5)]
    table = FakeTable(FakeMetadata(snaps))
    assert [s.snapshot_id for s in H.main_appends(table)] == [1, 2, 4]  # type: ignore[arg-type]


def test_dead_letters_of_one_exchange_with_unrecorded_types() -> None:
    snaps = [dead(1, T0, EX, {"invalid_price": 2, "decode_error": 1}), dead(2, T0 + 1, "kraken", {"x": 5}),
             dead(3, T0 + 2, EX, None, records=4), dead(4, T0 - 1, EX, {"old": 9})]
    got = H.dead_letters(snaps, EX, T0)
    assert got == [(T0, Counter({"invalid_price": 2, "decode_error": 1})), (T0 + 2, Counter({H.UNRECORDED: 4}))]


def test_per_minute_bins_records_by_commit_time() -> None:
    commits = [H.Commit(T0, 10), H.Commit(T0 + 59_999, 5), H.Commit(T0 + 60_000, 1), H.Commit(T0 + 180_000, 99),
               H.Commit(T0 - 1, 50)]
    assert H.per_minute(commits, T0, 60, 3) == [15.0, 1.0, 0.0]
    assert H.per_minute(commits, T0, 120, 1) == [8.0]  # 16 records in two minutes


def test_dlq_rate_series_is_dead_over_all_rows_per_bin_and_none_without_rows() -> None:
    valid = [H.Commit(T0, 90), H.Commit(T0 + 300_000, 50)]
    letters = [(T0 + 10, Counter({"invalid_price": 6, "decode_error": 4})), (T0 + 600_000, Counter({"decode_error": 5}))]
    series = H.dlq_rate_series(valid, letters, T0, 300, 4)
    assert series == {"decode_error": [0.04, 0.0, 1.0, None], "invalid_price": [0.06, 0.0, 0.0, None]}


def test_window_is_aligned_and_leaves_out_the_bin_still_filling() -> None:
    now = (T0 + 3 * 3600_000 + 61_500) / 1000
    start, end = H.window(now, 3, 60)
    assert (start, end) == (T0 + 60_000, T0 + 3 * 3600_000 + 60_000)
    assert len(H.bin_starts(start, end, 60)) == 180


def test_history_reads_each_exchange_its_layers_and_gold_for_all() -> None:
    now = (T0 + 3600_000) / 1000
    bronze = FakeTable(FakeMetadata(chain((1, T0 + 30_000, 100), (2, T0 + 3540_000, 60))))
    silver = FakeTable(FakeMetadata(chain((3, T0 + 3550_000, 45))))
    gold = FakeTable(FakeMetadata(chain((4, T0 + 3555_000, 40))))
    dlq = FakeTable(FakeMetadata([dead(5, T0 + 3550_000, EX, {"invalid_price": 5})]))
    tables = {names.bronze_table(EX): bronze, names.silver_table(EX): silver, names.GOLD_TABLE: gold,
              names.DLQ_TABLE: dlq}
    past = H.history([EX, "kraken"], tables, now, hours=1)  # type: ignore[arg-type]
    assert len(past.records_bins_ms) == 60 and past.records_bins_ms[0] == T0
    layers = past.records[EX]
    assert layers["bronze"][0] == 100 and layers["bronze"][59] == 60 and sum(layers["bronze"]) == 160
    assert layers["silver"][59] == 45 and layers["gold"][59] == 40
    assert past.records["kraken"] == {"gold": layers["gold"]}  # no tables of its own: only the shared Gold
    rates = past.dlq_rate[EX]["invalid_price"]
    assert len(rates) == 12 and rates[-1] == pytest.approx(0.1) and rates[0] is None
    assert "kraken" not in past.dlq_rate
    assert json.loads(json.dumps(past.as_json()))["records_bins"][0] == T0 / 1000


def test_dlq_rates_of_the_alert_sum_what_the_history_bins() -> None:
    silver = FakeTable(FakeMetadata(chain((1, T0, 80), (2, T0 + 60_000, 12))))
    dlq = FakeTable(FakeMetadata([dead(3, T0 + 1, EX, {"a": 3}), dead(4, T0 + 60_001, EX, {"a": 1, "b": 4})]))
    valid, counts = F.dlq_rates(silver, dlq, EX, T0)  # type: ignore[arg-type]
    assert (valid, counts) == (92, Counter({"a": 4, "b": 4}))


def _checkpoint(directory: Path, batch: int, snapshot_id: int, position: int, committed_at: float) -> str:
    (directory / "offsets").mkdir(parents=True, exist_ok=True)
    (directory / "commits").mkdir(parents=True, exist_ok=True)
    (directory / "offsets" / str(batch)).write_text(
        'v1\n{"batchWatermarkMs":0}\n' + json.dumps({"version": 1, "snapshot_id": snapshot_id, "position": position,
                                                     "scan_all_files": False}) + "\n")
    commit = directory / "commits" / str(batch)
    commit.write_text('v1\n{"nextBatchWatermarkMs":0}\n')
    os.utime(commit, (committed_at, committed_at))
    return str(directory)


def test_unread_appends_and_records_after_the_checkpoint() -> None:
    table = FakeTable(FakeMetadata([snap(1, T0, 100), snap(2, T0 + 1000, 40, files=4, parent=1),
                                    snap(3, T0 + 1500, 0, op=Operation.REPLACE, parent=2),
                                    snap(4, T0 + 2000, 7, parent=3)]))
    at_start = F.StreamProgress(None, 0, None)
    assert [s.snapshot_id for s, _ in F.unread_appends(table, at_start)] == [1, 2, 4]  # type: ignore[arg-type]
    inside = F.StreamProgress(2, 1, 0.0)  # read 1 of snapshot 2's 4 files
    unread = F.unread_appends(table, inside)  # type: ignore[arg-type]
    assert [(s.snapshot_id, share) for s, share in unread] == [(2, 0.75), (4, 1.0)]
    assert F.unread_records(unread) == 37
    assert F.oldest_unread_append(table, inside).snapshot_id == 2  # type: ignore[arg-type, union-attr]
    assert F.unread_appends(table, F.StreamProgress(4, 1, 0.0)) == []  # type: ignore[arg-type]
    assert F.unread_appends(table, F.StreamProgress(2, 4, 0.0))[0][0].snapshot_id == 4  # type: ignore[arg-type]


def test_layer_lag_figures_from_a_checkpoint(tmp_path: Path) -> None:
    """Silver's lag: the Bronze appends after its checkpoint, in records and in seconds since the oldest."""
    bronze = FakeTable(FakeMetadata(chain((1, T0, 100), (2, T0 + 10_000, 30), (3, T0 + 20_000, 20))))
    checkpoint = _checkpoint(tmp_path / "silver", 0, 1, 1, committed_at=T0 / 1000 + 5)
    health = F.Health(at=T0 / 1000 + 60)
    waiting = F._stream_figures(health, bronze, checkpoint, "silver", EX)  # type: ignore[arg-type]
    assert waiting == 50.0
    assert health.value(F.LAYER_LAG_RECORDS, layer="silver", exchange=EX) == 50
    assert health.value(F.LAYER_LAG_SECONDS, layer="silver", exchange=EX) == 50.0
    assert health.value(F.STALLED_SECONDS, layer="silver", exchange=EX) == 50.0

    caught_up = _checkpoint(tmp_path / "gold", 0, 3, 1, committed_at=T0 / 1000 + 30)
    health = F.Health(at=T0 / 1000 + 60)
    assert F._stream_figures(health, bronze, caught_up, "gold", EX) is None  # type: ignore[arg-type]
    assert health.value(F.LAYER_LAG_RECORDS, layer="gold", exchange=EX) == 0
    assert health.value(F.LAYER_LAG_SECONDS, layer="gold", exchange=EX) == 0.0

    health = F.Health(at=T0 / 1000 + 60)
    assert F._stream_figures(health, bronze, "s3://bucket/cp", "gold", EX) is None  # type: ignore[arg-type]
    assert {F.LAYER_LAG_RECORDS, F.LAYER_LAG_SECONDS} <= health.unmeasured and not health.figures


def test_every_figure_is_a_declared_monitor_gauge() -> None:
    """Each figure the monitor publishes is in lakehouse.metrics.METRICS (the StatsD contract)."""
    missing = [name for name in F.FIGURE_NAMES if f"monitor.{name}" not in METRICS]
    assert not missing, f"figures not declared in METRICS: {missing}"


def test_golds_merge_overwrites_count_the_rows_they_added() -> None:
    """Gold's MERGE commits as an overwrite: its new rows count, the rows it rewrote do not, and a
    compaction (replace) adds none; the streams' appends stay appends only."""
    snaps = [snap(1, T0, 5), snap(2, T0 + 1, 40, op=Operation.OVERWRITE, parent=1, **{"deleted-records": "30"}),
             snap(3, T0 + 2, 99, op=Operation.REPLACE, parent=2), snap(4, T0 + 3, 8, op=Operation.OVERWRITE, parent=3)]
    table = FakeTable(FakeMetadata(snaps))
    gold = H.main_appends(table, overwrites=True)  # type: ignore[arg-type]
    assert [s.snapshot_id for s in gold] == [1, 2, 4]
    assert H.appended(gold, T0) == [H.Commit(T0, 5), H.Commit(T0 + 1, 10), H.Commit(T0 + 3, 8)]
    assert [s.snapshot_id for s in H.main_appends(table)] == [1]  # type: ignore[arg-type]


def test_summary_properties_are_pyicebergs_own_without_the_slow_path() -> None:
    """The fast read of a summary's properties must stay equal to pyiceberg's property (a pydantic or
    pyiceberg upgrade that moves the private attribute falls back to it, never to other data)."""
    summary = Summary(Operation.OVERWRITE, **{"added-records": "7", "deleted-records": "2", "x": "y"})
    snap = Snapshot(snapshot_id=1, sequence_number=1, timestamp_ms=1, manifest_list="m", summary=summary)
    assert H.summary_properties(snap) == summary.additional_properties == {
        "added-records": "7", "deleted-records": "2", "x": "y"}
    assert H.summary_properties(Snapshot(snapshot_id=2, timestamp_ms=1, manifest_list="m")) == {}
    assert H._added(snap) == 5
