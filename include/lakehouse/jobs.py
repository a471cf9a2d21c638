"""The shared entry point of the Spark jobs in ``spark_jobs/`` (what spark-submit runs).

One Spark application per layer: a run starts one SparkSession and processes every configured
exchange in it, one after the other (``--exchange X`` limits it to some). The session's start
(JVM, Python driver, catalog) is the largest fixed cost of a run on a small machine, so paying it
once per layer instead of once per exchange halves what Bronze and Silver cost a minute. One
exchange's failure does not stop the others: they are processed, then the run fails naming it.

Exit codes Airflow understands: 0 on success (including a run with nothing new), 1 when the run
of any exchange failed loudly and should be retried or looked at, 2 on a bad argument or setting,
75 (``EX_TEMPFAIL``) when every failure was a lost race: another run of the same layer committed
the same input first (:class:`~lakehouse.errors.ConcurrentWriterError`), so nothing is lost and a
retry finds only what is left.
Each error is one line on stderr; the details are in the job's JSON log. With ``--report PATH``
the run writes its per-exchange outcome and phase timings there (:mod:`lakehouse.runreport`).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakehouse import runreport

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lakehouse.settings import Settings

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONCURRENT = 75  # sysexits.h EX_TEMPFAIL: try again later

# What a layer's result says about one exchange: (status, records, details for the report).
Describe = Callable[[Any], "tuple[str, int, dict[str, Any]]"]


def _no_details(result: object) -> tuple[str, int, dict[str, Any]]:
    return "done", 0, {}


def run_job(layer: str, description: str, run: Callable[..., object], failures: tuple[type[BaseException], ...],
            argv: Sequence[str] | None = None, per_exchange: bool = True, describe: Describe = _no_details,
            flags: Mapping[str, str] | None = None) -> int:
    """Run the ``layer`` job and return its exit code.

    ``per_exchange``: ``run(spark, settings, exchange)`` is called once per selected exchange in
    the same session, and ``describe(result)`` fills that exchange's report entry; otherwise
    ``run(spark, settings)`` is called once (and records per-exchange outcomes itself).
    ``failures`` are the run's documented errors: they exit 1 with their message; anything else
    propagates with its traceback (a bug, not an operational failure). ``flags``: the layer's
    own switches (keyword argument name -> help), passed to ``run`` as keyword arguments, e.g.
    ``accept_data_loss`` becomes ``--accept-data-loss``: one run's decision, never a setting.
    """
    from lakehouse.logs import configure_logging
    from lakehouse.settings import SettingsError, load_settings
    from lakehouse.spark import session

    parser = argparse.ArgumentParser(prog=f"{layer}_job.py", description=description)
    if per_exchange:
        parser.add_argument("--exchange", action="append", default=[],
                            help="process only this exchange (repeatable; default: every configured exchange)")
    parser.add_argument("--report", type=Path, help="write the run report (JSON) to this path")
    for flag, help_text in (flags or {}).items():
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true", help=help_text)
    args = parser.parse_args(argv)
    if flags:
        run = functools.partial(run, **{flag: getattr(args, flag) for flag in flags})

    def fail(message: str, code: int) -> int:
        print(f"{layer}: error: {message}", file=sys.stderr)
        return code

    try:
        settings: Settings = load_settings()
    except SettingsError as err:
        return fail(str(err), EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_json)
    exchanges: list[str] = []
    if per_exchange:
        unknown = [e for e in args.exchange if e not in settings.exchanges]
        if unknown:
            return fail(f"unknown exchange {unknown[0]!r}; configured: {', '.join(settings.exchanges)}", EXIT_USAGE)
        exchanges = list(dict.fromkeys(args.exchange)) or list(settings.exchanges)
    report = runreport.start(layer)
    suffix = exchanges if len(exchanges) == 1 else []
    spark: SparkSession = session(settings, "-".join(["lakehouse", layer, *suffix]))
    report.session_ready_at = time.time()
    errors: list[BaseException] = []
    try:
        if per_exchange:
            for exchange in exchanges:
                errors += _run_exchange(spark, settings, exchange, run, failures, describe)
        else:
            try:
                run(spark, settings)
            except failures as err:
                errors.append(err)
    finally:
        report.finished_at = time.time()
        report.cpu_s = runreport.process_tree_cpu()
        if args.report is not None:
            report.write(args.report)
        runreport.stop()
        spark.stop()
    for error in errors:
        fail(str(error), EXIT_FAILED)
    return exit_code(errors)


def exit_code(errors: Sequence[BaseException]) -> int:
    """0 without errors; :data:`EXIT_CONCURRENT` when each one is a lost race; else :data:`EXIT_FAILED`."""
    from lakehouse.errors import ConcurrentWriterError

    if not errors:
        return 0
    concurrent = all(isinstance(_unwrap(e), ConcurrentWriterError) for e in errors)
    return EXIT_CONCURRENT if concurrent else EXIT_FAILED


def _run_exchange(spark: SparkSession, settings: Settings, exchange: str, run: Callable[..., object],
                  failures: tuple[type[BaseException], ...], describe: Describe) -> list[BaseException]:
    """One exchange's part of a per-exchange run: its outcome goes into the report, its error is returned
    (its message prefixed with the exchange, its type kept for the exit code)."""
    with runreport.exchange(exchange) as outcome:
        try:
            result = run(spark, settings, exchange)
        except failures as err:
            if outcome is not None:
                outcome.status, outcome.error = "failed", str(err)
            return [_ExchangeFailure(exchange, err)]
        if outcome is not None:
            outcome.status, outcome.records, outcome.details = describe(result)
    return []


class _ExchangeFailure(Exception):
    """One exchange's error, named: ``str()`` is ``"<exchange>: <message>"``."""

    def __init__(self, exchange: str, error: BaseException) -> None:
        super().__init__(f"{exchange}: {error}")
        self.error = error


def _unwrap(error: BaseException) -> BaseException:
    return error.error if isinstance(error, _ExchangeFailure) else error


__all__ = ["EXIT_CONCURRENT", "EXIT_FAILED", "EXIT_USAGE", "exit_code", "run_job"]
