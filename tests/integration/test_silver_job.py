"""The Silver job on the embedded stack: every Bronze row lands once, retries never duplicate,
a registry outage fails the run, and the job runs through the same spark-submit Airflow uses."""

from __future__ import annotations

import copy
import datetime as dt
import os
import random
import subprocess
import sys
from decimal import Decimal
from typing import Any

import pytest
from pyspark.sql import SparkSession

from support import free_port
from local_checks import encode_with
from lakehouse import avro, names, streaming
from lakehouse.registry import RegistryUnavailableError, registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver.job import SilverRunError, run
from lakehouse.silver.synthetic import bronze_frame, trade
from lakehouse.spark import session

pytestmark = pytest.mark.integration

EX = "binance"
LINEAGE = ("bronze_topic", "bronze_partition", "bronze_offset")
NEWER = copy.deepcopy(avro.load_schema())
NEWER["fields"].append({"name": "venue", "type": ["null", "string"], "default": None})


def _register(settings: Settings, schema: dict[str, Any] | None = None) -> int:
    return registry_from_settings(settings).register(names.value_subject(names.topic(settings, EX)),
                                                     schema or avro.load_schema())


def mixed_values(sid: int, newer_sid: int, now: dt.datetime, first: int = 0) -> list[tuple[bytes | None, str | None]]:
    """(Kafka value, expected error_type or None for a valid trade): trades, rule breakers, garbage."""
    at = int(now.timestamp() * 1_000_000) - 30_000_000
    parsed = avro.parsed_trade_schema()
    rnd = random.Random(first)

    def enc(i: int, **kw: Any) -> bytes:
        return avro.encode(sid, parsed, trade(first + i, at, **kw))

    good = enc(99)
    return [
        *[(enc(i), None) for i in range(6)],
        (encode_with(newer_sid, NEWER, {**trade(first + 6, at), "venue": "spot"}), None),  # newer schema
        (enc(7, price=Decimal(0)), "invalid_price"),
        (enc(8, quantity=Decimal("-1")), "invalid_quantity"),
        (enc(9, symbol=""), "missing_symbol"),
        (enc(10, timestamp=at + 3_600_000_000), "invalid_timestamp"),                  # an hour after ingestion
        (enc(11, timestamp=at - 400 * 86_400_000_000), "invalid_timestamp"),           # 400 days old
        (enc(12, message_id=""), "missing_message_id"),
        (enc(13, asset_class="equity"), "invalid_asset_class"),
        (b"\x9f" + bytes(rnd.getrandbits(8) for _ in range(40)), "bad_magic_byte"),     # random bytes
        (b"\x01" + good[1:], "bad_magic_byte"),                                        # wrong magic byte
        (avro.HEADER.pack(0, 4242) + good[5:], "unknown_schema_id"),
        (good[:len(good) // 2], "truncated"),                                          # truncated Avro
        (good + b"\x00\x00\x00", "corrupt_body"),
        (b"", "truncated"),
        (None, "truncated"),                                                           # tombstone
    ]


def append_bronze(spark: SparkSession, settings: Settings, values: list[bytes | None], first_offset: int,
                  ingested: dt.datetime) -> None:
    bronze_frame(spark, values, names.topic(settings, EX), ingested, first_offset).coalesce(1) \
        .writeTo(names.qualified(settings, names.bronze_table(EX))).append()


Landed = dict[int, list[dict[str, Any]]]


def landed(spark: SparkSession, settings: Settings) -> tuple[Landed, Landed]:
    """Silver rows and dead-letter rows by Bronze offset."""
    silver: dict[int, list[dict[str, Any]]] = {}
    for r in spark.table(names.qualified(settings, names.silver_table(EX))).collect():
        silver.setdefault(r["bronze_offset"], []).append(r.asDict())
    dlq: dict[int, list[dict[str, Any]]] = {}
    for r in spark.table(names.qualified(settings, names.DLQ_TABLE)).collect():
        dlq.setdefault(r["bronze_offset"], []).append(r.asDict())
    return silver, dlq


def test_every_bronze_row_ends_in_exactly_one_of_silver_or_the_dlq(isolated: Settings) -> None:
    settings = isolated.replace(silver_max_files_per_batch=1)
    spark = session(settings, "silver-test")
    sid, newer_sid = _register(settings), _register(settings, NEWER)
    now = dt.datetime.now(dt.timezone.utc)
    expected: dict[int, str | None] = {}
    tombstones = set()
    for commit in range(3):  # three Bronze commits of one file each: three bounded micro-batches
        pairs = mixed_values(sid, newer_sid, now, first=commit * 100)
        append_bronze(spark, settings, [v for v, _ in pairs], commit * 100, now)
        expected.update({commit * 100 + i: e for i, (_, e) in enumerate(pairs)})
        tombstones |= {commit * 100 + i for i, (v, _) in enumerate(pairs) if v is None}

    summary = run(spark, settings, EX)

    assert len(summary.batches) == 3
    assert summary.read == len(expected) and summary.valid == sum(e is None for e in expected.values())
    silver, dlq = landed(spark, settings)
    assert set(silver).isdisjoint(dlq) and set(silver) | set(dlq) == set(expected)
    assert all(len(rows) == 1 for rows in [*silver.values(), *dlq.values()])
    assert {o for o, e in expected.items() if e is None} == set(silver)
    assert {o: rows[0]["error_type"] for o, rows in dlq.items()} == {o: e for o, e in expected.items() if e}
    for offset, (row,) in silver.items():
        assert row["bronze_topic"] == names.topic(settings, EX) and row["bronze_partition"] == 0
        assert row["trade_id"] == str(offset)
        assert row["schema_id"] == (newer_sid if offset % 100 == 6 else sid)
    assert summary.dead_lettered["invalid_timestamp"] == 6 and summary.dead_lettered["bad_magic_byte"] == 6
    for (row,) in dlq.values():
        assert row["error_reason"] and row["bronze_source"] == names.bronze_table(EX)
        assert (row["raw_bytes"] is None) == (row["bronze_offset"] in tombstones)

    again = run(spark, settings, EX)  # nothing new: no batch, no duplicate
    assert again.read == 0 and landed(spark, settings) == (silver, dlq)

    pairs = mixed_values(sid, newer_sid, now, first=300)
    append_bronze(spark, settings, [v for v, _ in pairs], 300, now)
    third = run(spark, settings, EX)
    assert third.read == len(pairs)
    silver, dlq = landed(spark, settings)
    assert len(silver) + len(dlq) == len(expected) + len(pairs)


def _kill_and_retry(isolated: Settings, fault: str) -> None:
    spark = session(isolated, "silver-test")
    sid, newer_sid = _register(isolated), _register(isolated, NEWER)
    now = dt.datetime.now(dt.timezone.utc)
    pairs = mixed_values(sid, newer_sid, now)
    append_bronze(spark, isolated, [v for v, _ in pairs], 0, now)
    valid = sum(e is None for _, e in pairs)

    with pytest.raises(SilverRunError, match="InjectedFault"):
        run(spark, isolated.replace(silver_fault_injection=fault), EX)
    silver, dlq = landed(spark, isolated)
    assert len(silver) == valid  # Silver committed before the fault
    assert len(dlq) == (len(pairs) - valid if fault == "after_both" else 0)

    retry = run(spark, isolated, EX)  # the checkpoint never committed the batch: it runs again

    (batch,) = retry.batches
    assert batch.read == len(pairs)
    assert not batch.wrote_silver and batch.wrote_dlq == (fault == "after_silver")
    silver, dlq = landed(spark, isolated)
    assert len(silver) == valid and len(dlq) == len(pairs) - valid
    assert all(len(rows) == 1 for rows in [*silver.values(), *dlq.values()])


# (Separate tests, not parametrized: the isolated fixture names its catalog after the first 40
# characters of the test name, which parameter ids would not change.)
@pytest.mark.fault
def test_killed_after_the_silver_write_before_the_dlq_write_retries_without_duplicates(isolated: Settings) -> None:
    _kill_and_retry(isolated, "after_silver")


@pytest.mark.fault
def test_killed_after_both_writes_before_the_checkpoint_retries_without_duplicates(isolated: Settings) -> None:
    _kill_and_retry(isolated, "after_both")


@pytest.mark.fault
def test_an_unreachable_schema_registry_fails_the_run_and_dead_letters_nothing(isolated: Settings) -> None:
    spark = session(isolated, "silver-test")
    sid, newer_sid = _register(isolated), _register(isolated, NEWER)
    now = dt.datetime.now(dt.timezone.utc)
    pairs = mixed_values(sid, newer_sid, now)
    append_bronze(spark, isolated, [v for v, _ in pairs], 0, now)
    down = isolated.replace(schema_registry_url=f"http://127.0.0.1:{free_port()}",
                               schema_registry_timeout_s=2.0)

    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        run(spark, down, EX)
    assert landed(spark, isolated) == ({}, {})

    recovered = run(spark, isolated, EX)  # the registry is back: the same batch is processed
    assert recovered.read == len(pairs)
    silver, dlq = landed(spark, isolated)
    assert len(silver) + len(dlq) == len(pairs)


def test_lakehouse_run_silver_is_the_spark_submit_job(isolated: Settings) -> None:
    spark = session(isolated, "silver-test")
    sid, newer_sid = _register(isolated), _register(isolated, NEWER)
    now = dt.datetime.now(dt.timezone.utc)
    pairs = mixed_values(sid, newer_sid, now)
    append_bronze(spark, isolated, [v for v, _ in pairs], 0, now)
    env = {**os.environ, **isolated.env(), "LAKEHOUSE_SPARK_DRIVER_MEMORY": "1g"}

    done = subprocess.run([sys.executable, "-m", "lakehouse", "run", "silver", "--exchange", EX], env=env,
                          capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr[-3000:]
    assert '"msg": "silver run finished"' in done.stdout + done.stderr
    silver, dlq = landed(spark, isolated)
    assert len(silver) == sum(e is None for _, e in pairs) and len(silver) + len(dlq) == len(pairs)


def test_a_run_ends_after_its_target_even_while_bronze_keeps_growing(isolated: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lakehouse.catalog import load_catalog
    from lakehouse.silver import stream
    from lakehouse.silver.synthetic import bronze_arrow

    settings = isolated.replace(silver_max_rows_per_batch=1)  # the rows cap: one file per batch
    spark = session(settings, "silver-test")
    sid = _register(settings)
    now = dt.datetime.now(dt.timezone.utc)
    at_us = int(now.timestamp() * 1_000_000) - 1_000_000

    def trades(first: int) -> list[bytes]:
        return [avro.encode(sid, avro.parsed_trade_schema(), trade(first + i, at_us)) for i in range(5)]

    bronze = load_catalog(settings).load_table(names.bronze_table(EX))
    for first in (0, 100):  # the target: two commits, one bounded batch each
        bronze.append(bronze_arrow(trades(first), names.topic(settings, EX), now, first))
    process_batch = stream.process_batch
    arrivals = iter(range(1000, 10_000, 100))

    def batch_then_new_bronze_commit(*args: Any, **kwargs: Any) -> Any:
        stats = process_batch(*args, **kwargs)
        first = next(arrivals)  # Bronze commits again while every batch runs
        load_catalog(settings).load_table(names.bronze_table(EX)).append(
            bronze_arrow(trades(first), names.topic(settings, EX), now, first))
        return stats

    monkeypatch.setattr(stream, "process_batch", batch_then_new_bronze_commit)
    summary = run(spark, settings, EX)

    assert len(summary.batches) == 2 + streaming.EXTRA_BATCHES  # the target, one extra, then it refuses and ends
    monkeypatch.undo()
    rest = run(spark, settings, EX)  # the next run starts with the refused batch
    bronze_rows = spark.table(names.qualified(settings, names.bronze_table(EX))).count()
    assert summary.read + rest.read == bronze_rows
    silver, dlq = landed(spark, settings)
    assert len(silver) == bronze_rows and not dlq
    assert all(len(rows) == 1 for rows in silver.values())


def test_a_row_that_passes_its_dead_letter_recheck_is_still_dead_lettered(isolated: Settings) -> None:
    """Pass 1 failed it (so it is not in Silver); if pass 2 finds it valid it must not vanish."""
    from lakehouse.silver import batch, job
    from lakehouse.silver.transform import from_bronze

    spark = session(isolated, "silver-test")
    sid = _register(isolated)
    now = dt.datetime.now(dt.timezone.utc)
    good = avro.encode(sid, avro.parsed_trade_schema(), trade(1, int(now.timestamp() * 1_000_000) - 1_000_000))
    source = from_bronze(bronze_frame(spark, [good, b"\x07junk"], names.topic(isolated, EX), now))

    dead = batch._write_dlq(source, isolated, EX, "query:0", now)

    assert dead == {job.RECHECK_PASSED: 1, "bad_magic_byte": 1}
    _, dlq = landed(spark, isolated)
    assert dlq[0][0]["error_type"] == job.RECHECK_PASSED and dlq[0][0]["raw_bytes"] == good
    assert "lakehouse dlq replay" in dlq[0][0]["error_reason"]


def test_a_new_checkpoint_gets_iceberg_s_initial_offset_whole_before_the_query_starts(isolated: Settings,
                                                                                    tmp_path: Any) -> None:
    """Iceberg writes a new stream's initial offset in place, so a second run starting the same new
    checkpoint can read it half-written; the run writes it first, whole. It must be the offset
    Iceberg itself would write (a version that changes it fails here), the stream must start from
    it, and a file another run wrote first must be kept."""
    import json

    from lakehouse.catalog import load_catalog
    from lakehouse.orchestration.pending import initial_offset_file, local_dir

    spark = session(isolated, "silver-test")
    sid = _register(isolated)
    now = dt.datetime.now(dt.timezone.utc)
    at_us = int(now.timestamp() * 1_000_000) - 1_000_000
    for first in (0, 100):
        append_bronze(spark, isolated, [avro.encode(sid, avro.parsed_trade_schema(), trade(first + i, at_us))
                                        for i in range(3)], first, now)
    bronze = load_catalog(isolated).load_table(names.bronze_table(EX))

    own = tmp_path / "iceberg-writes-it"
    query = (spark.readStream.table(names.qualified(isolated, names.bronze_table(EX))).writeStream
             .option("checkpointLocation", str(own)).trigger(availableNow=True)
             .foreachBatch(lambda df, batch_id: None).start())
    query.awaitTermination()
    assert streaming.initial_offset(bronze) == json.loads(initial_offset_file(own).read_text())

    checkpoint = names.checkpoint(isolated, "silver", EX)
    path = initial_offset_file(local_dir(checkpoint))  # type: ignore[arg-type]
    streaming.ensure_initial_offset(isolated, names.bronze_table(EX), checkpoint)
    assert json.loads(path.read_text()) == streaming.initial_offset(bronze)

    second = bronze.current_snapshot()
    assert second is not None
    path.write_text(json.dumps({**json.loads(path.read_text()), "snapshot_id": second.snapshot_id}))
    streaming.ensure_initial_offset(isolated, names.bronze_table(EX), checkpoint)  # another run's file stays
    assert json.loads(path.read_text())["snapshot_id"] == second.snapshot_id
    assert [p.name for p in path.parent.iterdir()] == ["0"]  # no temporary file left behind

    summary = run(spark, isolated, EX)
    silver, _ = landed(spark, isolated)
    assert summary.read == 3 and set(silver) == {100, 101, 102}  # the stream started where the file says
