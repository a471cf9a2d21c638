"""The Spark jobs' shared entry point: exit codes and one-line errors, without starting Spark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lakehouse import jobs


class FakeSpark:
    stopped = False

    def stop(self) -> None:
        self.stopped = True


class RunFailed(RuntimeError):
    pass


@pytest.fixture()
def spark(monkeypatch: pytest.MonkeyPatch) -> FakeSpark:
    fake = FakeSpark()
    monkeypatch.setattr("lakehouse.spark.session", lambda settings, name: fake)
    return fake


def test_a_run_gets_the_exchange_and_exits_0_and_stops_spark(spark: FakeSpark) -> None:
    seen: list[Any] = []
    code = jobs.run_job("silver", "d", lambda s, settings, exchange: seen.append(exchange), (RunFailed,),
                        ["--exchange", "kraken"])
    assert code == 0 and seen == ["kraken"] and spark.stopped


def test_a_documented_failure_is_one_line_and_exit_1(spark: FakeSpark, capsys: pytest.CaptureFixture[str]) -> None:
    def fails(*_: Any) -> None:
        raise RunFailed("registry unreachable")

    assert jobs.run_job("silver", "d", fails, (RunFailed,), ["--exchange", "binance"]) == jobs.EXIT_FAILED
    assert capsys.readouterr().err == "silver: error: binance: registry unreachable\n" and spark.stopped


def test_a_bug_propagates_with_its_traceback(spark: FakeSpark) -> None:
    def bug(*_: Any) -> None:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        jobs.run_job("gold", "d", bug, (RunFailed,), [], per_exchange=False)
    assert spark.stopped


def test_bad_settings_and_unknown_exchanges_exit_2_before_spark_starts(
        spark: FakeSpark, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert jobs.run_job("bronze", "d", print, (RunFailed,), ["--exchange", "nyse"]) == jobs.EXIT_USAGE
    assert capsys.readouterr().err.startswith("bronze: error: unknown exchange 'nyse'; configured: ")
    monkeypatch.setenv("LAKEHOUSE_TOPIC_PARTITIONS", "six")
    assert jobs.run_job("bronze", "d", print, (RunFailed,), ["--exchange", "binance"]) == jobs.EXIT_USAGE
    assert "LAKEHOUSE_TOPIC_PARTITIONS='six'" in capsys.readouterr().err and not spark.stopped


def test_one_session_runs_every_exchange_and_a_failure_does_not_stop_the_others(
        spark: FakeSpark, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    seen: list[str] = []

    def run(_spark: Any, _settings: Any, exchange: str) -> dict[str, int]:
        seen.append(exchange)
        if exchange == "binance":
            raise RunFailed("topic missing")
        return {"records": 7}

    report = tmp_path / "report.json"
    code = jobs.run_job("bronze", "d", run, (RunFailed,), ["--report", str(report)],
                        describe=lambda r: ("committed", r["records"], r))
    assert code == jobs.EXIT_FAILED and seen == ["binance", "kraken"] and spark.stopped
    assert capsys.readouterr().err == "bronze: error: binance: topic missing\n"
    written = json.loads(report.read_text())
    assert written["layer"] == "bronze"
    assert written["exchanges"]["binance"]["status"] == "failed"
    assert written["exchanges"]["binance"]["error"] == "topic missing"
    assert written["exchanges"]["kraken"] == {"status": "committed", "records": 7, "error": "",
                                              "details": {"records": 7}, "phases": {}}
    assert written["session_ready_at"] <= written["finished_at"]
    assert set(written["phases"]) == {"handoff", "startup", "planning", "work", "commit", "exit"}


def test_phases_recorded_inside_a_run_land_in_its_exchange(spark: FakeSpark, tmp_path: Path) -> None:
    from lakehouse import runreport

    def run(_spark: Any, _settings: Any, exchange: str) -> None:
        with runreport.phase("work"):
            pass
        runreport.active().add("commit", 1.5)  # type: ignore[union-attr]

    report = tmp_path / "r.json"
    assert jobs.run_job("silver", "d", run, (RunFailed,), ["--exchange", "kraken", "--report", str(report)]) == 0
    written = json.loads(report.read_text())
    assert list(written["exchanges"]) == ["kraken"]
    assert written["exchanges"]["kraken"]["phases"]["commit"] == 1.5
    assert written["phases"]["commit"] == 1.5 and written["phases"]["work"] >= 0
    assert runreport.active() is None


def test_a_lost_race_exits_75_and_any_other_failure_wins(spark: FakeSpark, capsys: pytest.CaptureFixture[str]) -> None:
    from lakehouse.errors import ConcurrentWriterError

    class Lost(RunFailed, ConcurrentWriterError):
        pass

    def loses(s: Any, settings: Any, exchange: str) -> None:
        raise Lost(f"another run committed {exchange} first")

    assert jobs.run_job("silver", "d", loses, (RunFailed,), []) == jobs.EXIT_CONCURRENT == 75
    assert "silver: error: binance: another run committed binance first" in capsys.readouterr().err

    def mixed(s: Any, settings: Any, exchange: str) -> None:
        raise (Lost("lost") if exchange == "binance" else RunFailed("broken"))

    assert jobs.run_job("silver", "d", mixed, (RunFailed,), []) == jobs.EXIT_FAILED


def test_a_layer_flag_reaches_the_run_as_a_keyword_only_when_given(spark: FakeSpark) -> None:
    seen: list[tuple[str, bool]] = []

    def run(s: Any, settings: Any, exchange: str, accept_data_loss: bool = False) -> None:
        seen.append((exchange, accept_data_loss))

    flags = {"accept_data_loss": "help"}
    assert jobs.run_job("bronze", "d", run, (RunFailed,), ["--exchange", "kraken", "--accept-data-loss"],
                        flags=flags) == 0
    assert jobs.run_job("bronze", "d", run, (RunFailed,), ["--exchange", "kraken"], flags=flags) == 0
    assert seen == [("kraken", True), ("kraken", False)]
    with pytest.raises(SystemExit):  # a flag the layer does not have is a usage error
        jobs.run_job("silver", "d", run, (RunFailed,), ["--accept-data-loss"])
