"""The Python worker daemon of the lakehouse's Spark jobs (``spark.python.daemon.module``).

PySpark starts one daemon per executor and forks a worker from it for each Python task. A worker
of a Bronze or Silver task imports pyarrow, pyiceberg's writer, fastavro and confluent-kafka,
about a CPU-second per worker and run. Importing them here, once, before the daemon starts
forking, hands every worker a process that has them already (copy-on-write). Then it is
PySpark's own daemon, unchanged.
"""

from __future__ import annotations

import importlib
import logging

# The task bodies and what they import lazily on their first batch.
PRELOAD = ("pyspark.worker", "lakehouse.bronze.tasks", "lakehouse.silver.tasks", "pyiceberg.io.pyarrow",
           "pyiceberg.table", "pyiceberg.io")


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import ``modules``; return those that could not be imported (workers then import them as before)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            logging.getLogger(__name__).warning("worker daemon could not preload %s: %s", name, err)
            missing.append(name)
    return missing


if __name__ == "__main__":
    preload()
    from pyspark.daemon import manager

    manager()
