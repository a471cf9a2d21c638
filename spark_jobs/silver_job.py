"""Silver job: one run for one exchange (``--exchange X``), what Airflow and ``lakehouse run silver`` submit.

Streams what the exchange's Bronze table held at start, in bounded micro-batches: decodes and
validates every row, appends valid trades to Silver and the rest to the dead-letter table, and
exits. Exit code 0 on success (including a run with nothing new), 1 when the run failed (schema
registry unreachable, a batch failed: retry it), 2 on a bad argument or setting.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("lakehouse.silver.job")


def main(argv: list[str] | None = None) -> int:
    from lakehouse.logs import configure_logging
    from lakehouse.registry import RegistryError
    from lakehouse.settings import SettingsError, load_settings
    from lakehouse.silver.job import SilverRunError, run
    from lakehouse.spark import session

    parser = argparse.ArgumentParser(prog="silver_job.py", description=__doc__.splitlines()[0])
    parser.add_argument("--exchange", required=True)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"silver: error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    if args.exchange not in settings.exchanges:
        print(f"silver: error: unknown exchange {args.exchange!r}; configured: {', '.join(settings.exchanges)}",
              file=sys.stderr)
        return 2
    spark = session(settings, f"lakehouse-silver-{args.exchange}")
    try:
        run(spark, settings, args.exchange)
    except (SilverRunError, RegistryError) as err:
        print(f"silver: error: {err}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
