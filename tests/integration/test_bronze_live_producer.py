"""Bronze while a producer writes at full speed: runs finish without waiting for an end that keeps
moving, each run starts where the previous one stopped, and once the producer stops Bronze holds
every record exactly once, none stamped before it was produced."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from lakehouse import names
from lakehouse.bronze.run import RunResult, run_bronze
from lakehouse.catalog import load_catalog
from lakehouse.settings import Settings
from lakehouse.spark import session

pytestmark = pytest.mark.integration

EX = "kraken"


class FullSpeedProducer(threading.Thread):
    """Writes to every partition of the exchange's topic, round robin, without pacing, until stopped;
    counts the delivered records and the highest delivered offset per partition."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="full-speed-producer", daemon=True)
        self.topic = names.topic(settings, EX)
        self.partitions = settings.topic_partitions
        self.bootstrap = settings.bootstrap_servers
        self.delivered = {p: 0 for p in range(self.partitions)}
        self.last_offset = {p: -1 for p in range(self.partitions)}
        self.errors: list[str] = []
        self.produced = 0
        self.unflushed = -1
        self._stop_writing = threading.Event()

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())
            return
        p = msg.partition()
        self.delivered[p] += 1
        self.last_offset[p] = max(self.last_offset[p], msg.offset())

    def run(self) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap})  # gone with this thread: no reconnects later
        i = 0
        while not self._stop_writing.is_set():
            try:
                producer.produce(self.topic, value=b"%d" % i, partition=i % self.partitions,
                                 on_delivery=self._on_delivery)
            except BufferError:  # the local queue is full: serve delivery reports and go on
                producer.poll(0.01)
                continue
            i += 1
            producer.poll(0)
        self.unflushed = producer.flush(60)
        self.produced = i

    def stop(self) -> None:
        self._stop_writing.set()
        self.join(90)
        assert not self.is_alive(), "the producer did not finish flushing"


def bronze_stats(spark: Any, settings: Settings) -> dict[int, tuple[int, int, int, int]]:
    """Per partition: rows, distinct offsets, min offset, max offset."""
    table = names.qualified(settings, names.bronze_table(EX))
    rows = spark.sql(f"SELECT `partition` AS p, count(*) AS n, count(DISTINCT `offset`) AS d, min(`offset`) AS lo, "
                     f"max(`offset`) AS hi FROM {table} GROUP BY `partition`").collect()
    return {r["p"]: (r["n"], r["d"], r["lo"], r["hi"]) for r in rows}


def test_runs_finish_while_a_producer_writes_at_full_speed_and_miss_nothing(isolated: Settings, spark: Any) -> None:
    s = session(isolated, "t")
    # A planning that waits for an end of partition fails after this long instead of finishing.
    settings = isolated.replace(bronze_kafka_timeout_s=20.0)
    producer = FullSpeedProducer(settings)
    producer.start()
    try:
        for _ in range(600):  # records in every partition before the first run
            if sum(producer.delivered.values()) >= 10_000:
                break
            assert producer.is_alive(), "the producer stopped"
            producer.join(0.05)
        else:
            pytest.fail(f"the producer delivered only {producer.delivered} in 30 s")
        first = run_bronze(s, settings, EX)
        # The producer kept writing past the ends this run fixed: the ends it would have waited for moved.
        assert producer.is_alive()
        assert all(producer.last_offset[p] + 1 > first.partitions[p]["end"] for p in first.partitions)
        assert first.status == "committed" and first.records > 0

        second = run_bronze(s, settings, EX)
        assert producer.is_alive() and second.status == "committed"
        assert {p: v["start"] for p, v in second.partitions.items()} == \
               {p: v["end"] for p, v in first.partitions.items()}
        assert all(v["end"] > v["start"] for v in second.partitions.values())
    finally:
        producer.stop()
    assert producer.errors == [] and producer.unflushed == 0
    produced = producer.delivered
    assert sum(produced.values()) == producer.produced
    # A fresh broker: every partition's offsets run from 0 without a gap.
    assert all(producer.last_offset[p] + 1 == n for p, n in produced.items())

    runs: list[RunResult] = [first, second]
    while runs[-1].status == "committed":
        assert len(runs) < 20, f"Bronze never caught up: {[r.records for r in runs]}"
        runs.append(run_bronze(s, settings, EX))
    assert runs[-1].records == 0
    assert sum(r.records for r in runs) == sum(produced.values())
    assert {p: v["end"] for p, v in runs[-1].partitions.items()} == produced

    stats = bronze_stats(s, settings)
    assert stats == {p: (n, n, 0, n - 1) for p, n in produced.items()}  # contiguous, no duplicate
    table = names.qualified(settings, names.bronze_table(EX))
    check = s.sql(f"SELECT count(*) AS n, count(DISTINCT value) AS distinct_values, "
                  f"count_if(`timestamp` > ingestion_timestamp) AS stamped_early FROM {table}").collect()[0]
    assert (check["n"], check["distinct_values"]) == (sum(produced.values()),) * 2
    # Each run stamps its ingestion time after fixing its ends: no record was produced after it.
    assert check["stamped_early"] == 0
    assert list(load_catalog(settings).load_table(names.bronze_table(EX)).refs()) == ["main"]
