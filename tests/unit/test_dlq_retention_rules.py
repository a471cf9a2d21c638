"""DLQ retention cut-offs (whole UTC days from the as-of time) and the ``lakehouse dlq`` retention commands."""

from __future__ import annotations

import datetime as dt

import pytest

from lakehouse import cli, names, tables
from lakehouse.settings import load_settings
from lakehouse.silver.cli import cmd_dlq_retention
from lakehouse.silver.retention import DLQ_SNAPSHOT_SETTLE, RetentionError, cutoffs, settings_cutoffs

UTC = dt.timezone.utc


def test_cutoffs_are_whole_utc_days_before_the_as_of_date() -> None:
    cut = cutoffs(dt.datetime(2026, 5, 31, 23, 30, tzinfo=UTC), 30, 90)
    assert cut.archive_before == dt.date(2026, 5, 1)  # rows dated 2026-04-30 and earlier move
    assert cut.purge_before == dt.date(2026, 3, 2)
    assert cut.whole_months_before == dt.date(2026, 3, 1)


def test_the_as_of_date_is_taken_in_utc() -> None:
    late_in_new_york = dt.datetime(2026, 5, 31, 22, 0, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    cut = cutoffs(late_in_new_york, 30, 90)
    assert cut.as_of == dt.datetime(2026, 6, 1, 2, 0, tzinfo=UTC)
    assert cut.archive_before == dt.date(2026, 5, 2)


def test_snapshot_horizons_follow_the_later_of_as_of_and_now() -> None:
    cut = cutoffs(dt.datetime(2026, 9, 1, tzinfo=UTC), 30, 90)
    now = dt.datetime(2026, 6, 1, tzinfo=UTC)
    assert cut.snapshots_older_than(now) == dt.datetime(2026, 9, 1, tzinfo=UTC)
    assert cut.dlq_snapshots_older_than(now) == dt.datetime(2026, 9, 1, tzinfo=UTC) - DLQ_SNAPSHOT_SETTLE
    later = dt.datetime(2026, 10, 1, tzinfo=UTC)
    assert cut.snapshots_older_than(later) == later


@pytest.mark.parametrize(("as_of", "archive", "purge"), [
    (dt.datetime(2026, 1, 1), 30, 90),  # no time zone
    (dt.datetime(2026, 1, 1, tzinfo=UTC), 0, 90),
    (dt.datetime(2026, 1, 1, tzinfo=UTC), 30, 30),
])
def test_bad_inputs_are_refused(as_of: dt.datetime, archive: int, purge: int) -> None:
    with pytest.raises(RetentionError):
        cutoffs(as_of, archive, purge)


def test_settings_give_30_and_90_days_by_default() -> None:
    cut = settings_cutoffs(load_settings({}), dt.datetime(2026, 12, 31, 6, tzinfo=UTC))
    assert (cut.archive_before, cut.purge_before) == (dt.date(2026, 12, 1), dt.date(2026, 10, 2))


def test_archive_table_is_the_dlq_plus_archived_at_by_month_compressed_harder() -> None:
    archive, dlq = tables.DLQ_ARCHIVE_DEF, tables.DLQ_DEF
    assert archive.name == names.DLQ_ARCHIVE_TABLE in names.all_tables(load_settings({}))
    assert [c.name for c in archive.columns] == [c.name for c in dlq.columns] + ["archived_at"]
    assert [(c, str(t)) for c, t in archive.partition_by] == [("dlq_date", "month")]
    assert int(archive.properties["write.parquet.compression-level"]) > 3
    assert archive.properties["write.delete.mode"] == "copy-on-write"


@pytest.mark.parametrize("action", ["archive", "purge", "retention"])
def test_dlq_retention_commands_take_as_of_and_dry_run(action: str) -> None:
    args = cli.build_parser().parse_args(["dlq", action, "--as-of", "2026-06-01T12:00:00+02:00", "--dry-run"])
    assert args.func is cmd_dlq_retention and args.dlq_action == action and args.dry_run
    assert args.as_of == dt.datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    plain = cli.build_parser().parse_args(["dlq", action])
    assert plain.as_of is None and not plain.dry_run
