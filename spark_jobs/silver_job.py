"""Silver job: one run over every configured exchange (or ``--exchange X``), what Airflow and ``lakehouse run silver`` submit.

For each exchange, streams what its Bronze table held at start, in bounded micro-batches: decodes and
validates every row, appends valid trades to Silver and the rest to the dead-letter table, and
exits. Exit code 0 on success (including a run with nothing new), 1 when the run failed (schema
registry unreachable, a batch failed: retry it), 2 on a bad argument or setting, 75 when another
Silver run of the same exchange committed a batch of this run first (nothing was written twice).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lakehouse.jobs import run_job
    from lakehouse.registry import RegistryError
    from lakehouse.silver.job import SilverConcurrentWriterError, SilverRunError, describe_run, run

    return run_job("silver", __doc__.splitlines()[0], run, (SilverConcurrentWriterError, SilverRunError, RegistryError),
                   argv, describe=describe_run)


if __name__ == "__main__":
    sys.exit(main())
