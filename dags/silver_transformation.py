"""
### Silver transformation: Bronze -> `market_data.silver_<exchange>_trades` + DLQ, every minute and on new Bronze data

One task, one Spark application for every configured exchange (per-exchange status and records in
the task's XCom, log and asset events). It runs every minute and as soon as a Bronze table gets
new data (asset events), and is skipped before Spark starts when Bronze has nothing new. Each run reads the Bronze rows committed since its checkpoint
(Iceberg streaming read, `availableNow`), decodes the Confluent-framed Avro, validates every
trade, and writes valid rows to Silver and every failing row, with `error_type` and
`error_reason`, to `market_data.silver_dlq_trades`. Nothing is dropped silently.

**Deadline:** the run must finish within `LAKEHOUSE_DEADLINE_SILVER_S` (default 120 s) of being
queued, otherwise a `deadline_missed` alert goes out.

**When it fails**
1. Open the failed task's log (Spark driver output).
2. Schema registry errors: check `LAKEHOUSE_SCHEMA_REGISTRY_URL` / `lakehouse status`.
3. A spike of DLQ rows is not a failure: inspect them with
   `lakehouse sql "select error_type, count(*) from market_data.silver_dlq_trades group by 1"`,
   fix the cause, then trigger the `dlq_replay` DAG.
4. *Clear* the task to retry: batches are idempotent. `lakehouse run silver --exchange <x>` runs
   the same job from a shell; the `silver_replay` DAG rebuilds a time range.
"""

from __future__ import annotations

from airflow.sdk import DAG

from lakehouse import names
from lakehouse.orchestration.dags import START_DATE, TAG, layer_deadline, layer_schedule, spark_job_task, task_defaults
from lakehouse.settings import load_settings

settings = load_settings()

with DAG(
    dag_id=names.SILVER_DAG,
    description="Bronze -> Silver (+ DLQ), one Spark run per exchange per minute",
    doc_md=__doc__,
    schedule=layer_schedule(settings, "silver"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(settings, "silver"),
    deadline=layer_deadline(settings, "silver"),
    tags=[TAG, "silver", "layer"],
) as dag:
    spark_job_task(settings, "silver")
