"""Iceberg maintenance on the embedded stack: expiry never breaks a lagging stream, compaction and
expiry keep every layer exactly once, orphan removal spares young files, dry runs change nothing."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from local_checks import produce_trades

from lakehouse import names
from lakehouse.bronze import iceberg
from lakehouse.bronze.run import run_bronze
from lakehouse.catalog import load_catalog
from lakehouse.gold import job as gold_job
from lakehouse.maintenance import maintain, stream_needs
from lakehouse.settings import Settings
from lakehouse.silver import job as silver_job
from lakehouse.spark import session, spark_submit_binary, submit_spec
from lakehouse.tables import table_defs

pytestmark = pytest.mark.integration

EX = "binance"
LATER = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)


def produce(settings: Settings, trade_ids: range) -> None:
    produce_trades(settings, EX, trade_ids)


def main_ids(settings: Settings, table: str) -> list[int]:
    """Main's ancestors, oldest first."""
    t = load_catalog(settings).load_table(table)
    ids, snap = [], t.current_snapshot()
    while snap is not None:
        ids.append(snap.snapshot_id)
        snap = t.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return ids[::-1]


def trade_ids(spark: Any, settings: Settings, table: str) -> list[int]:
    return sorted(int(r[0]) for r in spark.sql(f"SELECT trade_id FROM {names.qualified(settings, table)}").collect())


def bronze_offsets(settings: Settings) -> dict[int, int] | None:
    table = load_catalog(settings).load_table(names.bronze_table(EX))
    return iceberg.offsets_on_main(table, names.topic(settings, EX))[1]


def test_expiry_keeps_what_a_lagging_silver_stream_needs(isolated: Settings, caplog: pytest.LogCaptureFixture) -> None:
    s = session(isolated, "t")
    settings = isolated.replace(snapshot_retain_last=1)
    for batch in range(2):
        produce(settings, range(batch * 10, batch * 10 + 10))
        run_bronze(s, settings, EX)
    silver_job.run(s, settings, EX)  # Silver has read the first two commits only
    for batch in range(2, 5):
        produce(settings, range(batch * 10, batch * 10 + 10))
        run_bronze(s, settings, EX)
    bronze = names.bronze_table(EX)
    before = main_ids(settings, bronze)
    [needed] = stream_needs(names.checkpoint(settings, "silver", EX)).snapshot_ids
    assert needed in before and needed != before[-1]

    with caplog.at_level(logging.INFO, logger="lakehouse.maintenance"):
        [report] = maintain(s, settings, [bronze], only="expire", as_of=LATER)
    expire = report.operations["expire"]
    kept = before[before.index(needed):]
    assert main_ids(settings, bronze) == kept
    assert expire["expired"] == sorted(before[:before.index(needed)]) and expire["expired"]
    assert needed in [k["snapshot_id"] for k in expire["kept_back"]]
    assert any(f"kept back snapshot {needed}" in r.getMessage() and "silver binance" in r.getMessage()
               for r in caplog.records)

    silver_job.run(s, settings, EX)
    assert trade_ids(s, settings, names.silver_table(EX)) == list(range(50))
    assert bronze_offsets(settings) is not None


@pytest.mark.slow  # ~40 s: 'make test-slow' (CI runs it after 'make test')
def test_compaction_and_expiry_then_every_layer_exactly_once(isolated: Settings) -> None:
    s = session(isolated, "t")
    settings = isolated.replace(snapshot_retain_last=1)
    for batch in range(3):
        produce(settings, range(batch * 10, batch * 10 + 10))
        run_bronze(s, settings, EX)
        silver_job.run(s, settings, EX)
        gold_job.run(s, settings)
    offsets = bronze_offsets(settings)
    reports = maintain(s, settings, [names.bronze_table(EX), names.silver_table(EX), names.GOLD_TABLE],
                       as_of=LATER)
    compacted = {r.table: r.operations["compact"] for r in reports}
    assert compacted[names.bronze_table(EX)]["rewritten_data_files_count"] > 1
    assert compacted[names.bronze_table(EX)]["added_data_files_count"] < \
        compacted[names.bronze_table(EX)]["rewritten_data_files_count"]
    assert compacted[names.GOLD_TABLE]["rewritten_data_files_count"] > 1
    assert any(r.operations["expire"]["expired"] for r in reports)
    assert bronze_offsets(settings) == offsets  # read from the summary of a kept snapshot
    # Gold's stream needs only its position: Silver's older snapshots go (an availableNow stream
    # would hold its first snapshot and everything after it).
    silver_expire = reports[1].operations["expire"]
    assert silver_expire["expired"]
    assert all("gold binance" in k["reason"] for k in silver_expire["kept_back"])

    produce(settings, range(30, 45))
    assert run_bronze(s, settings, EX).records == 15
    silver_job.run(s, settings, EX)
    gold_job.run(s, settings)
    for table in (names.bronze_table(EX), names.silver_table(EX), names.GOLD_TABLE):
        if table == names.bronze_table(EX):
            count = s.sql(f"SELECT count(*) FROM {names.qualified(settings, table)}").collect()[0][0]
            assert count == 45, table
        else:
            assert trade_ids(s, settings, table) == list(range(45)), table


