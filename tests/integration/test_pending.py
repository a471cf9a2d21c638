"""The "anything new upstream?" check that lets Airflow skip a Spark start, against real Iceberg
streams and their checkpoints (the offsets format it reads is Spark's and Iceberg's, not ours)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import urlparse

import pytest

from lakehouse import names
from lakehouse.gold import job
from lakehouse.gold.synthetic import silver_frame, silver_record
from lakehouse.orchestration import pending
from lakehouse.settings import Settings
from lakehouse.spark import session

pytestmark = pytest.mark.integration

T0 = (int(dt.datetime.now(dt.timezone.utc).timestamp()) // 3600 - 5) * 3_600_000_000


def _append(settings: Settings, exchange: str, first_id: int, n: int) -> None:
    spark = session(settings, "test-pending")
    records = [silver_record(exchange, i, T0 + i * 1_000_000, symbol="BTCUSDT", currency="USDT", seq=i)
               for i in range(first_id, first_id + n)]
    silver_frame(spark, records).writeTo(names.qualified(settings, names.silver_table(exchange))).append()


def test_gold_has_work_exactly_when_silver_has_appends_its_checkpoint_has_not_consumed(isolated: Settings) -> None:
    assert pending.pending_work(isolated, "gold") == {}  # empty Silver tables
    assert pending.pending_work(isolated, "silver") == {}  # empty Bronze tables
    _append(isolated, "binance", 1, 3)
    assert pending.pending_work(isolated, "gold") == {"binance": "first run of the stream"}

    job.run(session(isolated, "test-pending"), isolated)
    assert pending.pending_work(isolated, "gold") == {}

    _append(isolated, "kraken", 1, 2)
    _append(isolated, "binance", 10, 2)
    waiting = pending.pending_work(isolated, "gold")
    assert set(waiting) == {"binance", "kraken"}
    assert waiting["binance"].startswith("appends after snapshot")

    job.run(session(isolated, "test-pending"), isolated)
    assert pending.pending_work(isolated, "gold") == {}


def test_a_planned_but_uncommitted_batch_counts_as_work(isolated: Settings) -> None:
    _append(isolated, "binance", 1, 2)
    job.run(session(isolated, "test-pending"), isolated)
    checkpoint = Path(urlparse(names.gold_checkpoint(isolated, "binance")).path)
    [last] = sorted((p for p in (checkpoint / "commits").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))[-1:]
    last.unlink()  # as if the run was killed after planning the batch, before committing it
    assert "planned but not committed" in pending.pending_work(isolated, "gold")["binance"]


def test_a_checkpoint_off_the_local_file_system_is_never_skipped() -> None:
    with pytest.raises(pending.Undecided, match="not on a local file system"):
        pending.committed_position("s3a://bucket/checkpoints/gold/silver_binance")
