"""Restarting the embedded broker on an existing home: its topics live in memory, so each start
brings new topics whose offsets begin again at 0. Bronze tells incarnations apart by topic id,
reads each new one from offset 0, and records what the old one held that it never read."""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil
import pytest
from local_checks import produce_trades

from lakehouse import broker, names, stack
from lakehouse.bronze.errors import KafkaUnavailableError
from lakehouse.bronze.run import INCARNATION_EVENT, run_bronze
from lakehouse.cli import main as cli_main
from lakehouse.gold import job as gold_job
from lakehouse.settings import Settings
from lakehouse.silver import job as silver_job
from lakehouse.spark import session

pytestmark = [pytest.mark.integration, pytest.mark.fault]

EX = "binance"


def produce(settings: Settings, trade_ids: range) -> None:
    produce_trades(settings, EX, trade_ids)


def layers(spark: Any, settings: Settings) -> int:
    """Bronze, Silver, Gold once each; returns the records Bronze ingested."""
    records = run_bronze(spark, settings, EX).records
    silver_job.run(spark, settings, EX)
    gold_job.run(spark, settings)
    return records


def gold_trade_ids(spark: Any, settings: Settings) -> list[int]:
    gold = names.qualified(settings, names.GOLD_TABLE)
    return sorted(int(r[0]) for r in spark.sql(f"SELECT trade_id FROM {gold}").collect())


@pytest.mark.slow  # ~40 s: 'make test-slow' (CI runs it after 'make test')
def test_every_record_that_reached_bronze_in_any_incarnation_reaches_gold_once(
        isolated: Settings, spark: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    s = session(isolated, "t")
    # Incarnation 1: 30 trades reach Bronze, then 10 more are produced and never read.
    produce(isolated, range(0, 30))
    assert layers(s, isolated) == 30
    produce(isolated, range(30, 40))
    stack.down(isolated)  # a clean stop records the topics' end offsets
    stack.up(isolated)

    # Incarnation 2: offsets start at 0 again, below the 30 Bronze committed.
    produce(isolated, range(100, 125))
    result = run_bronze(s, isolated, EX)
    assert result.records == 25
    assert result.incarnation is not None and result.incarnation["unread_records"] == 10
    silver_job.run(s, isolated, EX)
    gold_job.run(s, isolated)
    produce(isolated, range(125, 130))  # never read: the broker is killed, nothing is recorded
    pid = broker.status(isolated).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    psutil.Process(pid).wait(timeout=10)  # dead, as after a crash; then the operator runs 'lakehouse up'
    stack.up(isolated)

    # Incarnation 3.
    produce(isolated, range(200, 210))
    result = run_bronze(s, isolated, EX)
    assert result.records == 10
    assert result.incarnation is not None and result.incarnation["unread_records"] is None
    silver_job.run(s, isolated, EX)
    gold_job.run(s, isolated)
    assert run_bronze(s, isolated, EX).status == "noop"  # the new topic id is committed: no new incarnation

    expected = [*range(0, 30), *range(100, 125), *range(200, 210)]
    assert gold_trade_ids(s, isolated) == expected  # every Bronze record once, none of the unread ones

    audit = names.qualified(isolated, names.AUDIT_TABLE)
    assert s.sql(f"SELECT count(*) FROM {audit} WHERE event = '{INCARNATION_EVENT}'").first()[0] == 2
    discarded = stack.status(isolated)["discarded"]
    assert [(d["event"], d["records"]) for d in discarded] == [(INCARNATION_EVENT, 10), (INCARNATION_EVENT, None)]
    monkeypatch.setenv("LAKEHOUSE_HOME", str(isolated.home))
    monkeypatch.setenv("LAKEHOUSE_KAFKA_PORT", str(isolated.kafka_port))
    monkeypatch.setenv("LAKEHOUSE_CATALOG_NAME", isolated.catalog_name)
    assert cli_main(["status"]) == 0
    out = capsys.readouterr().out
    assert "discarded" in out and "10 records never reached Bronze" in out
    assert "an unknown number of records never reached Bronze" in out


def test_a_new_empty_incarnation_is_recorded_once(isolated: Settings, spark: Any) -> None:
    """A restart with nothing produced yet still moves Bronze to the new topic: the old offsets
    (beyond the new topic's end) never make the next runs fail or skip."""
    s = session(isolated, "t")
    produce(isolated, range(0, 12))
    assert run_bronze(s, isolated, EX).records == 12
    stack.down(isolated)
    stack.up(isolated)
    first = run_bronze(s, isolated, EX)
    assert first.status == "committed" and first.records == 0 and first.incarnation is not None
    assert first.incarnation["unread_records"] == 0
    produce(isolated, range(50, 55))
    assert run_bronze(s, isolated, EX).records == 5
    audit = names.qualified(isolated, names.AUDIT_TABLE)
    assert s.sql(f"SELECT count(*) FROM {audit} WHERE event = '{INCARNATION_EVENT}'").first()[0] == 1


def test_a_stopped_broker_fails_the_run_in_one_line_and_commits_nothing(isolated: Settings, spark: Any) -> None:
    s = session(isolated, "t")
    produce(isolated, range(0, 6))
    assert run_bronze(s, isolated, EX).records == 6
    broker.stop(isolated)
    quick = isolated.replace(bronze_kafka_timeout_s=3.0)
    with pytest.raises(KafkaUnavailableError) as failure:
        run_bronze(s, quick, EX)
    assert "\n" not in str(failure.value) and names.topic(isolated, EX) in str(failure.value)
    bronze = names.qualified(isolated, names.bronze_table(EX))
    assert s.sql(f"SELECT count(*) FROM {bronze}").first()[0] == 6
    stack.up(isolated)  # back, as a new incarnation: the next run goes on from offset 0 of the new topic
    produce(isolated, range(6, 9))
    assert run_bronze(s, isolated, EX).records == 3


def test_a_broker_without_topic_ids_is_told_apart_by_the_start_lakehouse_up_records(
        isolated: Settings, spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded broker that reports no topic ids: each start's recorded id stands in for them."""
    monkeypatch.setattr(broker, "topic_ids", lambda bootstrap, topics, timeout_s=10.0: dict.fromkeys(topics))
    s = session(isolated, "t")
    produce(isolated, range(0, 9))
    assert run_bronze(s, isolated, EX).records == 9
    first = broker.current_topic_ids(isolated, [names.topic(isolated, EX)])
    stack.down(isolated)
    stack.up(isolated)
    second = broker.current_topic_ids(isolated, [names.topic(isolated, EX)])
    assert None not in first.values() and first != second
    produce(isolated, range(20, 24))  # fewer than before: offsets alone would see a reset, not a new topic
    result = run_bronze(s, isolated, EX)
    assert result.records == 4 and result.incarnation is not None
    assert result.incarnation["unread_records"] == 0
