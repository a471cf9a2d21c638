"""Building blocks of the lakehouse DAGs: task policy, deadlines, assets and task factories.

DAG files in ``dags/`` only declare: they read the settings (environment and config file only, no
network), then combine these helpers. Everything a policy test checks (owner, retries, timeout,
pool, deadline, outlets) is decided here once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import (
    Asset,
    AssetAny,
    AssetOrTimeSchedule,
    AsyncCallback,
    CronTriggerTimetable,
    DeadlineAlert,
    DeadlineReference,
)

from lakehouse import names
from lakehouse.orchestration.alerts import DEADLINE_MISSED
from lakehouse.orchestration.notify import LakehouseNotifier, failure_notifier
from lakehouse.orchestration.operators import LakehouseCommandOperator, LakehouseSparkSubmitOperator
from lakehouse.settings import Settings

OWNER = "lakehouse"
EVERY_MINUTE = "* * * * *"
# Any fixed past date: with catchup off only the latest interval is ever scheduled.
START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TAG = "lakehouse"
MONITOR_TIMEOUT_S = 50  # a monitor run must end before the next minute's starts
# Params of the manual DAGs end up as argv entries of the ``lakehouse`` CLI: both patterns start
# with a digit or letter, so a value can never be read as an option.
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$"
ERROR_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$"


def deadline_seconds(settings: Settings, layer: str) -> int:
    """The layer's deadline after its run was queued (LAKEHOUSE_DEADLINE_<LAYER>_S)."""
    try:
        return int(getattr(settings, f"deadline_{layer}_s"))
    except AttributeError as err:
        raise ValueError(f"no deadline setting for layer {layer!r}; expected one of {names.LAYERS}") from err


def layer_deadline(settings: Settings, layer: str) -> DeadlineAlert:
    """Deadline alert: the run must finish within the layer's interval after it is queued.

    The callback runs in the triggerer (``AsyncCallback``, the path Airflow recommends, independent
    of the executor) through the same notifier as task failures.
    """
    seconds = deadline_seconds(settings, layer)
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(seconds=seconds),
        callback=AsyncCallback(LakehouseNotifier, kwargs={"event": DEADLINE_MISSED, "layer": layer,
                                                          "deadline_s": seconds}),
        name=f"{layer} run finished within {seconds}s of being queued",
    )


def task_defaults(settings: Settings, layer: str | None, timeout_s: int | None = None) -> dict[str, Any]:
    """``default_args`` of every lakehouse task: owner, retries with exponential backoff, timeout,
    the Spark pool, and the failure alert."""
    return {
        "owner": OWNER,
        "retries": settings.airflow_task_retries,
        "retry_delay": dt.timedelta(seconds=settings.airflow_retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(seconds=settings.airflow_max_retry_delay_s),
        "execution_timeout": dt.timedelta(seconds=timeout_s or settings.airflow_task_timeout_s),
        "pool": names.SPARK_POOL,
        "on_failure_callback": failure_notifier(layer),
    }


def manual_dag_kwargs(settings: Settings) -> dict[str, Any]:
    """What every manually triggered replay DAG shares: no schedule, one run at a time, the replay timeout."""
    return {
        "schedule": None,
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "default_args": task_defaults(settings, "silver", timeout_s=settings.airflow_replay_timeout_s),
    }


def housekeeping_dag_kwargs(settings: Settings, schedule: str, layer: str) -> dict[str, Any]:
    """What the maintenance DAGs share: their own schedule, no catch-up, one run at a time, the replay
    timeout, and unpaused at creation (upkeep must happen without an operator, under `make run` too)."""
    return {
        "schedule": schedule,
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "is_paused_upon_creation": False,
        "default_args": task_defaults(settings, layer, timeout_s=settings.airflow_replay_timeout_s),
    }


def monitor_dag_kwargs(settings: Settings) -> dict[str, Any]:
    """The pipeline monitor: every minute, unpaused at creation, never queued behind Spark (its own
    default pool), no retries (the next minute is the retry) and no failure alert (a monitor that
    cannot read Kafka would alert every minute; Prometheus watches for its figures going absent)."""
    return {
        "schedule": settings.monitor_schedule,
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": 1,
        "is_paused_upon_creation": False,
        "dagrun_timeout": dt.timedelta(seconds=MONITOR_TIMEOUT_S + 10),
        "default_args": {"owner": OWNER, "retries": 0,
                         "execution_timeout": dt.timedelta(seconds=MONITOR_TIMEOUT_S)},
    }


def table_asset(settings: Settings, table: str) -> Asset:
    """The Airflow asset of an Iceberg table (name = catalog-qualified table, URI from lakehouse.names)."""
    return Asset(name=names.qualified(settings, table), uri=names.asset_uri(settings, table), group="lakehouse")


def layer_tables(settings: Settings, layer: str) -> list[str]:
    """Tables a layer job writes (every exchange's): its lineage in the Airflow UI."""
    if layer == "bronze":
        return [*(names.bronze_table(e) for e in settings.exchanges), names.AUDIT_TABLE]
    if layer == "silver":
        return [*(names.silver_table(e) for e in settings.exchanges), names.DLQ_TABLE]
    if layer == "gold":
        return [names.GOLD_TABLE, names.OHLCV_TABLE]
    raise ValueError(f"unknown layer {layer!r}; expected one of {names.LAYERS}")


# The tables whose new data starts a layer's run before its minute is up (Bronze has only the clock).
UPSTREAM = {"silver": names.bronze_table, "gold": names.silver_table}


def layer_schedule(settings: Settings, layer: str) -> str | AssetOrTimeSchedule:
    """Bronze runs every minute. Silver and Gold run every minute and also as soon as any exchange's
    upstream table has new data (Airflow 3 ``AssetOrTimeSchedule``), so a trade does not wait for
    the next minute at each layer. A run that finds nothing new is skipped before Spark starts
    (:mod:`lakehouse.orchestration.pending`)."""
    if layer == "bronze":
        return EVERY_MINUTE
    if layer not in UPSTREAM:
        raise ValueError(f"unknown layer {layer!r}; expected one of {names.LAYERS}")
    upstream = [table_asset(settings, UPSTREAM[layer](e)) for e in settings.exchanges]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(EVERY_MINUTE, timezone="UTC"),
                               assets=AssetAny(*upstream))


