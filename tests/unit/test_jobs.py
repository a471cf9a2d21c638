"""The Spark jobs' shared entry point: exit codes and one-line errors, without starting Spark."""

from __future__ import annotations

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
    assert capsys.readouterr().err == "silver: error: registry unreachable\n" and spark.stopped


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
