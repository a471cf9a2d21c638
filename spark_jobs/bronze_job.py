"""Bronze job: one run for one exchange (``--exchange X``), what Airflow and ``lakehouse run bronze`` submit.

Reads what the exchange's Kafka topic holds at start (up to the admission cap), writes it to the
Bronze table with the offsets in the same Iceberg commit, and exits. Exit code 0 on success
(including a run with nothing new), 1 when the run failed loudly (data loss, concurrent run,
Kafka unreachable), 2 on a bad argument or setting.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from lakehouse.bronze.errors import BronzeError
    from lakehouse.bronze.run import run_bronze
    from lakehouse.logs import configure_logging
    from lakehouse.settings import SettingsError, load_settings
    from lakehouse.spark import session

    parser = argparse.ArgumentParser(prog="bronze_job.py", description=__doc__.splitlines()[0])
    parser.add_argument("--exchange", required=True)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as err:
        print(f"bronze: error: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    if args.exchange not in settings.exchanges:
        print(f"bronze: error: unknown exchange {args.exchange!r}; configured: {', '.join(settings.exchanges)}",
              file=sys.stderr)
        return 2
    spark = session(settings, f"lakehouse-bronze-{args.exchange}")
    try:
        run_bronze(spark, settings, args.exchange)
    except BronzeError as err:
        print(f"bronze: error: {err}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
