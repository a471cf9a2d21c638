"""Commands ``lakehouse airflow <args>`` and ``lakehouse run-all`` (what ``make run`` runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from lakehouse.settings import Settings

# Airflow commands that work without (or create) the metadata database.
_NO_DB_COMMANDS = {"db", "version", "config", "info", "cheat-sheet", "-h", "--help", "standalone"}


def cmd_airflow(args: argparse.Namespace, settings: Settings) -> int:
    """Replace this process with ``airflow <args>`` configured for the project's Airflow home."""
    from lakehouse.orchestration import environment

    airflow_args = list(args.airflow_args)
    env = environment.airflow_env(settings)
    first = airflow_args[0] if airflow_args else "-h"
    if first not in _NO_DB_COMMANDS and not environment.metadata_db_path(settings).exists() \
            and env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:"):
        print(f"lakehouse: preparing Airflow in {settings.airflow_home_path} (first use)", file=sys.stderr)
        environment.prepare(settings, env)
    argv = environment.airflow_argv(airflow_args or ["-h"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # not reached


def cmd_run_all(args: argparse.Namespace, settings: Settings) -> int:
    """Stack + producers + Airflow standalone in the foreground until Ctrl-C / SIGTERM."""
    from lakehouse.orchestration.supervisor import Supervisor

    replay = {ex: Path(path) for ex, path in (args.replay or [])}
    return Supervisor(settings, producers=not args.no_producers, replay=replay).run()


def _replay_pair(text: str) -> tuple[str, str]:
    exchange, sep, path = text.partition("=")
    if not sep or not exchange or not path:
        raise argparse.ArgumentTypeError(f"expected EXCHANGE=PATH, got {text!r}")
    return exchange, path


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "airflow", add_help=False, prefix_chars="\0",
        help="the Airflow CLI on the project's Airflow home, e.g. 'lakehouse airflow dags trigger gold_aggregation'",
        description="Runs 'airflow ARGS' with AIRFLOW_HOME, DAG folder, database and connections of this project.")
    # No option parsing of our own: everything after 'airflow' (including --help) goes to Airflow.
    p.add_argument("airflow_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_airflow)

    p = sub.add_parser("run-all", help="what 'make run' runs: stack, replay producers, Airflow (Ctrl-C stops all)")
    p.add_argument("--no-producers", action="store_true", help="do not start the replay producers")
    p.add_argument("--replay", type=_replay_pair, action="append", metavar="EXCHANGE=PATH",
                   help="recorded frames a producer replays (default: the producer's own sample)")
    p.set_defaults(func=cmd_run_all)
