"""``lakehouse replay silver`` over a Bronze range that holds two topic incarnations.

After the embedded broker restarts on empty storage its topics start again at offset 0, so Bronze
holds two records at one lineage (topic, partition, offset). A range replay must still put every
Bronze row it considers exactly once in Silver or the dead-letter table, identify rows by record
and not by lineage (no MERGE sees several source rows for one target row), leave rows the Silver
stream has not reached to the stream even when the other incarnation's row at their lineage is
processed, and change nothing when run again.
"""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest
from pyspark.sql import SparkSession

from local_checks import dlq_rows, silver_rows

from lakehouse import avro, names
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings
from lakehouse.silver import rules
from lakehouse.silver.job import run
from lakehouse.silver.replay import replay_silver
from lakehouse.silver.synthetic import bronze_frame, trade
from lakehouse.spark import session

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

EX = "binance"
ODD_RULE = rules.Rule("platform_sequence_even", "odd_sequence",
                      pc.bit_wise_and(rules.col("platform_sequence"), 1) == 0,
                      "platform_sequence must be even", "platform_sequence")
T1 = dt.datetime(2026, 1, 1, 10, tzinfo=dt.timezone.utc)
T2 = T1 + dt.timedelta(hours=1)  # the broker restarted between the two incarnations


def _append(spark: SparkSession, settings: Settings, values: list[bytes], first_offset: int,
            ingested: dt.datetime) -> None:
    bronze_frame(spark, values, names.topic(settings, EX), ingested, first_offset).coalesce(1) \
        .writeTo(names.qualified(settings, names.bronze_table(EX))).append()


def _trade(sid: int, i: int, at: dt.datetime) -> bytes:
    return avro.encode(sid, avro.parsed_trade_schema(), trade(i, int(at.timestamp() * 1_000_000) - 1_000_000))


def test_replay_silver_after_a_topic_reset_moves_each_record_once(isolated: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spark = session(isolated, "silver-replay-reset-test")
    sid = registry_from_settings(isolated).register(names.value_subject(names.topic(isolated, EX)), avro.load_schema())
    # The first topic: offsets 0-3. After the restart: offsets 0-2 again, then 3, which the stream
    # has not read yet although the first topic's row at offset 3 is processed.
    _append(spark, isolated, [_trade(sid, 0, T1), _trade(sid, 1, T1), b"\x05junk", _trade(sid, 3, T1)], 0, T1)
    run(spark, isolated, EX)
    _append(spark, isolated, [_trade(sid, 100, T2), b"\x05other junk", _trade(sid, 102, T2)], 0, T2)
    run(spark, isolated, EX)
    _append(spark, isolated, [_trade(sid, 103, T2)], 3, T2)
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "100"), (1, "1"), (2, "102"), (3, "3")]
    assert dlq_rows(spark, isolated) == [(1, "bad_magic_byte", False), (2, "bad_magic_byte", False)]

    # A stricter rule: the odd trades leave Silver for the DLQ, each by itself, not its lineage.
    monkeypatch.setattr(rules, "RULES", (*rules.RULES, ODD_RULE))
    stricter = replay_silver(spark, isolated, EX, start=T1, end=T2 + dt.timedelta(minutes=1))

    assert stricter.considered == 7 and stricter.valid == 3  # trade 103 is left to the stream
    assert stricter.dead_lettered == {"odd_sequence": 2, "bad_magic_byte": 2}
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "100"), (2, "102")]
    after_stricter = [(1, "bad_magic_byte", False), (1, "odd_sequence", False), (2, "bad_magic_byte", False),
                      (3, "odd_sequence", False)]
    assert dlq_rows(spark, isolated) == after_stricter
    assert replay_silver(spark, isolated, EX, start=T1).considered == 7  # idempotent
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "100"), (2, "102")]
    assert dlq_rows(spark, isolated) == after_stricter

    # The rule is withdrawn: the trades return, and only their dead-letter rows are marked replayed
    # (the junk at trade 1's lineage stays current).
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r is not ODD_RULE))
    withdrawn = replay_silver(spark, isolated, EX, start=T1)

    assert withdrawn.considered == 7 and withdrawn.valid == 5
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "100"), (1, "1"), (2, "102"), (3, "3")]
    assert dlq_rows(spark, isolated) == [(1, "bad_magic_byte", False), (1, "odd_sequence", True),
                                     (2, "bad_magic_byte", False), (3, "odd_sequence", True)]

    # The stream then writes the row it had not reached, once.
    assert run(spark, isolated, EX).read == 1
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "100"), (1, "1"), (2, "102"), (3, "103"), (3, "3")]


def test_replay_silver_when_the_new_topic_repeats_the_same_records(isolated: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The producer sent the same bytes again after the restart: two identical records per lineage.

    Nothing in Silver or the DLQ tells such copies apart, so the replay moves each record, not each
    copy: no MERGE fails on the copies, and a rerun changes nothing.
    """
    spark = session(isolated, "silver-replay-reset-test")
    sid = registry_from_settings(isolated).register(names.value_subject(names.topic(isolated, EX)), avro.load_schema())
    values = [_trade(sid, 0, T1), _trade(sid, 1, T1), b"\x05junk"]
    _append(spark, isolated, values, 0, T1)
    run(spark, isolated, EX)
    _append(spark, isolated, values, 0, T2)
    run(spark, isolated, EX)
    assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "0"), (1, "1"), (1, "1")]
    assert dlq_rows(spark, isolated) == [(2, "bad_magic_byte", False), (2, "bad_magic_byte", False)]

    monkeypatch.setattr(rules, "RULES", (*rules.RULES, ODD_RULE))
    for _ in range(2):  # the second run is the idempotence check
        stricter = replay_silver(spark, isolated, EX, start=T1)
        assert stricter.considered == 6 and stricter.dead_lettered == {"odd_sequence": 2, "bad_magic_byte": 2}
        assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "0")]
        assert dlq_rows(spark, isolated) == [(1, "odd_sequence", False), (2, "bad_magic_byte", False),
                                         (2, "bad_magic_byte", False)]

    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r is not ODD_RULE))
    for _ in range(2):
        assert replay_silver(spark, isolated, EX, start=T1).valid == 4
        assert silver_rows(spark, isolated, EX) == [(0, "0"), (0, "0"), (1, "1")]
        assert dlq_rows(spark, isolated) == [(1, "odd_sequence", True), (2, "bad_magic_byte", False),
                                         (2, "bad_magic_byte", False)]
