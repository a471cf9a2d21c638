"""The ``lakehouse`` command (also ``python -m lakehouse``).

Each sub-command is a thin wrapper over the package; errors the user can fix print one line
(``lakehouse: error: ...``) and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import decimal
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from lakehouse.settings import Settings, SettingsError, load_settings, setting_docs

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace, Settings], int]


class CliError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 2."""


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "asDict"):
        return value.asDict(recursive=True)
    return str(value)


def to_json(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


# --- commands --------------------------------------------------------------------------------

def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse import stack

    result = stack.up(settings)
    print(to_json(result) if args.json else
          f"stack up: kafka {result['bootstrap']}, {len(result['tables_created'])} tables created, home {result['home']}")
    return 0


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse import stack

    result = stack.down(settings)
    print(to_json(result) if args.json else
          ("broker stopped" if result["broker_stopped"] else "nothing was running"))
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse import stack

    result = stack.status(settings)
    if args.json:
        print(to_json(result))
        return 0
    b = result["broker"]
    print(f"home     {result['home']}")
    print(f"broker   {'running pid ' + str(b['pid']) if b['running'] else 'not running'} "
          f"({b['bootstrap']}, {'reachable' if b['reachable'] else 'unreachable'})")
    for topic, info in result["topics"].items():
        print(f"topic    {topic}: {info['partitions']} partitions, end offsets {info['end_offsets']}")
    print(f"registry {result['schema_registry']}")
    for table, info in result["tables"].items():
        if info["exists"]:
            print(f"table    {table}: {info['records']} rows, {info['snapshots']} snapshots")
        else:
            print(f"table    {table}: missing (run 'lakehouse up')")
    for item in result.get("discarded", []):
        count = "an unknown number of" if item["records"] is None else str(item["records"])
        print(f"discarded {item['time']} {item['table']}: {count} records never reached Bronze ({item['event']}: "
              f"{item['detail']})")
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    values = settings.as_dict()
    derived = {"bootstrap_servers": settings.bootstrap_servers, "catalog_jdbc_uri": settings.catalog_jdbc_uri,
               "warehouse_uri": settings.warehouse_uri, "checkpoint_uri": settings.checkpoint_uri,
               "airflow_home_path": str(settings.airflow_home_path)}
    if args.json:
        print(to_json({**values, "derived": derived}))
        return 0
    docs = setting_docs()
    for key, value in values.items():
        print(f"LAKEHOUSE_{key.upper():<32} = {value!s:<40} # {docs[key]}")
    for key, value in derived.items():
        print(f"{'(derived) ' + key:<42} = {value}")
    return 0


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    from pyspark.errors import PySparkException

    from lakehouse.spark import session

    spark = session(settings, "lakehouse-sql")
    try:
        try:
            df = spark.sql(args.query)
            rows = df.collect()
        except PySparkException as err:
            raise CliError(f"query failed: {str(err).splitlines()[0]}") from err
        if args.json:
            for row in rows:
                print(to_json(row.asDict(recursive=True)))
        else:
            cols = df.columns
            print("\t".join(cols))
            for row in rows:
                print("\t".join("NULL" if v is None else str(v) for v in row))
    finally:
        spark.stop()
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a layer's Spark job through spark-submit, exactly as Airflow submits it."""
    from lakehouse.spark import spark_submit_binary, submit_spec

    job_args: list[str] = []
    if args.accept_data_loss:
        if args.layer != "bronze":
            raise CliError("--accept-data-loss applies to 'lakehouse run bronze' only")
        job_args.append("--accept-data-loss")
    if args.exchange and args.layer == "gold":
        raise CliError("'lakehouse run gold' always reads every exchange's Silver table: drop --exchange")
    for exchange in args.exchange:
        if exchange not in settings.exchanges:
            raise CliError(f"unknown exchange {exchange!r}; configured: {', '.join(settings.exchanges)}")
        job_args += ["--exchange", exchange]
    spec = submit_spec(settings, args.layer, job_args)
    argv = spec.argv(spark_submit_binary())
    if args.print_command:
        print(" ".join(argv))
        return 0
    env = {**os.environ, **spec.env}
    return subprocess.call(argv, env=env)


def cmd_jvm_archive(args: argparse.Namespace, settings: Settings) -> int:
    """Build the AppCDS archive that cuts every layer run's JVM start (see lakehouse.jvm_archive)."""
    from lakehouse.jvm_archive import ArchiveError, build

    try:
        path = build(settings)
    except ArchiveError as err:
        raise CliError(f"JVM archive not built (jobs still run, with a slower start): {err}") from err
    print(f"JVM class-data-sharing archive: {path} ({path.stat().st_size // (1024 * 1024)} MiB)")
    return 0


# Modules contributing sub-commands: each defines ``add_commands(subparsers)`` whose parsers set
# ``func`` to a handler ``(args, settings) -> exit code``.
COMMAND_MODULES: tuple[str, ...] = ("lakehouse.orchestration.cli", "lakehouse.producer.cli", "lakehouse.silver.cli",
                                    "lakehouse.maintenance_cli", "lakehouse.monitor.cli",
                                    "lakehouse.bench.sustained")  # lakehouse bench sustained


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakehouse", description="Crypto trades lakehouse: stack, jobs, queries.")
    parser.add_argument("--log-level", default=None, help="override LAKEHOUSE_LOG_LEVEL for this command")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start the embedded stack (idempotent): broker, topics, schemas, tables")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the embedded stack's processes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="broker, topics, schemas and tables at a glance")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("config", help="print the effective settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("sql", help="run a Spark SQL query over the catalog (market_data.<table> resolves)")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("query")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("run", help="run one layer's Spark job via spark-submit (what Airflow runs)")
    p.add_argument("layer", choices=["bronze", "silver", "gold"])
    p.add_argument("--exchange", action="append", default=[],
                   help="bronze/silver: only this exchange (repeatable; default: every configured exchange)")
    p.add_argument("--print-command", action="store_true", help="print the spark-submit command and exit")
    p.add_argument("--accept-data-loss", action="store_true",
                   help="bronze: accept the data loss this run finds (retention gap, recreated topic), once; "
                        "it is recorded with its offset ranges in market_data.pipeline_audit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("jvm-archive", help="build the Spark driver's class-data-sharing archive (run by make)")
    p.set_defaults(func=cmd_jvm_archive)

    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lakehouse.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"lakehouse: error: {err}", file=sys.stderr)
        return 2
    configure_logging(args.log_level or settings.log_level, settings.log_json)
    try:
        return int(args.func(args, settings) or 0)
    except (CliError, *_user_errors()) as err:
        print(f"lakehouse: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _user_errors() -> tuple[type[Exception], ...]:
    """Failures a user can fix from the message alone (a service down, a missing jar, a bad value)."""
    from lakehouse.broker import BrokerError
    from lakehouse.catalog import CatalogUnavailableError
    from lakehouse.registry import RegistryError
    from lakehouse.spark import SparkSetupError

    return (BrokerError, CatalogUnavailableError, RegistryError, SparkSetupError, SettingsError)


__all__ = ["CliError", "build_parser", "main", "to_json"]
