"""The floor of a layer run's fixed cost: a Spark application that does nothing but start.

The sustained benchmark ``spark-submit``s this file with exactly the configuration, jars and
environment of a layer job (``lakehouse.spark.submit_spec``), so its wall and CPU time are what
every layer run pays before and after its work (JVM, Python driver, session, catalog, stop)
without Airflow, the operator or the job's own planning around it.

Usage (by the benchmark): ``spark-submit ... spark_floor_app.py OUT.json``; it writes the epoch
seconds at which the Python driver started, the session (with the catalog) was ready, and the
session was stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    started = time.time()
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.getOrCreate()
    # A layer run's session is "ready" once it can reach the catalog: list its namespaces.
    catalog = spark.conf.get("spark.sql.defaultCatalog")
    spark.sql(f"SHOW NAMESPACES IN {catalog}").collect()
    ready = time.time()
    spark.stop()
    stopped = time.time()
    if len(argv) > 1:
        Path(argv[1]).write_text(json.dumps({"python_started_at": started, "session_ready_at": ready,
                                             "stopped_at": stopped}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