_TASK_DOC = """\
Runs the **{layer}** Spark job for every exchange ({exchanges}) in one Spark application through
`spark-submit` (`spark_default` connection, pool `{pool}`), built by `lakehouse.spark.submit_spec`;
the same command as `lakehouse run {layer}` from a shell. Skipped, before Spark starts, when
nothing upstream is new.

Writes: {tables}.

Per exchange: the task log ends with each exchange's status and record count, the XCom
`return_value` holds them with the run's phase timings, and each table's asset event carries its
exchange's status and records. One exchange failing does not stop the others; the task then fails
naming it.

On failure: read this task's log (the Spark driver output is in it), fix the cause, then
*Clear* the task; runs are idempotent, so a retry neither loses nor duplicates rows.
"""


def spark_job_task(settings: Settings, layer: str) -> LakehouseSparkSubmitOperator:
    """The Spark task of a layer DAG: one application for every exchange."""
    tables = layer_tables(settings, layer)
    return LakehouseSparkSubmitOperator(
        task_id=layer,
        job=layer,
        outlets=[table_asset(settings, t) for t in tables],
        doc_md=_TASK_DOC.format(layer=layer, exchanges=", ".join(settings.exchanges), pool=names.SPARK_POOL,
                                tables=", ".join(f"`{t}`" for t in tables)),
    )


def command_task(task_id: str, arguments: list[str], tables: list[str], settings: Settings,
                 doc_md: str) -> LakehouseCommandOperator:
    """A task running ``lakehouse <arguments>`` (manual operations such as replays)."""
    return LakehouseCommandOperator(task_id=task_id, arguments=arguments, doc_md=doc_md,
                                    outlets=[table_asset(settings, t) for t in tables])


_MAINTENANCE_TASK_DOC = """\
Iceberg maintenance of `{table}` in one Spark application (`spark_default` connection, pool
`{pool}`): compaction of closed partitions, manifest rewrite, snapshot expiry, orphan file removal;
the same as `lakehouse maintain --table {table}` from a shell. Never skipped (no pending-work check).

The task log holds one structured line per operation: files rewritten, snapshots expired, snapshots
kept back for a downstream stream (and why), orphan files deleted.

On failure: read the log, fix the cause, *Clear* the task; every operation is safe to repeat.
"""


def maintenance_task(settings: Settings, table: str) -> LakehouseSparkSubmitOperator:
    """The maintenance task of one table (``lakehouse.maintenance`` through spark-submit).

    Its timeout is the longest validated one (``orphan_min_age_hours`` must exceed it), and it
    runs whatever happened to the task before it (``all_done``): one table's failure does not
    leave the others unmaintained.
    """
    return LakehouseSparkSubmitOperator(
        task_id=table.rpartition(".")[2],
        job="maintenance",
        job_args=["--table", table],
        check_pending=False,
        trigger_rule="all_done",
        execution_timeout=dt.timedelta(seconds=settings.airflow_replay_timeout_s),
        doc_md=_MAINTENANCE_TASK_DOC.format(table=table, pool=names.SPARK_POOL),
    )
