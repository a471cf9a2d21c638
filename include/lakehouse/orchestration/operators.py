"""Operators the lakehouse DAGs use: a Spark submit built from ``lakehouse.spark.submit_spec`` and a
``lakehouse`` CLI runner for the manual operations.

Both resolve everything from the settings when the task *runs*, on the worker: DAG parsing stays
free of jar lookups, and secrets in the Spark configuration (catalog password, S3 keys) never end
up in the serialized DAG stored in Airflow's database.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from lakehouse import names, runreport
from lakehouse.orchestration import pending
from lakehouse.settings import Settings, load_settings
from lakehouse.spark import spark_submit_binary, submit_spec


class LakehouseSparkSubmitOperator(SparkSubmitOperator):
    """Runs one layer job (``bronze``/``silver``/``gold``) exactly as ``lakehouse run`` does.

    The master comes from the Airflow connection (``spark_default``: ``local[*]`` embedded, a
    ``spark://`` URL in production); application, arguments, Spark conf, jars and environment come
    from :func:`lakehouse.spark.submit_spec`, the one place both paths build a spark-submit from.
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "job_args")
    ui_color = "#e8f0fe"

    def __init__(self, *, job: str, job_args: Sequence[str] = (), check_pending: bool = True, **kwargs: Any) -> None:
        """``check_pending``: skip the run when nothing upstream is new (layer jobs); maintenance
        jobs have no upstream and always run."""
        kwargs.setdefault("conn_id", names.SPARK_CONN_ID)
        kwargs.setdefault("spark_binary", spark_submit_binary())
        kwargs.setdefault("name", "-".join(["lakehouse", job, *[a for a in job_args if not a.startswith("-")]]))
        super().__init__(**kwargs)
        self.job = job
        self.job_args = list(job_args)
        self.check_pending = check_pending

    def execute(self, context: Any) -> dict[str, Any]:
        settings = load_settings()
        if self.check_pending:
            waiting = pending.pending_work(settings, self.job)
            if not waiting:
                # Nothing upstream moved since the last committed run: a Spark application would start,
                # find nothing and exit. Skipped tasks emit no asset events, so nothing downstream wakes.
                raise AirflowSkipException(f"{self.job}: nothing new upstream since the last run")
            self.log.info("%s: new upstream data for %s", self.job,
                          ", ".join(f"{k} ({v})" for k, v in waiting.items()))
        # A layer DAG has one task per job; the maintenance DAG runs the job once per table (one report each).
        report_path = report_file(settings, self.job if self.check_pending else f"{self.job}/{self.task_id}", context)
        job_args = [*self.job_args, *self._run_flags(context)]
        spec = submit_spec(settings, self.job, [*job_args, "--report", str(report_path)], name=self.name)
        self.application = spec.application
        self.application_args = spec.application_args
        self.conf = dict(spec.conf)
        self.jars = ",".join(spec.jars)
        self.properties_file = spec.properties_file  # the credentials: a file, not --conf arguments
        submitted = time.time()
        self.env_vars = {**spec.env, **(self.env_vars or {}), runreport.SUBMITTED_AT_ENV: f"{submitted:.6f}"}
        self.log.info("spark-submit of job %s %s (settings master %s; connection %s decides)",
                      self.job, " ".join(job_args), spec.master, self._conn_id)
        self._hook = None  # built from this execution's arguments (the report path is new each time)
        try:
            super().execute(context)
        except AirflowException as err:
            report = finish_report(report_path, context, submitted)
            failed = [name for name, o in (report or {}).get("exchanges", {}).items() if o.get("status") == "failed"]
            if failed:
                raise AirflowException(f"{self.job} failed for {', '.join(failed)}: "
                                       + "; ".join(report["exchanges"][n]["error"] for n in failed)) from err
            raise
        report = finish_report(report_path, context, submitted) or {}
        self._log_outcome(report)
        self._annotate_assets(settings, report, context)
        return summary(report)

    def _run_flags(self, context: Any) -> list[str]:
        """This DAG run's one-time decisions: ``accept_data_loss`` of a manual Bronze run.

        Only a manual run can accept a loss (the scheduled ones always take the param's default,
        false), and it accepts what that run finds, nothing after it.
        """
        params = context.get("params") if hasattr(context, "get") else None
        if self.job != "bronze" or not params or params.get("accept_data_loss") is not True:
            return []
        dag_run = context.get("dag_run")
        run_type = str(getattr(getattr(dag_run, "run_type", None), "value", getattr(dag_run, "run_type", "")))
        if run_type != "manual":
            raise AirflowException(f"accept_data_loss is accepted from a manual run only, not a {run_type} run")
        self.log.warning("this run accepts the data loss it finds (param accept_data_loss): recorded in %s",
                         names.AUDIT_TABLE)
        return ["--accept-data-loss"]

    def _log_outcome(self, report: dict[str, Any]) -> None:
        for name, outcome in report.get("exchanges", {}).items():
            self.log.info("%s %s: %s, %s records", self.job, name, outcome.get("status"), outcome.get("records"))
        self.log.info("%s phases (s): %s", self.job, report.get("phases"))

    def _annotate_assets(self, settings: Settings, report: dict[str, Any], context: Any) -> None:
        """Per-exchange progress on the asset events of this run (the Assets view of the UI)."""
        events = context.get("outlet_events") if hasattr(context, "get") else None
        if events is None:
            return
        owner = {names.qualified(settings, table(e)): e for e in settings.exchanges
                 for table in (names.bronze_table, names.silver_table)}
        for outlet in self.outlets or []:
            exchange = owner.get(outlet.name)
            outcome = report.get("exchanges", {}).get(exchange or "", {}) if exchange else {}
            extra = {"layer": self.job, **({"exchange": exchange, "status": outcome.get("status"),
                                            "records": outcome.get("records")} if outcome else {})}
            events[outlet].extra.update(extra)