def _local(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def test_orphan_removal_spares_young_files_and_dry_run_changes_nothing(isolated: Settings) -> None:
    s = session(isolated, "t")
    settings = isolated.replace(snapshot_retain_last=1)
    for batch in range(3):
        produce(settings, range(batch * 10, batch * 10 + 10))
        run_bronze(s, settings, EX)
    bronze = names.bronze_table(EX)
    table = load_catalog(settings).load_table(bronze)
    data_dir = _local(table.location()) / "data"
    young, old = data_dir / "in-flight-write.parquet", data_dir / "left-by-a-killed-job.parquet"
    for f in (young, old):
        f.write_bytes(b"PAR1")
    hours_ago = time.time() - (settings.orphan_min_age_hours + 1) * 3600
    os.utime(old, (hours_ago, hours_ago))
    snapshots, files = main_ids(settings, bronze), sorted(p for p in data_dir.rglob("*") if p.is_file())

    [dry] = maintain(s, settings, [bronze], dry_run=True, as_of=LATER)
    assert main_ids(settings, bronze) == snapshots
    assert sorted(p for p in data_dir.rglob("*") if p.is_file()) == files
    assert dry.operations["expire"]["would_expire"] == snapshots[:-1]
    assert dry.operations["compact"]["would_rewrite_files"] >= 3
    assert [Path(unquote(urlparse(f).path)).name for f in dry.operations["orphans"]["would_delete"]] == [old.name]

    [done] = maintain(s, settings, [bronze], only="orphans", as_of=LATER)
    assert [Path(unquote(urlparse(f).path)).name for f in done.operations["orphans"]["deleted"]] == [old.name]
    assert young.exists() and not old.exists()
    assert s.sql(f"SELECT count(*) FROM {names.qualified(settings, bronze)}").collect()[0][0] == 30


@pytest.mark.slow  # ~30 s: 'make test-slow' (CI runs it after 'make test'), keeping 'make test' under 15 min
def test_the_dag_job_and_the_cli_dry_run(isolated: Settings, tmp_path: Path) -> None:
    s = session(isolated, "t")
    for batch in range(2):
        produce(isolated, range(batch * 10, batch * 10 + 10))
        run_bronze(s, isolated, EX)
    bronze = names.bronze_table(EX)
    snapshots = main_ids(isolated, bronze)
    env = {**os.environ, **isolated.env(), "LAKEHOUSE_SNAPSHOT_RETAIN_LAST": "1"}

    cli = subprocess.run([sys.executable, "-m", "lakehouse", "maintain", "--table", "bronze_binance_trades",
                          "--dry-run", "--only", "expire", "--as-of", LATER.isoformat(), "--json"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert cli.returncode == 0, cli.stderr[-3000:]
    [report] = json.loads(cli.stdout[cli.stdout.index("["):])
    assert report["dry_run"] and report["operations"]["expire"]["would_expire"] == snapshots[:-1]
    assert main_ids(isolated, bronze) == snapshots

    spec = submit_spec(isolated, "maintenance", ["--table", bronze, "--only", "expire", "--as-of", LATER.isoformat(),
                                                 "--report", str(tmp_path / "report.json")])
    job_env = {**env, **spec.env, "LAKEHOUSE_SNAPSHOT_RETAIN_LAST": "1"}
    job = subprocess.run(spec.argv(spark_submit_binary()), env=job_env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert job.returncode == 0, job.stderr[-3000:]
    assert main_ids(isolated, bronze) == snapshots[-1:]
    assert (tmp_path / "report.json").exists()
    bad = subprocess.run(spec.argv(spark_submit_binary())[:-6] + ["--table", "market_data.nope"],
                         env={**env, **spec.env}, capture_output=True, text=True, timeout=600, check=False)
    assert bad.returncode == 2 and "unknown table 'market_data.nope'" in bad.stdout + bad.stderr

    # Every table, empty ones included, on today's clock: nothing closed, nothing past retention.
    reports = {r.table: r.operations for r in maintain(s, isolated)}
    assert set(reports) == {d.name for d in table_defs(isolated)}
    assert reports[bronze]["compact"]["rewritten_data_files_count"] == 0
    assert reports[bronze]["expire"]["expired"] == [] and reports[bronze]["orphans"]["deleted"] == []
    assert s.sql(f"SELECT count(*) FROM {names.qualified(isolated, bronze)}").collect()[0][0] == 20


@pytest.mark.fault
def test_a_retried_silver_batch_still_finds_its_tag_after_compaction_and_expiry(isolated: Settings) -> None:
    s = session(isolated, "t")
    settings = isolated.replace(snapshot_retain_last=1)
    produce(settings, range(0, 10))
    run_bronze(s, settings, EX)
    silver_job.run(s, settings, EX)
    produce(settings, range(10, 20))
    run_bronze(s, settings, EX)
    with pytest.raises(silver_job.SilverRunError, match="InjectedFault"):
        silver_job.run(s, settings.replace(silver_fault_injection="after_silver"), EX)
    silver = names.silver_table(EX)
    tagged = load_catalog(settings).load_table(silver).current_snapshot()
    assert tagged is not None and names.SILVER_BATCH_PROPERTY in tagged.summary.additional_properties

    [report] = maintain(s, settings, [silver], as_of=LATER)
    assert report.operations["compact"]["rewritten_data_files_count"] > 1  # main's head is now a replace
    assert report.operations["expire"]["expired"]
    assert tagged.snapshot_id in [k["snapshot_id"] for k in report.operations["expire"]["kept_back"]]
    assert tagged.snapshot_id in main_ids(settings, silver)

    retry = silver_job.run(s, settings, EX)
    assert retry.batches and not retry.batches[0].wrote_silver  # found its tag: not written twice
    assert trade_ids(s, settings, silver) == list(range(20))
