"""Fault injection for the kill tests: SIGKILL a job at a named point of its commit protocol.

The points are settings (``LAKEHOUSE_BRONZE_CRASH_POINT``, ``LAKEHOUSE_GOLD_CRASH_POINT``), off
by default. A kill takes the spark-submit JVM with it, as an out-of-memory kill or a lost node
would, so nothing gets to clean up.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import psutil

log = logging.getLogger(__name__)


def kill_job(point: str) -> None:
    """SIGKILL this driver and the spark-submit JVM that started it (if any); never returns."""
    log.warning("fault injection: SIGKILL at %s", point, extra={"crash_point": point})
    for handler in logging.getLogger().handlers:
        handler.flush()
    time.sleep(0.5)  # let spark-submit's output forwarder print the line before its JVM dies too
    parent = psutil.Process().parent()
    try:
        if parent is not None and any("SparkSubmit" in part for part in parent.cmdline()):
            os.kill(parent.pid, signal.SIGKILL)
    except psutil.Error:  # the parent is already gone: killing this process is all that is left
        pass
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["kill_job"]
