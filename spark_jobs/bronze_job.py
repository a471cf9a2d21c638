"""Bronze job: one run over every configured exchange (or ``--exchange X``), what Airflow and ``lakehouse run bronze`` submit.

For each exchange, reads what its Kafka topic holds at start (up to the admission cap), writes it to the
Bronze table with the offsets in the same Iceberg commit, and exits. Exit code 0 on success
(including a run with nothing new), 1 when the run failed loudly (data loss, Kafka unreachable),
2 on a bad argument or setting, 75 when another Bronze run committed first.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lakehouse.bronze.errors import BronzeError
    from lakehouse.bronze.run import run_bronze
    from lakehouse.jobs import run_job

    return run_job("bronze", __doc__.splitlines()[0], run_bronze, (BronzeError,), argv,
                   describe=lambda result: (result.status, result.records, result.as_log()),
                   flags={"accept_data_loss": "accept the data loss this run finds, once: recorded with its offset "
                                              "ranges in the audit table; later runs fail on a new loss again"})


if __name__ == "__main__":
    sys.exit(main())
