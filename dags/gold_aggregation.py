"""
### Gold aggregation: Silver (all exchanges) -> `market_data.gold_crypto_trades`, every minute

One task. It runs every minute and as soon as a Silver table gets new data (asset events), and is
skipped before Spark starts when Silver has nothing new. Each run reads the Silver rows committed since its checkpoint from every exchange,
deduplicates by `message_id` (the same trade seen twice, e.g. after a websocket reconnect, lands
once), and appends to the hourly-partitioned Gold table and its marts.

**Deadline:** the run must finish within `LAKEHOUSE_DEADLINE_GOLD_S` (default 180 s) of being
queued, otherwise a `deadline_missed` alert goes out.

**When it fails**
1. Open the failed task's log (Spark driver output).
2. Check that Silver is moving: `lakehouse status` (row counts and last commits per table).
3. *Clear* the task to retry (batches are idempotent), or run the same job from a shell with
   `lakehouse run gold`. `lakehouse airflow dags trigger gold_aggregation` starts a run now.
"""

from __future__ import annotations

from airflow.sdk import DAG

from lakehouse import names
from lakehouse.orchestration.dags import START_DATE, TAG, layer_deadline, layer_schedule, spark_job_task, task_defaults
from lakehouse.settings import load_settings

settings = load_settings()

with DAG(
    dag_id=names.GOLD_DAG,
    description="Silver -> Gold: union of exchanges, deduplicated, every minute",
    doc_md=__doc__,
    schedule=layer_schedule(settings, "gold"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(settings, "gold"),
    deadline=layer_deadline(settings, "gold"),
    tags=[TAG, "gold", "layer"],
) as dag:
    spark_job_task(settings, "gold")
