"""A bounded run tells its own refusal of a batch from a real query failure by what it recorded, not by text,
and never ends idle short of its target as a success."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lakehouse.catalog import NewestAppend
from lakehouse.streaming import RunComplete, StreamStalledError, TargetProgress

TARGET = NewestAppend(snapshot_id=1, sequence_number=1, added_files=1)


def progress() -> TargetProgress:
    return TargetProgress(settings=None, table="cat.db.t", target=TARGET)  # type: ignore[arg-type]


def test_a_refused_batch_completes_the_run_whatever_the_error_text() -> None:
    run = progress()
    run.stopping.set()
    handled: list[int] = []
    handle = run.bounded(lambda df, batch_id: handled.append(batch_id), "unused-checkpoint")
    with pytest.raises(RunComplete):
        handle(None, 7)  # type: ignore[arg-type]
    assert handled == [] and run.refused.is_set()
    # The JVM's StreamingQueryException carries the Python error as text; the text does not matter.
    assert run.completed_by(Exception("org.apache.spark.SparkException: Job aborted"))


def test_a_failure_that_only_mentions_run_complete_is_a_failure() -> None:
    run = progress()
    run.finished.set()
    err: Any = Exception("ValueError: bad row in batch RunComplete")
    assert not run.completed_by(err)


def test_a_refusal_before_the_target_is_reached_is_not_completion() -> None:
    run = progress()
    run.refused.set()
    assert not run.completed_by(Exception("RunComplete"))


def _checkpoint(root: Path, committed: dict[int, int]) -> str:
    """A local checkpoint whose commit log holds ``committed`` (batch id -> the position it ended at in
    snapshot 1), each with its offset-log entry as Spark writes it (version, metadata, source offset)."""
    for log in ("offsets", "commits"):
        (root / log).mkdir(parents=True, exist_ok=True)
    for batch_id, position in committed.items():
        offset = {"version": 1, "snapshot_id": TARGET.snapshot_id, "position": position, "scan_all_files": False}
        (root / "offsets" / str(batch_id)).write_text(f'v1\n{{"batchWatermarkMs":0}}\n{json.dumps(offset)}\n')
        (root / "commits" / str(batch_id)).write_text('v1\n{"nextBatchWatermarkMs":0}\n')
    (root / "offsets" / "9").write_text("v1\n{}\n{}\n")  # planned, never committed: not read
    return root.as_uri()


def test_an_idle_stream_whose_checkpoint_reached_the_target_ends_the_run(tmp_path: Path) -> None:
    run = progress()  # this run committed nothing itself: another run of the checkpoint did the work
    run.confirm_idle(_checkpoint(tmp_path, {3: 0, 4: TARGET.added_files}))
    assert run.finished.is_set()


def test_an_idle_stream_short_of_its_target_is_an_error_not_a_success(tmp_path: Path) -> None:
    with pytest.raises(StreamStalledError, match=r"went idle before the run's target.*commits \[3\]"):
        progress().confirm_idle(_checkpoint(tmp_path / "short", {3: 0}))
    with pytest.raises(StreamStalledError, match=r"commits \[\]"):  # no batch ever committed
        progress().confirm_idle(_checkpoint(tmp_path / "empty", {}))


def test_confirming_idle_reads_nothing_once_the_batches_reached_the_target() -> None:
    run = progress()
    run.finished.set()
    run.confirm_idle("file:///nonexistent/checkpoint")  # no file read: would fail
    progress().confirm_idle("s3://bucket/checkpoint")  # remote checkpoints are not listed
