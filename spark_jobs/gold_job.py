"""Gold job: Silver streams of every configured exchange -> gold_crypto_trades and gold_ohlcv_1m.

Submitted by ``lakehouse run gold`` and by Airflow (the same spark-submit); configuration comes
from LAKEHOUSE_* variables. Processes what Silver held at start (availableNow), then exits.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lakehouse.gold.job import GoldRunError, run
from lakehouse.logs import configure_logging
from lakehouse.settings import load_settings
from lakehouse.spark import session

log = logging.getLogger("lakehouse.gold_job")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="gold_job.py", description=__doc__).parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    spark = session(settings, "lakehouse-gold")
    try:
        run(spark, settings)
    except GoldRunError as err:
        log.error("%s", err)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
