"""``lakehouse maintain``: Iceberg table maintenance from a shell, Spark in-process.

The same code as the ``iceberg_maintenance`` DAG's tasks (:mod:`lakehouse.maintenance`); with
``--dry-run`` it prints what would be expired, rewritten and deleted and changes nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from lakehouse import names
from lakehouse.cli import CliError, to_json
from lakehouse.settings import Settings
from lakehouse.silver.cli import parse_time


def qualify(table: str) -> str:
    """``bronze_binance_trades`` or ``market_data.bronze_binance_trades`` -> the latter."""
    return table if "." in table else f"{names.NAMESPACE}.{table}"


def _print(reports: list[dict[str, Any]]) -> None:
    for report in reports:
        print(f"{report['table']}{' (dry run)' if report['dry_run'] else ''}:")
        for op, outcome in report["operations"].items():
            print(f"  {op}: {to_json(outcome)}")


def cmd_maintain(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse.maintenance import MaintenanceError, maintain
    from lakehouse.spark import session

    tables = [qualify(t) for t in args.table] or None
    spark = session(settings, "lakehouse-maintenance")
    try:
        reports = maintain(spark, settings, tables, args.only, args.dry_run, args.as_of)
    except MaintenanceError as err:
        raise CliError(str(err)) from err
    finally:
        spark.stop()
    dicts = [r.as_dict() for r in reports]
    if args.json:
        print(to_json(dicts))
    else:
        _print(dicts)
    return 0


def add_commands(sub: Any) -> None:
    from lakehouse.maintenance import OPERATIONS

    p = sub.add_parser("maintain", help="compact, rewrite manifests, expire snapshots, remove orphan files")
    p.add_argument("--table", action="append", default=[],
                   help="only this table (repeatable; with or without the namespace; default: every table)")
    p.add_argument("--only", choices=OPERATIONS, help="run one operation only")
    p.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    p.add_argument("--as-of", type=parse_time,
                   help="act as if it were this time (ISO 8601, UTC default) for expiry and compaction; "
                        "orphan file age always uses the real clock")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_maintain)


__all__ = ["add_commands", "cmd_maintain", "qualify"]
