"""``lakehouse replay silver`` and ``lakehouse dlq replay``: argument parsing (the replays run in integration tests)."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from lakehouse import cli
from lakehouse.silver.cli import cmd_dlq_replay, cmd_replay_silver, parse_time

UTC = dt.timezone.utc


def test_replay_silver_parses_its_range_as_utc_unless_a_zone_is_given() -> None:
    args = cli.build_parser().parse_args(["replay", "silver", "--exchange", "binance", "--from", "2026-01-01",
                                          "--to", "2026-01-02T12:30:00+02:00", "--by", "kafka", "--json"])
    assert args.func is cmd_replay_silver and args.exchange == "binance" and args.by == "kafka" and args.json
    assert args.start == dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert args.end == dt.datetime(2026, 1, 2, 10, 30, tzinfo=UTC)


def test_replay_silver_defaults_to_the_whole_table_by_ingestion_time() -> None:
    args = cli.build_parser().parse_args(["replay", "silver", "--exchange", "kraken"])
    assert (args.start, args.end, args.by) == (None, None, "ingestion")


def test_dlq_replay_takes_optional_filters() -> None:
    args = cli.build_parser().parse_args(["dlq", "replay", "--error-type", "unknown_schema_id"])
    assert args.func is cmd_dlq_replay and args.error_type == "unknown_schema_id" and args.exchange is None


def test_a_bad_time_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="ISO 8601"):
        parse_time("yesterday")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["replay", "silver", "--exchange", "binance", "--from", "yesterday"])


def test_an_unknown_exchange_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["replay", "silver", "--exchange", "nasdaq"]) == 2
    assert "unknown exchange 'nasdaq'" in capsys.readouterr().err
