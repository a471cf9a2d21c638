"""Maintenance planning rules: cutoffs, what expiry keeps back for streams, closed partitions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from lakehouse import names
from lakehouse.maintenance import (
    Hold,
    PositionUnknown,
    Reader,
    SnapshotInfo,
    closed_partitions,
    offsets_hold,
    orphan_cutoff,
    plan_expiry,
    reader_holds,
    retention_cutoff,
    rewrite_options,
    stream_needs,
    tag_hold,
)
from lakehouse.settings import load_settings
from lakehouse.tables import table_def

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 30, 14, 25, 7, tzinfo=UTC)


def _ms(hours_ago: float) -> int:
    return int((NOW - dt.timedelta(hours=hours_ago)).timestamp() * 1000)


HISTORY = [SnapshotInfo(i, _ms(100 - i)) for i in range(1, 11)]  # snapshot i committed 100-i hours ago


def test_retention_cutoff_and_orphan_cutoff_never_later_than_the_real_clock() -> None:
    assert retention_cutoff(NOW, 24) == NOW - dt.timedelta(hours=24)
    later = NOW + dt.timedelta(days=365)
    assert orphan_cutoff(later, NOW, 72) == NOW - dt.timedelta(hours=72)
    assert orphan_cutoff(NOW - dt.timedelta(hours=1), NOW, 72) == NOW - dt.timedelta(hours=73)


def test_expiry_without_holds_takes_everything_past_retention_except_the_last_ones() -> None:
    plan = plan_expiry(HISTORY, [], retention_cutoff(NOW, 95), retain_last=2)
    assert plan.older_than == plan.cutoff
    assert plan.candidates == (1, 2, 3, 4)  # 99..96 hours old; 5 is exactly 95 h old: kept
    everything = plan_expiry(HISTORY, [], NOW + dt.timedelta(days=1), retain_last=3)
    assert everything.candidates == tuple(range(1, 8))


def test_expiry_keeps_the_oldest_snapshot_a_stream_needs_and_everything_after_it() -> None:
    holds = [Hold(3, "stream silver binance"), Hold(6, "stream gold binance")]
    plan = plan_expiry(HISTORY, holds, NOW + dt.timedelta(days=1), retain_last=1)
    assert plan.older_than == dt.datetime.fromtimestamp(_ms(97) / 1000, tz=UTC)
    assert plan.candidates == (1, 2)
    assert [h.snapshot_id for h, _ in plan.kept_back] == [3, 6]


def test_a_hold_inside_retention_changes_nothing_and_an_unknown_hold_protects_nothing() -> None:
    cutoff = retention_cutoff(NOW, 95)
    plan = plan_expiry(HISTORY, [Hold(8, "recent"), Hold(12345, "gone")], cutoff, retain_last=1)
    assert plan.older_than == cutoff and plan.kept_back == ()
    assert plan.candidates == (1, 2, 3, 4)


def test_ref_heads_are_never_candidates() -> None:
    plan = plan_expiry(HISTORY, [], NOW, retain_last=1, ref_heads=[2])
    assert 2 not in plan.candidates and 1 in plan.candidates


def test_offsets_hold_is_the_newest_snapshot_with_kafka_offsets() -> None:
    newest_first = [SnapshotInfo(9, _ms(1), {"operation": "replace"}),
                    SnapshotInfo(8, _ms(2), {names.BRONZE_OFFSETS_PROPERTY: "{}"}),
                    SnapshotInfo(7, _ms(3), {names.BRONZE_OFFSETS_PROPERTY: "{}"})]
    hold = offsets_hold(newest_first)
    assert hold is not None and hold.snapshot_id == 8
    assert offsets_hold(newest_first[:1]) is None


def test_tag_hold_finds_the_in_flight_batch() -> None:
    history = [SnapshotInfo(1, _ms(5), {names.SILVER_BATCH_PROPERTY: "q:4"}),
               SnapshotInfo(2, _ms(4), {names.SILVER_BATCH_PROPERTY: "q:5"})]
    hold = tag_hold(history, "q:5")
    assert hold is not None and hold.snapshot_id == 2
    assert tag_hold(history, "q:6") is None


def _offset(snapshot_id: int) -> str:
    return "v1\n" + json.dumps({"batchWatermarkMs": 0}) + "\n" + json.dumps(
        {"version": 1, "snapshot_id": snapshot_id, "position": 0, "scan_all_files": False})


def _checkpoint(root: Path, offsets: dict[int, int], commits: list[int], initial: int | None = None) -> str:
    (root / "offsets").mkdir(parents=True)
    (root / "commits").mkdir()
    (root / "metadata").write_text(json.dumps({"id": "query-1"}))
    for batch, snap in offsets.items():
        (root / "offsets" / str(batch)).write_text(_offset(snap))
    for batch in commits:
        (root / "commits" / str(batch)).write_text("v1\n{}")
    if initial is not None:
        (root / "sources" / "0" / "offsets").mkdir(parents=True)
        initial_offset = {"version": 1, "snapshot_id": initial, "position": 0}
        (root / "sources" / "0" / "offsets" / "0").write_text(json.dumps(initial_offset))
    return root.as_uri()


def test_stream_needs_the_last_committed_end(tmp_path: Path) -> None:
    needs = stream_needs(_checkpoint(tmp_path, {0: 10, 1: 11}, [0, 1]))
    assert needs.snapshot_ids == (11,) and needs.in_flight_batch is None and needs.query_id == "query-1"


def test_stream_needs_the_start_of_a_planned_but_uncommitted_batch(tmp_path: Path) -> None:
    needs = stream_needs(_checkpoint(tmp_path / "a", {0: 10, 1: 11, 2: 12}, [0]))
    assert set(needs.snapshot_ids) == {10, 11} and needs.in_flight_batch == 2
    first = stream_needs(_checkpoint(tmp_path / "b", {0: 10}, [], initial=7))
    assert first.snapshot_ids == (7,) and first.in_flight_batch == 0


def test_a_stream_past_its_first_batch_holds_only_its_position(tmp_path: Path) -> None:
    needs = stream_needs(_checkpoint(tmp_path, {0: 10, 1: 11}, [0, 1], initial=7))
    assert needs.initial_snapshot == 7 and needs.snapshot_ids == (11,)
    holds = reader_holds(Reader("gold binance", tmp_path.as_uri()), needs)
    assert [h.snapshot_id for h in holds] == [11] and "gold binance" in holds[0].reason


def test_stream_needs_nothing_before_its_first_batch_and_refuses_unreadable_checkpoints(tmp_path: Path) -> None:
    assert stream_needs((tmp_path / "never-ran").as_uri()).snapshot_ids == ()
    with pytest.raises(PositionUnknown, match="no stream offset"):
        stream_needs(_checkpoint(tmp_path / "c", {0: 10}, []))  # batch 0 planned, initial offset missing
    with pytest.raises(PositionUnknown, match="not on a local file system"):
        stream_needs("s3://bucket/checkpoints/silver/binance")


def test_closed_partitions_per_table_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAKEHOUSE_HOME", str(tmp_path))
    settings = load_settings()
    bronze = closed_partitions(table_def(settings, names.bronze_table("binance")), NOW)
    assert bronze is not None and bronze.grain == "day"
    assert bronze.spark_where == "ingestion_timestamp < TIMESTAMP '2026-11-30 00:00:00+00:00'"
    silver = closed_partitions(table_def(settings, names.silver_table("binance")), NOW)
    assert silver is not None and silver.spark_where == "exchange_date < DATE '2026-11-30'"
    gold = closed_partitions(table_def(settings, names.GOLD_TABLE), NOW)
    assert gold is not None and gold.grain == "hour"
    assert gold.spark_where == ("exchange_date < DATE '2026-11-30' OR "
                                "(exchange_date = DATE '2026-11-30' AND exchange_hour < 14)")
    dlq = closed_partitions(table_def(settings, names.DLQ_TABLE), NOW)
    assert dlq is not None and dlq.spark_where == "dlq_date < DATE '2026-11-30'"


def test_rewrite_options_bound_each_run() -> None:
    options = rewrite_options(1024)
    assert options["partial-progress.enabled"] == "true"
    assert int(options["partial-progress.max-commits"]) > 0
    assert options["target-file-size-bytes"] == "1024"
    assert "target-file-size-bytes" not in rewrite_options(None)


def test_a_table_without_a_time_partition_has_no_closed_partitions() -> None:
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.types import StringType

    from lakehouse.tables import Column, TableDef

    tdef = TableDef("market_data.t", (Column("symbol", StringType()),), (("symbol", IdentityTransform()),), "doc")
    assert closed_partitions(tdef, NOW) is None
