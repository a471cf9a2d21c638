"""The shared entry point of the Spark jobs in ``spark_jobs/`` (what spark-submit runs).

Every job parses the same arguments, loads settings, starts one SparkSession, runs its layer and
maps the outcome to an exit code Airflow understands: 0 on success (including a run with nothing
new), 1 when the run failed loudly and should be retried or looked at, 2 on a bad argument or
setting. The error is one line on stderr; the details are in the job's JSON log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakehouse.settings import Settings

EXIT_FAILED = 1
EXIT_USAGE = 2


def run_job(layer: str, description: str, run: Callable[..., object], failures: tuple[type[BaseException], ...],
            argv: Sequence[str] | None = None, per_exchange: bool = True) -> int:
    """Run ``run(spark, settings[, exchange])`` as the ``layer`` job; return the exit code.

    ``failures`` are the run's documented errors: they exit 1 with their message; anything else
    propagates with its traceback (a bug, not an operational failure).
    """
    from lakehouse.logs import configure_logging
    from lakehouse.settings import SettingsError, load_settings
    from lakehouse.spark import session

    parser = argparse.ArgumentParser(prog=f"{layer}_job.py", description=description)
    if per_exchange:
        parser.add_argument("--exchange", required=True)
    args = parser.parse_args(argv)

    def fail(message: str, code: int) -> int:
        print(f"{layer}: error: {message}", file=sys.stderr)
        return code

    try:
        settings: Settings = load_settings()
    except SettingsError as err:
        return fail(str(err), EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_json)
    extra: list[str] = []
    if per_exchange:
        if args.exchange not in settings.exchanges:
            return fail(f"unknown exchange {args.exchange!r}; configured: {', '.join(settings.exchanges)}",
                        EXIT_USAGE)
        extra = [args.exchange]
    spark: SparkSession = session(settings, "-".join(["lakehouse", layer, *extra]))
    try:
        run(spark, settings, *extra)
    except failures as err:
        return fail(str(err), EXIT_FAILED)
    finally:
        spark.stop()
    return 0


__all__ = ["EXIT_FAILED", "EXIT_USAGE", "run_job"]
