"""Gold job: Silver streams of every configured exchange -> gold_crypto_trades and gold_ohlcv_1m.

Submitted by ``lakehouse run gold`` and by Airflow (the same spark-submit); configuration comes
from LAKEHOUSE_* variables. Processes what Silver held at start (availableNow), then exits.
Exit code 0 on success, 1 when the run failed (retry it), 2 on a bad setting, 75 when another Gold
run committed the batches this run was processing first (nothing was written twice).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lakehouse.gold.job import GoldConcurrentWriterError, GoldRunError, run
    from lakehouse.jobs import run_job

    return run_job("gold", __doc__.splitlines()[0], run, (GoldConcurrentWriterError, GoldRunError), argv,
                   per_exchange=False)


if __name__ == "__main__":
    sys.exit(main())
