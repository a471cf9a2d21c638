"""``lakehouse replay silver``, ``lakehouse dlq replay`` and the DLQ retention commands
(``lakehouse dlq archive|purge|retention``): Spark in-process."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lakehouse.cli import CliError, to_json
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakehouse.silver.replay import ReplaySummary
    from lakehouse.silver.retention import RetentionResult


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2024-05-01T12:00:00Z") from err
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _group(sub: Any, name: str, help_text: str) -> Any:
    """The sub-command group ``name`` (e.g. ``dlq``), shared with other modules that add actions to it."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help_text)
        return parser.add_subparsers(dest=f"{name}_action", required=True, metavar="ACTION")
    for action in parser._actions:  # argparse keeps a group's sub-parsers action here
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise CliError(f"'lakehouse {name}' exists and takes no sub-commands")


def _print(summary: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(to_json(summary))
        return
    dead = summary["dead_lettered"]
    assert isinstance(dead, dict)
    detail = ", ".join(f"{k} {v}" for k, v in sorted(dead.items())) or "none"
    print(f"{summary['kind']} replay: {summary['considered']} rows re-validated, {summary['valid']} valid "
          f"(in Silver), dead-lettered: {detail}")


def _replay(args: argparse.Namespace, settings: Settings, app_name: str,
            replay: Callable[[SparkSession], ReplaySummary]) -> int:
    """Run one replay in its own SparkSession and print its summary; a ReplayError is one CLI line."""
    from lakehouse.silver.replay import ReplayError
    from lakehouse.spark import session

    spark = session(settings, app_name)
    try:
        summary = replay(spark)
    except ReplayError as err:
        raise CliError(str(err)) from err
    finally:
        spark.stop()
    _print(summary.as_dict(), args.json)
    return 0


def cmd_replay_silver(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse.silver.replay import replay_silver

    if args.exchange not in settings.exchanges:
        raise CliError(f"unknown exchange {args.exchange!r}; configured: {', '.join(settings.exchanges)}")
    return _replay(args, settings, f"lakehouse-replay-silver-{args.exchange}",
                   lambda spark: replay_silver(spark, settings, args.exchange, args.start, args.end, args.by))


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse.silver.replay import replay_dlq

    return _replay(args, settings, "lakehouse-dlq-replay",
                   lambda spark: replay_dlq(spark, settings, args.error_type, args.exchange))


def _print_retention(result: RetentionResult, as_json: bool) -> None:
    summary = result.as_dict()
    if as_json:
        print(to_json(summary))
        return
    would = "would be " if result.dry_run else ""
    if "archive" in result.steps:
        dates = ", ".join(f"{d} {n}" for d, n in sorted(result.archived_by_date.items())) or "none"
        print(f"dlq archive (as of {result.cut.as_of.isoformat()}): {result.archived} rows dated before "
              f"{result.cut.archive_before} {would}archived ({result.inserted} {would}inserted); by date: {dates}")
    if "purge" in result.steps:
        dates = ", ".join(f"{d} {n}" for d, n in sorted(result.purged_by_date.items())) or "none"
        print(f"dlq purge (as of {result.cut.as_of.isoformat()}): {result.purged} archived rows dated before "
              f"{result.cut.purge_before} {would}purged ({result.purged_by_month} by whole months); "
              f"by date: {dates}")
        if not result.dry_run:
            print(f"freed {result.files_freed} files, {result.bytes_freed} bytes")


def cmd_dlq_retention(args: argparse.Namespace, settings: Settings) -> int:
    """``lakehouse dlq archive|purge|retention``: one Spark session, one audit row (none on a dry run)."""
    from lakehouse.silver.retention import STEPS, RetentionError, run
    from lakehouse.spark import session

    steps = STEPS if args.dlq_action == "retention" else (args.dlq_action,)
    spark = session(settings, f"lakehouse-dlq-{args.dlq_action}")
    try:
        result = run(spark, settings, steps=steps, as_of=args.as_of, dry_run=args.dry_run)
    except RetentionError as err:
        raise CliError(str(err)) from err
    finally:
        spark.stop()
    _print_retention(result, args.json)
    return 0


def add_commands(sub: Any) -> None:
    replay = _group(sub, "replay", "rebuild a layer from its upstream after a fix")
    p = replay.add_parser("silver", help="re-decode and re-validate a Bronze range into Silver and the DLQ")
    p.add_argument("--exchange", required=True)
    p.add_argument("--from", dest="start", type=parse_time, help="first Bronze time included (ISO 8601, UTC default)")
    p.add_argument("--to", dest="end", type=parse_time, help="first Bronze time excluded (ISO 8601, UTC default)")
    p.add_argument("--by", choices=["ingestion", "kafka"], default="ingestion",
                   help="range over Bronze ingestion time (default) or the Kafka record timestamp")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay_silver)

    dlq = _group(sub, "dlq", "dead-letter table operations")
    p = dlq.add_parser("replay", help="re-validate dead-letter rows; move those that now pass into Silver")
    p.add_argument("--error-type", help="only rows of this error_type (e.g. unknown_schema_id)")
    p.add_argument("--exchange", help="only rows from this exchange's Bronze table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dlq_replay)
    for action, help_text in (
            ("archive", "move dead-letter rows older than LAKEHOUSE_DLQ_ARCHIVE_DAYS to the archive table"),
            ("purge", "delete archived rows older than LAKEHOUSE_DLQ_PURGE_DAYS and free their files"),
            ("retention", "archive, then purge: what the dlq_retention DAG runs")):
        p = dlq.add_parser(action, help=help_text)
        p.add_argument("--as-of", type=parse_time, help="act as if it were this time (ISO 8601, UTC default)")
        p.add_argument("--dry-run", action="store_true", help="print what would change and change nothing")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_dlq_retention)


__all__ = ["add_commands", "parse_time"]