def report_file(settings: Settings, layer: str, context: Any) -> Path:
    """Where this task try's run report goes (one file per DAG run and try)."""
    ti = context.get("ti") if hasattr(context, "get") else None
    run_id = str(getattr(ti, "run_id", "") or f"manual-{time.time_ns()}")
    attempt = getattr(ti, "try_number", 0) or 0
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return names.run_report_dir(settings, layer) / f"{safe}.try{attempt}.json"


def finish_report(path: Path, context: Any, submitted: float) -> dict[str, Any] | None:
    """Add the Airflow side to the job's report: hand-off (DAG run queued -> spark-submit started:
    scheduling, executor, task start, the pending-work check) and exit (job finished -> spark-submit
    exited). Returns the report (None if the job wrote none)."""
    report = runreport.read(path)
    if report is None:
        return None
    now = time.time()
    phases = report.setdefault("phases", {})
    dag_run = context.get("dag_run") if hasattr(context, "get") else None
    queued = getattr(dag_run, "queued_at", None) or getattr(dag_run, "start_date", None)
    if isinstance(queued, dt.datetime):
        phases["handoff"] = round(max(0.0, submitted - queued.timestamp()), 4)
        report["queued_at"] = queued.timestamp()
    if report.get("finished_at"):
        phases["exit"] = round(max(0.0, now - float(report["finished_at"])), 4)
    report["spark_submit_at"], report["task_ended_at"] = submitted, now
    report["dag_run_id"] = str(getattr(dag_run, "run_id", "") or "")
    tmp = path.with_name(f".{path.name}.airflow")
    tmp.write_text(json.dumps(report, separators=(",", ":")))
    tmp.replace(path)
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The task's XCom: per exchange status and records, and the run's phases."""
    return {"exchanges": {name: {"status": o.get("status"), "records": o.get("records"), "error": o.get("error")}
                          for name, o in report.get("exchanges", {}).items()},
            "phases": report.get("phases", {})}


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
