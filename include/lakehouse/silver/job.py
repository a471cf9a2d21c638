"""One Silver run for one exchange: Bronze as an Iceberg stream -> Silver + dead-letter table, then exit.

Processes what Bronze held when the run started, in micro-batches bounded by the admission cap,
then exits. The entry point the Spark job (``spark_jobs/silver_job.py``) and the tests import;
the work is split by responsibility:

- :mod:`lakehouse.silver.stream`: run control, the bounded streaming query (:func:`run`);
- :mod:`lakehouse.silver.batch`: the commit protocol of one micro-batch (:func:`process_batch`):
  each table's files committed at most once per batch, a tagged compare-and-set commit;
- :mod:`lakehouse.silver.reporting`: each batch's and run's log line and StatsD metrics
  (``silver.*``), and the run report entry (:func:`describe_run`);
- :mod:`lakehouse.silver.failures`: the run's errors, decided from exception types.
"""

from __future__ import annotations

from lakehouse.silver.batch import process_batch
from lakehouse.silver.failures import InjectedFault, SilverConcurrentWriterError, SilverRunError
from lakehouse.silver.reporting import RunSummary, SilverBatchStats, describe_run
from lakehouse.silver.stream import bronze_target, run
from lakehouse.silver.tasks import RECHECK_PASSED, RECHECK_REASON

__all__ = ["RECHECK_PASSED", "RECHECK_REASON", "InjectedFault", "RunSummary", "SilverBatchStats",
           "SilverConcurrentWriterError", "SilverRunError",
           "bronze_target", "describe_run", "process_batch", "run"]
