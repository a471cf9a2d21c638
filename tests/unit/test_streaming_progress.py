"""A bounded run tells its own refusal of a batch from a real query failure by what it recorded, not by text."""

from __future__ import annotations

from typing import Any

import pytest

from lakehouse.catalog import NewestAppend
from lakehouse.streaming import RunComplete, TargetProgress

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
