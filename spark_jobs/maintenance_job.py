"""Maintenance job: Iceberg compaction, manifest rewrite, snapshot expiry and orphan removal.

Submitted by the ``iceberg_maintenance`` DAG (one application per table, ``--table T``); the same
code as ``lakehouse maintain``. Exit code 0 on success, 1 when an operation failed (retry it), 2 on a
bad argument or setting.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakehouse.settings import Settings


def main(argv: list[str] | None = None) -> int:
    from lakehouse.jobs import EXIT_USAGE, run_job
    from lakehouse.maintenance import OPERATIONS, MaintenanceError, maintain
    from lakehouse.settings import SettingsError, load_settings
    from lakehouse.silver.cli import parse_time
    from lakehouse.tables import table_defs

    parser = argparse.ArgumentParser(prog="maintenance_job.py", add_help=False)
    parser.add_argument("--table", action="append", default=[])
    parser.add_argument("--only", choices=OPERATIONS)
    parser.add_argument("--as-of", type=parse_time)
    parser.add_argument("--dry-run", action="store_true")
    own, rest = parser.parse_known_args(argv)
    try:
        known = {d.name for d in table_defs(load_settings())}
    except SettingsError:
        known = set(own.table)  # run_job reports the bad setting (exit 2)
    unknown = [t for t in own.table if t not in known]
    if unknown:  # a bad argument: exit 2 before a Spark application starts
        print(f"maintenance: error: unknown table {unknown[0]!r}; expected one of {', '.join(sorted(known))}",
              file=sys.stderr)
        return EXIT_USAGE

    def run(spark: SparkSession, settings: Settings) -> None:
        maintain(spark, settings, own.table or None, own.only, own.dry_run, own.as_of)

    return run_job("maintenance", __doc__.splitlines()[0], run, (MaintenanceError,), rest, per_exchange=False)


if __name__ == "__main__":
    sys.exit(main())
