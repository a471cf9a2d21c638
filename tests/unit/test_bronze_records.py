"""Kafka messages -> Arrow rows of the Bronze table, run-branch naming, and the fault-injection kill."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from lakehouse import names, tables
from lakehouse.bronze.iceberg import branch_created_ms, branch_name, stale_branches
from lakehouse.bronze.kafka import messages_to_batch
from lakehouse.bronze.planning import OffsetRange
from lakehouse.settings import SettingsError, load_settings

# The Arrow schema of the Bronze table as pyiceberg writes it (field ids, large types).
SCHEMA = tables.bronze_def("binance").schema().as_arrow()
TASK = OffsetRange("crypto.trades.binance", 2, 40, 43)


@dataclass
class FakeMessage:
    """The confluent-kafka Message accessors Bronze uses."""

    _key: bytes | None
    _value: bytes | None
    _offset: int
    _timestamp: tuple[int, int]
    _headers: list[tuple[str, bytes | None]] | None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return self._timestamp

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers


MESSAGES = [
    FakeMessage(b"BTC-USDT", b"\x00\x00\x00\x00\x01abc", 40, (1, 1_700_000_000_123), [("trace", b"t1"), ("x", None)]),
    FakeMessage(None, None, 41, (2, 1_700_000_000_456), None),
    FakeMessage(b"k", b"", 42, (0, -1), []),
]


def test_batch_has_the_bronze_table_schema() -> None:
    batch = messages_to_batch(MESSAGES, TASK, 1_800_000_000_000_000, SCHEMA)
    assert batch.schema.equals(SCHEMA)
    assert batch.num_rows == 3


def test_batch_keeps_bytes_offsets_and_kafka_metadata() -> None:
    rows = messages_to_batch(MESSAGES, TASK, 1_800_000_000_000_000, SCHEMA).to_pylist()
    assert [r["key"] for r in rows] == [b"BTC-USDT", None, b"k"]
    assert [r["value"] for r in rows] == [b"\x00\x00\x00\x00\x01abc", None, b""]
    assert [r["offset"] for r in rows] == [40, 41, 42]
    assert {(r["topic"], r["partition"]) for r in rows} == {("crypto.trades.binance", 2)}
    assert rows[0]["headers"] == [{"key": "trace", "value": b"t1"}, {"key": "x", "value": None}]
    assert rows[1]["headers"] == [] and rows[2]["headers"] == []
    assert {r["ingestion_timestamp"].timestamp() for r in rows} == {1_800_000_000.0}


def test_timestamp_types_follow_spark_kafka_source() -> None:
    rows = messages_to_batch(MESSAGES, TASK, 0, SCHEMA).to_pylist()
    # librdkafka CreateTime(1) / LogAppendTime(2) / NotAvailable(0) -> Spark 0 / 1 / -1.
    assert [r["timestampType"] for r in rows] == [0, 1, -1]
    assert rows[0]["timestamp"].timestamp() == pytest.approx(1_700_000_000.123)
    assert rows[2]["timestamp"] is None


def test_empty_message_list_gives_an_empty_batch() -> None:
    assert messages_to_batch([], TASK, 0, SCHEMA).num_rows == 0


def test_branch_names_carry_their_creation_time() -> None:
    name = branch_name("0123456789abcdef-ffff", now_ms=1_700_000_000_000)
    assert name.startswith(names.BRONZE_BRANCH_PREFIX)
    assert branch_created_ms(name) == 1_700_000_000_000
    assert branch_created_ms("main") is None and branch_created_ms("audit_branch") is None


def test_only_run_branches_older_than_the_ttl_are_stale() -> None:
    old = branch_name("a" * 12, now_ms=1_000_000)
    young = branch_name("b" * 12, now_ms=1_590_000)
    refs = ["main", "nightly", old, young]
    assert stale_branches(refs, now_ms=1_600_000, ttl_s=60) == [old]
    assert stale_branches(refs, now_ms=1_600_000, ttl_s=1) == sorted([old, young])


def test_crash_point_setting_is_validated() -> None:
    with pytest.raises(SettingsError, match="BRONZE_CRASH_POINT"):
        load_settings({"LAKEHOUSE_BRONZE_CRASH_POINT": "somewhere"})


def test_crash_point_sigkills_the_process_only_at_its_point() -> None:
    code = ("from lakehouse.settings import load_settings\n"
            "from lakehouse.bronze.run import crash_point\n"
            "s = load_settings({'LAKEHOUSE_BRONZE_CRASH_POINT': 'after_write'})\n"
            "crash_point(s, 'before_write')\n"
            "print('passed before_write', flush=True)\n"
            "crash_point(s, 'after_write')\n"
            "print('survived')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9
    assert "passed before_write" in proc.stdout and "survived" not in proc.stdout


def test_executor_failures_are_reduced_to_the_bronze_error_line() -> None:
    from lakehouse.bronze.run import _spark_reason

    text = ("An exception was thrown from the Python worker. Please see the stack trace below.\n"
            "Traceback (most recent call last):\n  File \"kafka.py\", line 230, in read_range\n"
            "lakehouse.bronze.errors.KafkaReadError: crypto.trades.binance partition 1 ends at 0, "
            "before the planned end 10 (topic truncated or recreated?)\n\tat org.apache.spark...\n")
    assert _spark_reason(RuntimeError(text)).startswith("lakehouse.bronze.errors.KafkaReadError: crypto.trades")
    assert _spark_reason(RuntimeError("Cannot fast-forward: main is not an ancestor of b\n\tat x")) == \
        "Cannot fast-forward: main is not an ancestor of b"
