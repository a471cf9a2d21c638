"""One of the two racing writers of ``test_two_writers``: one Spark session, then one layer run per command.

Run as ``python two_writers_worker.py RESULTS`` with the stack's LAKEHOUSE_* variables. It starts
its SparkSession once (a spark-submit per round would cost seconds of JVM start each), writes
``{"ready": true}`` to RESULTS, then reads commands from stdin, one a line: ``<layer> <round>
<delay_s>``. For each it sleeps ``delay_s`` (the test staggers the two writers to cover every
interleaving), runs the layer as the job would (``silver.job.run`` for the one configured exchange,
or ``gold.job.run``) and appends one JSON line to RESULTS: the round, the layer, ``status``
(``committed``, ``lost`` for a :class:`~lakehouse.errors.ConcurrentWriterError`, or ``error``),
the error message and the rows the run read and wrote. stdin closed: it stops Spark and exits.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _write(results: Path, record: dict[str, Any]) -> None:
    with results.open("a") as out:
        out.write(json.dumps(record) + "\n")


def _run(spark: Any, settings: Any, layer: str) -> tuple[int, int]:
    """(rows read, rows written) of one run of ``layer``."""
    from lakehouse.gold import job as gold_job
    from lakehouse.silver import job as silver_job

    if layer == "silver":
        summary = silver_job.run(spark, settings, settings.exchanges[0])
        return summary.read, sum(b.read for b in summary.batches if b.wrote_silver or b.wrote_dlq)
    stats = gold_job.run(spark, settings)
    return sum(s.rows_in for s in stats), sum(s.rows_written for s in stats)


def main(results: Path) -> int:
    from lakehouse.errors import ConcurrentWriterError
    from lakehouse.settings import load_settings
    from lakehouse.spark import session

    settings = load_settings()
    spark = session(settings, f"two-writers-{results.stem}")
    spark.range(1).collect()  # warm up before the first round
    _write(results, {"ready": True})
    try:
        for line in sys.stdin:
            layer, round_no, delay = line.split()
            time.sleep(float(delay))
            started = time.monotonic()
            record: dict[str, Any] = {"layer": layer, "round": int(round_no), "status": "committed", "message": "",
                                      "read": 0, "written": 0}
            try:
                record["read"], record["written"] = _run(spark, settings, layer)
            except ConcurrentWriterError as err:
                record.update(status="lost", message=str(err), error_type=type(err).__name__)
            except Exception as err:  # reported whole to the test, which fails on it
                record.update(status="error", message=f"{type(err).__name__}: {err}"[:4000],
                              traceback=traceback.format_exc()[-4000:])
            record["duration_s"] = round(time.monotonic() - started, 3)
            _write(results, record)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
