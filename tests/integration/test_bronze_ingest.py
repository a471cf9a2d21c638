"""Bronze on the embedded stack: exactly-once ingestion, no-op runs, admission cap, overlapping
runs, and offsets that survive compaction plus snapshot expiry."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from lakehouse import broker, names
from lakehouse.bronze import iceberg, kafka
from lakehouse.bronze import run as bronze_run
from lakehouse.bronze.planning import decode_offsets
from lakehouse.bronze.errors import ConcurrentRunError
from lakehouse.bronze.run import BronzeRun, run_bronze
from lakehouse.catalog import load_catalog
from lakehouse.settings import Settings
from lakehouse.spark import session

pytestmark = pytest.mark.integration

EX = "binance"
KEY = b"BTC-USDT"


def produce(settings: Settings, count: int, partitions: tuple[int, ...] = (0, 1),
            tag: str = "a") -> dict[tuple[int, int], bytes]:
    """Produce in batches (zstd, linger) so the broker's reported end lags the true end; returns
    (partition, offset) -> value of every delivered record."""
    delivered: dict[tuple[int, int], bytes] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered[(msg.partition(), msg.offset())] = msg.value()

    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 50,
                         "compression.type": "zstd"})
    for i in range(count):
        producer.produce(names.topic(settings, EX), value=f"{tag}-{i}".encode(), key=KEY if i % 10 else None,
                         partition=partitions[i % len(partitions)], headers=[("n", str(i).encode())],
                         on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert len(delivered) == count
    return delivered


def table_rows(spark: Any, settings: Settings) -> list[tuple[int, int, bytes]]:
    table = names.qualified(settings, names.bronze_table(EX))
    return [(r["partition"], r["offset"], bytes(r["value"]))
            for r in spark.sql(f"SELECT `partition`, `offset`, value FROM {table}").collect()]


def assert_exactly(spark: Any, settings: Settings, expected: dict[tuple[int, int], bytes]) -> None:
    rows = table_rows(spark, settings)
    keys = [(p, o) for p, o, _ in rows]
    assert len(keys) == len(set(keys)), "a (partition, offset) was ingested twice"
    assert {(p, o): v for p, o, v in rows} == expected


def snapshot_count(settings: Settings) -> int:
    return len(load_catalog(settings).load_table(names.bronze_table(EX)).metadata.snapshots)


def main_offsets(settings: Settings) -> dict[int, int]:
    table = load_catalog(settings).load_table(names.bronze_table(EX))
    raw = table.current_snapshot().summary.get(names.BRONZE_OFFSETS_PROPERTY)
    return decode_offsets(raw, names.topic(settings, EX))


def test_every_record_exactly_once_then_noop(isolated: Settings, spark: Any) -> None:
    s = session(isolated, "t")
    sent = produce(isolated, 300)
    topic = names.topic(isolated, EX)
    reported = broker.topic_offsets(isolated, topic)
    true_end = {p: max(o for q, o in sent if q == p) + 1 for p in (0, 1)}
    # The embedded broker under-reports the end of batched partitions: the case Bronze must handle.
    assert any(reported[p][1] < true_end[p] for p in (0, 1))

    first = run_bronze(s, isolated, EX)
    assert first.status == "committed" and first.records == 300
    assert first.bytes == sum(len(v) for v in sent.values()) + len(KEY) * 270  # 30 records have no key
    assert_exactly(s, isolated, sent)
    # Offsets of EVERY partition (also the empty one) are in the commit, and mirrored to the group.
    assert main_offsets(isolated) == {0: true_end[0], 1: true_end[1], 2: 0}
    group = kafka.group_offsets(isolated.bootstrap_servers, names.bronze_consumer_group(EX), topic, [0, 1, 2], 10)
    assert group == {0: true_end[0], 1: true_end[1], 2: 0}
    assert {p: v["lag"] for p, v in first.partitions.items()} == {0: 0, 1: 0, 2: 0}
    row = s.sql(f"SELECT * FROM {names.qualified(isolated, names.bronze_table(EX))} WHERE `offset` = 0 "
                f"AND `partition` = 0").collect()[0]
    assert row["topic"] == topic and row["timestampType"] == 0 and row["timestamp"] is not None
    assert [(h["key"], bytes(h["value"])) for h in row["headers"]] == [("n", b"0")]
    keys = s.sql(f"SELECT count(*) AS n, count(key) AS keyed FROM {names.qualified(isolated, names.bronze_table(EX))}"
                 ).collect()[0]
    assert (keys["n"], keys["keyed"]) == (300, 270)  # null keys stay null
    assert row["ingestion_timestamp"] is not None

    snapshots = snapshot_count(isolated)
    second = run_bronze(s, isolated, EX)
    assert second.status == "noop" and second.records == 0
    assert snapshot_count(isolated) == snapshots  # an empty run writes no snapshot
    assert_exactly(s, isolated, sent)

    more = produce(isolated, 50, partitions=(1, 2), tag="b")
    third = run_bronze(s, isolated, EX)
    assert third.records == 50
    assert_exactly(s, isolated, {**sent, **more})
    # No run leaves a branch behind.
    assert list(load_catalog(isolated).load_table(names.bronze_table(EX)).refs()) == ["main"]


def test_admission_cap_is_fair_and_runs_in_several_tasks(isolated: Settings, spark: Any) -> None:
    s = session(isolated, "t")
    sent = {**produce(isolated, 200, partitions=(0,)), **produce(isolated, 10, partitions=(1,), tag="b")}
    capped = isolated.replace(bronze_max_records_per_run=60, bronze_records_per_task=20)
    first = run_bronze(s, capped, EX)
    assert first.records == 60
    # Partition 1 gets all of its 10 records; partition 0 the rest of the cap, in pieces of 20,
    # 20 and 10 that no task shares: at least three Spark tasks, one data file each.
    assert {p: v["end"] - v["start"] for p, v in first.partitions.items()} == {0: 50, 1: 10, 2: 0}
    snapshot = load_catalog(isolated).load_table(names.bronze_table(EX)).current_snapshot()
    assert first.tasks >= 3 and snapshot.summary["added-data-files"] == str(first.tasks)
    assert snapshot.summary["added-records"] == "60"
    while run_bronze(s, capped, EX).status == "committed":
        pass
    assert_exactly(s, isolated, sent)


@pytest.mark.fault
def test_overlapping_runs_cannot_both_commit(isolated: Settings, spark: Any) -> None:
    s = session(isolated, "t")
    # On the empty table: the loser finds main created by the winner when it branches.
    sent = produce(isolated, 100)
    a, b = BronzeRun(s, isolated, EX), BronzeRun(s, isolated, EX)
    assert a.make_plan().records == b.make_plan().records == 100
    a.write()
    a.commit()
    a.drop_branch()
    with pytest.raises(ConcurrentRunError, match="committed nothing"):
        b.write()
    b.drop_branch()
    assert_exactly(s, isolated, sent)

    # On a table with data: both plan from the same snapshot, both write, only one commit lands.
    sent.update(produce(isolated, 60, tag="b"))
    a, b = BronzeRun(s, isolated, EX), BronzeRun(s, isolated, EX)
    assert a.make_plan().records == b.make_plan().records == 60
    assert a.committed.snapshot_id == b.committed.snapshot_id is not None  # type: ignore[union-attr]
    a.write()
    b.write()
    b.commit()
    b.drop_branch()
    with pytest.raises(ConcurrentRunError, match="committed nothing"):
        a.commit()
    a.drop_branch()
    assert_exactly(s, isolated, sent)
    assert list(load_catalog(isolated).load_table(names.bronze_table(EX)).refs()) == ["main"]
    assert run_bronze(s, isolated, EX).status == "noop"


@pytest.mark.fault
def test_compaction_between_write_and_commit_replans(isolated: Settings, spark: Any, monkeypatch: Any) -> None:
    """A maintenance commit moves main without new offsets: the run re-plans instead of failing."""
    s = session(isolated, "t")
    sent = produce(isolated, 40)
    run_bronze(s, isolated, EX)
    sent.update(produce(isolated, 40, tag="b"))
    table = names.bronze_table(EX)
    compacted: list[str] = []

    def compact_once(settings: Settings, point: str) -> None:
        if point == "after_write" and not compacted:
            compacted.append(point)
            s.sql(f"CALL {isolated.catalog_name}.system.rewrite_data_files(table => '{table}', "
                  f"options => map('min-input-files', '1', 'rewrite-all', 'true'))").collect()

    monkeypatch.setattr(bronze_run, "crash_point", compact_once)
    result = run_bronze(s, isolated, EX)
    assert compacted and result.attempts == 2 and result.records == 40
    assert_exactly(s, isolated, sent)


@pytest.mark.fault
def test_offsets_survive_compaction_and_snapshot_expiry(isolated: Settings, spark: Any) -> None:
    s = session(isolated, "t")
    sent = {}
    for tag in ("a", "b", "c"):
        sent.update(produce(isolated, 30, tag=tag))
        assert run_bronze(s, isolated, EX).records == 30
    table = names.bronze_table(EX)
    cat = isolated.catalog_name
    s.sql(f"CALL {cat}.system.rewrite_data_files(table => '{table}', options => map('min-input-files', '1'))").collect()
    s.sql(f"CALL {cat}.system.expire_snapshots(table => '{table}', older_than => TIMESTAMP '2999-01-01 00:00:00', "
          f"retain_last => 1)").collect()
    tbl = load_catalog(isolated).load_table(table)
    assert len(tbl.metadata.snapshots) == 1
    assert tbl.current_snapshot().summary.get(names.BRONZE_OFFSETS_PROPERTY) is None  # the property is gone

    committed = iceberg.committed_offsets(s, isolated, EX, names.topic(isolated, EX))
    assert committed.source == "table"
    assert committed.offsets == {p: max(o for q, o in sent if q == p) + 1 for p in (0, 1)}
    assert run_bronze(s, isolated, EX).status == "noop"
    assert_exactly(s, isolated, sent)

    sent.update(produce(isolated, 20, tag="d"))
    after = run_bronze(s, isolated, EX)
    assert after.records == 20 and after.offsets_source == "table"
    assert_exactly(s, isolated, sent)
    assert run_bronze(s, isolated, EX).offsets_source == "snapshot"
