"""DLQ retention on the embedded stack: archive moves exactly the old rows, a killed archive run
neither loses nor doubles a row, a purge leaves no file holding a purged row, reruns change nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from lakehouse import names, tables
from lakehouse.catalog import load_catalog
from lakehouse.settings import Settings
from lakehouse.silver import retention
from lakehouse.spark import session

pytestmark = [pytest.mark.integration]

UTC = dt.timezone.utc
# One "now" for the whole module, passed to every run: a run after midnight must not disagree with
# the rows dated before it.
NOW = dt.datetime.now(UTC)
TODAY = NOW.date()


class Killed(Exception):
    """The run dies here, as a SIGKILL would stop it."""


def _insert(spark: SparkSession, settings: Settings, rows: dict[str, dt.date]) -> None:
    """One dead-letter row per marker, dated ``dlq_date`` (the marker is its reason and its bytes)."""
    data = [(marker.encode(), "bad_magic_byte", marker, names.bronze_table("binance"), "trades.binance", 0, i,
             None, None, dt.datetime.combine(day, dt.time(12), UTC), day, False, None)
            for i, (marker, day) in enumerate(sorted(rows.items()))]
    spark.createDataFrame(data, tables.spark_schema(tables.DLQ_DEF)) \
        .writeTo(names.qualified(settings, names.DLQ_TABLE)).append()


def _markers(spark: SparkSession, settings: Settings, table: str) -> list[str]:
    return sorted(r["error_reason"] for r in spark.table(names.qualified(settings, table)).collect())


def _snapshots(settings: Settings) -> dict[str, int | None]:
    catalog = load_catalog(settings)
    return {t: catalog.load_table(t).metadata.current_snapshot_id
            for t in (names.DLQ_TABLE, names.DLQ_ARCHIVE_TABLE, names.AUDIT_TABLE)}


def _audits(spark: SparkSession, settings: Settings) -> list[dict[str, Any]]:
    rows = spark.table(names.qualified(settings, names.AUDIT_TABLE)) \
        .where(f"event = '{retention.AUDIT_EVENT}'").orderBy("event_time").collect()
    return [json.loads(r["detail"]) for r in rows]


def _markers_on_disk(settings: Settings) -> set[str]:
    """Every error_reason in any Parquet file of the warehouse, referenced by a snapshot or not."""
    found: set[str] = set()
    for path in Path(urlparse(settings.warehouse_uri).path).rglob("*.parquet"):
        if "error_reason" in pq.read_schema(path).names:
            found |= set(pq.read_table(path, columns=["error_reason"]).column("error_reason").to_pylist())
    return found


def test_archive_moves_exactly_the_rows_past_the_cutoff_once(isolated: Settings) -> None:
    spark = session(isolated, "dlq-retention-test")
    _insert(spark, isolated, {"old-45a": TODAY - dt.timedelta(days=45), "old-45b": TODAY - dt.timedelta(days=45),
                              "old-31": TODAY - dt.timedelta(days=31), "edge-30": TODAY - dt.timedelta(days=30),
                              "new-0": TODAY})
    before = _snapshots(isolated)

    dry = retention.run(spark, isolated, steps=("archive",), as_of=NOW, dry_run=True)

    assert (dry.archived, dry.inserted) == (3, 3)
    assert dry.archived_by_date == {(TODAY - dt.timedelta(days=45)).isoformat(): 2,
                                    (TODAY - dt.timedelta(days=31)).isoformat(): 1}
    assert _snapshots(isolated) == before  # a dry run commits nothing, audit row included

    done = retention.run(spark, isolated, steps=("archive",), as_of=NOW)

    assert (done.archived, done.inserted) == (3, 3)
    assert _markers(spark, isolated, names.DLQ_TABLE) == ["edge-30", "new-0"]
    assert _markers(spark, isolated, names.DLQ_ARCHIVE_TABLE) == ["old-31", "old-45a", "old-45b"]
    archived = spark.table(names.qualified(isolated, names.DLQ_ARCHIVE_TABLE)).collect()
    assert all(r["archived_at"] is not None and r["raw_bytes"] == r["error_reason"].encode() for r in archived)
    # The DLQ delete dropped whole dlq_date partitions: no data file was rewritten.
    summary = load_catalog(isolated).load_table(names.DLQ_TABLE).current_snapshot().summary
    assert summary.operation.value == "delete" and int(summary["deleted-records"]) == 3
    assert int(summary.get("added-data-files") or 0) == 0
    settled = _snapshots(isolated)

    again = retention.run(spark, isolated, steps=("archive",), as_of=NOW)

    assert (again.archived, again.inserted) == (0, 0)
    now = _snapshots(isolated)
    assert {t: now[t] for t in (names.DLQ_TABLE, names.DLQ_ARCHIVE_TABLE)} == \
        {t: settled[t] for t in (names.DLQ_TABLE, names.DLQ_ARCHIVE_TABLE)}
    audits = _audits(spark, isolated)
    assert [(a["archived"], a["inserted"], a["dry_run"]) for a in audits] == [(3, 3, False), (0, 0, False)]


@pytest.mark.fault
def test_an_archive_run_killed_between_insert_and_delete_neither_loses_nor_doubles_a_row(
        isolated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    spark = session(isolated, "dlq-retention-test")
    _insert(spark, isolated, {"old-a": TODAY - dt.timedelta(days=40), "old-b": TODAY - dt.timedelta(days=60),
                              "new": TODAY})

    def killed(*args: Any, **kwargs: Any) -> None:
        raise Killed("killed after the archive insert")

    monkeypatch.setattr(retention, "_delete_archived", killed)
    with pytest.raises(Killed):
        retention.run(spark, isolated, as_of=NOW)
    assert _markers(spark, isolated, names.DLQ_ARCHIVE_TABLE) == ["old-a", "old-b"]
    assert _markers(spark, isolated, names.DLQ_TABLE) == ["new", "old-a", "old-b"]  # in both for now
    monkeypatch.undo()

    rerun = retention.run(spark, isolated, as_of=NOW)

    assert (rerun.archived, rerun.inserted) == (2, 0)
    assert _markers(spark, isolated, names.DLQ_ARCHIVE_TABLE) == ["old-a", "old-b"]
    assert _markers(spark, isolated, names.DLQ_TABLE) == ["new"]
    assert [(a["archived"], a["inserted"]) for a in _audits(spark, isolated)] == [(2, 0)]


def test_purge_deletes_the_rows_and_every_file_holding_them(isolated: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spark = session(isolated, "dlq-retention-test")
    commits: list[tuple[str, int, int]] = []
    expire = retention._expire

    def seen_before_expiry(*args: Any) -> tuple[int, int]:
        """Record the archive's commits (operation, data files added and deleted) before they expire."""
        if not commits:
            for snap in load_catalog(isolated).load_table(names.DLQ_ARCHIVE_TABLE).snapshots():
                summary = snap.summary
                commits.append((summary.operation.value, int(summary.get("added-data-files") or 0),
                                int(summary.get("deleted-data-files") or 0)))
        return expire(*args)

    monkeypatch.setattr(retention, "_expire", seen_before_expiry)
    month = (TODAY - dt.timedelta(days=70)).replace(day=1)
    purge_before = month + dt.timedelta(days=12)
    as_of = dt.datetime.combine(purge_before + dt.timedelta(days=isolated.dlq_purge_days), dt.time(12), UTC)
    _insert(spark, isolated, {"purged-whole-month": month - dt.timedelta(days=20),
                              "purged-in-month": month + dt.timedelta(days=5),
                              "kept-in-month": month + dt.timedelta(days=15),
                              "kept-archived": TODAY - dt.timedelta(days=40),
                              "kept-hot": TODAY - dt.timedelta(days=5)})
    retention.run(spark, isolated, steps=("archive",), as_of=NOW)
    assert _markers_on_disk(isolated) >= {"purged-whole-month", "purged-in-month"}
    before = _snapshots(isolated)

    dry = retention.run(spark, isolated, steps=("purge",), as_of=as_of, dry_run=True)

    assert (dry.purged, dry.purged_by_month, dry.files_freed) == (2, 1, 0)
    assert _snapshots(isolated) == before

    done = retention.run(spark, isolated, steps=("purge",), as_of=as_of)

    assert done.cut.purge_before == purge_before
    assert (done.purged, done.purged_by_month) == (2, 1)
    assert done.files_freed > 0 and done.bytes_freed > 0
    # Archive append, whole month dropped (metadata-only), the cutoff's month rewritten (copy-on-write).
    assert commits == [("append", 3, 0), ("delete", 0, 1), ("overwrite", 1, 1)]
    assert _markers(spark, isolated, names.DLQ_ARCHIVE_TABLE) == ["kept-archived", "kept-in-month"]
    assert _markers(spark, isolated, names.DLQ_TABLE) == ["kept-hot"]
    on_disk = _markers_on_disk(isolated)
    assert not on_disk & {"purged-whole-month", "purged-in-month"}
    assert on_disk >= {"kept-archived", "kept-in-month", "kept-hot"}
    settled = _snapshots(isolated)

    again = retention.run(spark, isolated, steps=("purge",), as_of=as_of)

    assert (again.purged, again.files_freed, again.bytes_freed) == (0, 0, 0)
    now = _snapshots(isolated)
    assert now[names.DLQ_TABLE] == settled[names.DLQ_TABLE]
    assert now[names.DLQ_ARCHIVE_TABLE] == settled[names.DLQ_ARCHIVE_TABLE]
    audits = _audits(spark, isolated)
    assert [(a["purged"], a["files_freed"] > 0) for a in audits[1:]] == [(2, True), (0, False)]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.env(), "LAKEHOUSE_SPARK_DRIVER_MEMORY": "1g"}
    return subprocess.run([sys.executable, "-m", "lakehouse", "dlq", *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_the_cli_dry_run_prints_what_would_move_and_changes_nothing(isolated: Settings) -> None:
    spark = session(isolated, "dlq-retention-test")
    _insert(spark, isolated, {"old": TODAY - dt.timedelta(days=100), "new": TODAY})
    before = _snapshots(isolated)

    dry = _cli(isolated, "retention", "--dry-run", "--as-of", NOW.isoformat())

    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"1 rows dated before {TODAY - dt.timedelta(days=30)} would be archived" in dry.stdout
    assert f"{TODAY - dt.timedelta(days=100)} 1" in dry.stdout
    assert _snapshots(isolated) == before
    assert _markers(spark, isolated, names.DLQ_TABLE) == ["new", "old"]

    later = (NOW + dt.timedelta(days=91)).isoformat()
    done = _cli(isolated, "archive", "--as-of", later, "--json")

    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["archived"], result["dry_run"], result["steps"]) == (2, False, ["archive"])
    assert _markers(spark, isolated, names.DLQ_ARCHIVE_TABLE) == ["new", "old"]
