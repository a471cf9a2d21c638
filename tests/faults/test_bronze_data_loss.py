"""Offsets Bronze can never read: a topic recreated on Kafka (real: the in-memory broker restarted,
read with the settings of an external Kafka) and a retention gap (simulated: tansu's memory storage
implements neither retention nor DeleteRecords, so the low watermark is raised in the watermark
answer). Both fail the run with the partition and range, write an audit row and a metric; a run
started with ``accept_data_loss`` (``--accept-data-loss``) accepts that loss, once."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from lakehouse import broker, names
from lakehouse.bronze import kafka
from lakehouse.bronze import run as bronze_run
from lakehouse.bronze.planning import Watermarks
from lakehouse.bronze.errors import BronzeError, CommitError, DataLossError
from lakehouse.bronze.run import BronzeRun, run_bronze
from lakehouse.settings import Settings
from lakehouse.spark import session

pytestmark = [pytest.mark.integration, pytest.mark.fault]

EX = "binance"


@pytest.fixture()
def statsd(isolated: Settings) -> Iterator[socket.socket]:
    """A UDP socket on the stack's StatsD port: the metrics the run sends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", isolated.statsd_port))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    lines = []
    while True:
        try:
            lines.append(sock.recv(65536).decode())
        except (TimeoutError, BlockingIOError):
            return lines


def produce(settings: Settings, per_partition: int, tag: str) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 20})
    for p in (0, 1):
        for i in range(per_partition):
            producer.produce(names.topic(settings, EX), value=f"{tag}-{p}-{i}".encode(), partition=p)
    assert producer.flush(30) == 0


def rows(spark: Any, settings: Settings) -> list[tuple[int, int, str]]:
    table = names.qualified(settings, names.bronze_table(EX))
    return sorted((r[0], r[1], bytes(r[2]).decode())
                  for r in spark.sql(f"SELECT `partition`, `offset`, value FROM {table}").collect())


def audit(spark: Any, settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    table = names.qualified(settings, names.AUDIT_TABLE)
    found = [(r["event"], json.loads(r["detail"]))
             for r in spark.sql(f"SELECT event, detail FROM {table} WHERE layer = 'bronze'").collect()]
    return sorted(found, key=lambda row: (row[0], row[1]["partition"]))


def restart_broker(settings: Settings) -> None:
    """The embedded broker keeps topics in memory: a restart is a real recreated topic."""
    broker.stop(settings)
    broker.start(settings)
    broker.ensure_topics(settings)


def test_recreated_kafka_topic_fails_loudly_until_one_run_accepts_it(isolated: Settings, spark: Any,
                                                                     statsd: socket.socket) -> None:
    s = session(isolated, "t")
    external = isolated.replace(kafka_embedded=False)  # Kafka keeps topics: recreated is a loss
    produce(isolated, 10, "old")
    assert run_bronze(s, external, EX).records == 20
    before = rows(s, isolated)
    received(statsd)

    restart_broker(isolated)
    produce(isolated, 12, "new")  # the new topic is already past the old offsets: only its id tells

    with pytest.raises(DataLossError) as failure:
        run_bronze(s, external, EX)
    message = str(failure.value)
    assert "\n" not in message
    assert "partition 0: the topic was recreated, records of the old topic from offset 10 on" in message
    assert "--accept-data-loss" in message
    assert rows(s, isolated) == before  # nothing committed
    events = audit(s, isolated)
    assert [(e, d["partition"], d["kind"], d["missing_from"], d["missing_to"]) for e, d in events] == [
        ("data_loss_detected", p, "topic_recreated", 10 if p < 2 else 0, None) for p in range(3)]
    metrics = received(statsd)
    assert any(m.startswith(f"lakehouse.bronze.runs.{EX}.failed:1|c") for m in metrics)
    with pytest.raises(DataLossError):  # still failing: a failed run accepts nothing
        run_bronze(s, external, EX)

    result = run_bronze(s, external, EX, accept_data_loss=True)
    assert result.records == 24 and len(result.accepted_losses) == 3
    new = [r for r in rows(s, isolated) if r[2].startswith("new")]
    assert sorted((p, o) for p, o, _ in new) == [(p, o) for p in (0, 1) for o in range(12)]
    assert [e for e, _ in audit(s, isolated)].count("data_loss_accepted") == 3
    # Later runs are clean again without the flag ...
    produce(isolated, 2, "later")
    assert run_bronze(s, external, EX).records == 4
    # ... and the acceptance is spent: the next recreation fails again.
    restart_broker(isolated)
    produce(isolated, 1, "again")
    with pytest.raises(DataLossError, match="topic was recreated"):
        run_bronze(s, external, EX)


def test_retention_gap_fails_loudly_then_accepting_moves_on(isolated: Settings, spark: Any,
                                                            statsd: socket.socket, monkeypatch: Any) -> None:
    s = session(isolated, "t")
    produce(isolated, 5, "a")
    assert run_bronze(s, isolated, EX).records == 10
    produce(isolated, 20, "b")  # offsets 5..24 per partition

    real = kafka.watermarks

    def retention_deleted_up_to_15(*args: Any) -> dict[int, Watermarks]:
        marks = real(*args)
        return {**marks, 0: Watermarks(15, marks[0].end)}

    monkeypatch.setattr(kafka, "watermarks", retention_deleted_up_to_15)
    received(statsd)
    with pytest.raises(DataLossError, match=r"partition 0: offsets \[5, 15\) were deleted by retention"):
        run_bronze(s, isolated, EX)
    assert len(rows(s, isolated)) == 10
    [(event, detail)] = audit(s, isolated)
    assert event == "data_loss_detected" and (detail["kind"], detail["missing_from"], detail["missing_to"]) == \
        ("retention_gap", 5, 15)
    assert any(m.startswith(f"lakehouse.bronze.data_loss.{EX}.0.retention_gap.false:10|c") for m in received(statsd))

    result = run_bronze(s, isolated, EX, accept_data_loss=True)
    # Partition 0 restarts at the low watermark; partition 1 loses nothing.
    assert result.records == 10 + 20
    offsets = {(p, o) for p, o, _ in rows(s, isolated)}
    assert offsets == {(0, o) for o in [*range(5), *range(15, 25)]} | {(1, o) for o in range(25)}
    assert [e for e, _ in audit(s, isolated)] == ["data_loss_accepted", "data_loss_detected"]


def test_missing_topic_is_a_one_line_error(isolated: Settings, spark: Any) -> None:
    s = session(isolated, "t")
    other = isolated.replace(topic_prefix="no.such.prefix")
    with pytest.raises(BronzeError, match="topic no.such.prefix.binance does not exist"):
        bronze_run.run_bronze(s, other, EX)


def test_records_vanishing_between_plan_and_read_fail_the_write(isolated: Settings, spark: Any) -> None:
    """Executors never write less than planned: a topic recreated mid-run fails the run, naming why."""
    s = session(isolated, "t")
    produce(isolated, 10, "a")
    run = BronzeRun(s, isolated, EX)
    assert run.make_plan().records == 20
    restart_broker(isolated)
    with pytest.raises(CommitError, match=r"writing .* failed, nothing committed: .*partition \d ends at 0, "
                                          r"before the planned end 10"):
        run.write()
    run.drop_branch()
    assert rows(s, isolated) == []
