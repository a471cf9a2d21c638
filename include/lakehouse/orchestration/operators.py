"""Operators the lakehouse DAGs use: a Spark submit built from ``lakehouse.spark.submit_spec`` and a
``lakehouse`` CLI runner for the manual operations.

Both resolve everything from the settings when the task *runs*, on the worker: DAG parsing stays
free of jar lookups, and secrets in the Spark configuration (catalog password, S3 keys) never end
up in the serialized DAG stored in Airflow's database.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from lakehouse import names
from lakehouse.settings import load_settings
from lakehouse.spark import spark_submit_binary, submit_spec


class LakehouseSparkSubmitOperator(SparkSubmitOperator):
    """Runs one layer job (``bronze``/``silver``/``gold``) exactly as ``lakehouse run`` does.

    The master comes from the Airflow connection (``spark_default``: ``local[*]`` embedded, a
    ``spark://`` URL in production); application, arguments, Spark conf, jars and environment come
    from :func:`lakehouse.spark.submit_spec`, the one place both paths build a spark-submit from.
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "job_args")
    ui_color = "#e8f0fe"

    def __init__(self, *, job: str, job_args: Sequence[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("conn_id", names.SPARK_CONN_ID)
        kwargs.setdefault("spark_binary", spark_submit_binary())
        kwargs.setdefault("name", "-".join(["lakehouse", job, *[a for a in job_args if not a.startswith("-")]]))
        super().__init__(**kwargs)
        self.job = job
        self.job_args = list(job_args)

    def execute(self, context: Any) -> None:
        spec = submit_spec(load_settings(), self.job, list(self.job_args), name=self.name)
        self.application = spec.application
        self.application_args = spec.application_args
        self.conf = dict(spec.conf)
        self.jars = ",".join(spec.jars)
        self.env_vars = {**spec.env, **(self.env_vars or {})}
        self.log.info("spark-submit of job %s %s (settings master %s; connection %s decides)",
                      self.job, " ".join(self.job_args), spec.master, self._conn_id)
        super().execute(context)


class LakehouseCommandOperator(BaseOperator):
    """Runs ``lakehouse <arguments>`` (no shell: rendered params are argv entries, never code).

    Output streams into the task log; a non-zero exit fails the task. On kill (timeout, mark
    failed) the whole process group of the command is terminated.
    """

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#fef7e0"

    def __init__(self, *, arguments: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arguments = list(arguments)
        self._proc: subprocess.Popen[str] | None = None

    def execute(self, context: Any) -> None:
        argv = [sys.executable, "-m", "lakehouse", *[str(a) for a in self.arguments]]
        self.log.info("running: %s", shlex.join(argv))
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.log.info("%s", line.rstrip())
        code = self._proc.wait()
        if code != 0:
            raise AirflowException(f"'lakehouse {shlex.join(self.arguments)}' exited with code {code}")

    def on_kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
