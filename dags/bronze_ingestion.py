"""
### Bronze ingestion: Kafka -> `market_data.bronze_<exchange>_trades`, every minute

One task, one Spark application for every configured exchange (`LAKEHOUSE_EXCHANGES`); the
task's XCom, log and asset events show each exchange's status and records, and a failure names
the exchange. Each run reads, per exchange, the Kafka records that had arrived when it planned
(end offsets fixed at planning, whatever is produced meanwhile) since the last run (admission cap `LAKEHOUSE_BRONZE_MAX_RECORDS_PER_RUN`) and appends the
raw bytes with their Kafka metadata. The consumed offsets are committed in the same Iceberg commit
as the rows: a killed or retried run neither loses nor duplicates a record.

**Deadline:** the run must finish within `LAKEHOUSE_DEADLINE_BRONZE_S` (default 90 s) of being
queued, otherwise a `deadline_missed` alert goes out (alert log, StatsD `lakehouse.alerts`, and
the `lakehouse_alerts` webhook when that connection exists).

**When it fails**
1. Open the failed task's log: the Spark driver output is in it.
2. `lakehouse status` shows whether the broker is reachable and the topic's end offsets.
3. "deleted by retention" or "topic was recreated" errors mean unread Kafka data is gone: it is
   recorded in `market_data.pipeline_audit`. Accept that loss deliberately, once: *Trigger DAG*
   with `{"accept_data_loss": true}` (or `airflow dags trigger bronze_ingestion -c
   '{"accept_data_loss": true}'`, or `lakehouse run bronze --exchange <x> --accept-data-loss`).
   That run records the accepted offset ranges; later runs fail on a new loss again. After a
   restart of the embedded broker (topics in memory) Bronze starts the new topics from offset 0
   by itself and records how many records never reached it (`lakehouse status`).
4. Fix the cause and *Clear* the task; `lakehouse run bronze --exchange <x>` runs the same job
   from a shell.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from lakehouse import names
from lakehouse.orchestration.dags import START_DATE, TAG, layer_deadline, layer_schedule, spark_job_task, task_defaults
from lakehouse.settings import load_settings

settings = load_settings()

with DAG(
    dag_id=names.BRONZE_DAG,
    description="Kafka -> Bronze, one Spark run per exchange per minute",
    doc_md=__doc__,
    schedule=layer_schedule(settings, "bronze"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(settings, "bronze"),
    deadline=layer_deadline(settings, "bronze"),
    tags=[TAG, "bronze", "layer"],
    params={"accept_data_loss": Param(False, type="boolean",
                                      description="Manual runs only: accept the data loss this run finds "
                                                  "(recorded in market_data.pipeline_audit), once.")},
) as dag:
    spark_job_task(settings, "bronze")
