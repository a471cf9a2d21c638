"""A Bronze run without Spark or Kafka: its ingestion time is stamped after the end offsets are
fixed, and its phases land in the run report."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lakehouse import runreport
from lakehouse.bronze import iceberg, kafka
from lakehouse.bronze import run as bronze_run
from lakehouse.bronze.planning import Plan, Watermarks, plan_run
from lakehouse.settings import Settings, load_settings

EX = "kraken"


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home")})


def test_ingestion_time_is_stamped_after_the_end_offsets_are_fixed(settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_at: list[dt.datetime] = []

    def watermarks(bootstrap: str, group_id: str, topic: str, timeout_s: float) -> dict[int, Watermarks]:
        time.sleep(0.002)  # a record produced while the run plans, just before the end is fixed
        fixed_at.append(dt.datetime.now(dt.timezone.utc))
        return {0: Watermarks(0, 10), 1: Watermarks(0, 0)}

    monkeypatch.setattr(iceberg, "refresh", lambda *_: None)
    monkeypatch.setattr(iceberg, "committed_offsets", lambda *_: iceberg.Committed(None, {}, "empty"))
    monkeypatch.setattr(kafka, "watermarks", watermarks)
    monkeypatch.setattr(kafka, "topic_id", lambda *_: "topic-id-1")
    run = bronze_run.BronzeRun(None, settings, EX)  # type: ignore[arg-type]
    assert run.ingestion_time is None  # nothing may be stamped before the ends are fixed
    plan = run.make_plan()
    assert plan.records == 10
    assert run.ingestion_time is not None and run.ingestion_time >= fixed_at[0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class FakeRun:
    """What run_bronze uses of a BronzeRun; each step advances the report's clock by its own amount."""

    clock: FakeClock  # set on a subclass per test
    steps: list[str]

    def __init__(self, spark: Any, settings: Settings, exchange: str, run_id: str,
                 accept_data_loss: bool = False) -> None:
        self.settings, self.exchange, self.run_id = settings, exchange, run_id
        self.incarnation = None
        self.table, self.topic = "t", "crypto.trades.kraken"
        self.marks = {0: Watermarks(0, 5)}
        self.committed = iceberg.Committed(None, {}, "empty")
        self.ingestion_time: dt.datetime | None = None
        self.plan: Plan | None = None
        self.records = self.bytes = self.tasks = 0

    def _step(self, name: str, seconds: float) -> None:
        self.steps.append(name)
        self.clock.now += seconds

    def make_plan(self) -> Plan:
        self._step("make_plan", 2)
        self.ingestion_time = dt.datetime.now(dt.timezone.utc)
        self.plan = plan_run(self.topic, {}, self.marks, max_records=100, records_per_task=10, accept_loss=False)
        return self.plan

    def write(self) -> int:
        self._step("write", 30)
        self.records, self.bytes, self.tasks = 5, 50, 1
        return 1

    def commit(self) -> int:
        self._step("commit", 400)
        return 1

    def drop_branch(self) -> None:
        self._step("drop_branch", 5_000)


def test_phases_of_a_run_land_in_its_exchange(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(runreport, "time", SimpleNamespace(monotonic=clock.monotonic))

    class Run(FakeRun):
        pass

    Run.clock, Run.steps = clock, []
    monkeypatch.setattr(bronze_run, "BronzeRun", Run)
    monkeypatch.setattr(iceberg, "drop_stale_branches", lambda *_: setattr(clock, "now", clock.now + 1))

    def commit_group(settings: Settings, exchange: str, run: Any, plan: Plan) -> dict[int, int]:
        clock.now += 60_000
        return {0: 0}

    monkeypatch.setattr(bronze_run, "_commit_group", commit_group)
    report = runreport.start("bronze")
    try:
        result = bronze_run.run_bronze(None, settings, EX)  # type: ignore[arg-type]
    finally:
        runreport.stop()
    assert Run.steps == ["make_plan", "write", "commit", "drop_branch"]
    assert result.status == "committed" and result.records == 5 and result.available == 5
    assert result.partitions == {0: {"start": 0, "end": 5, "lag": 0}}
    assert result.ingestion_time and dt.datetime.fromisoformat(result.ingestion_time).tzinfo is not None
    assert report.exchanges[EX].phases == {"planning": 1 + 2, "work": 30, "commit": 400 + 5_000 + 60_000}
    assert set(report.exchanges) == {EX}
