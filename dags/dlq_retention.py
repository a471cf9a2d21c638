"""
### DLQ retention (daily): dead letters 30 days hot, then archived, purged at 90 days

Runs `lakehouse dlq retention` (one Spark application, the same as `lakehouse dlq archive` followed
by `lakehouse dlq purge`):

1. **Archive:** rows of `market_data.silver_dlq_trades` dated (`dlq_date`, UTC) more than
   `LAKEHOUSE_DLQ_ARCHIVE_DAYS` (30) days ago are copied to `market_data.silver_dlq_trades_archive`
   (same columns plus `archived_at`, monthly partitions, harder zstd) unless already there, then
   their whole `dlq_date` partitions are dropped from the DLQ (metadata-only).
2. **Purge:** archive rows dated more than `LAKEHOUSE_DLQ_PURGE_DAYS` (90) days ago are deleted
   (whole months metadata-only, the cutoff's month by rewriting its files), and the snapshots still
   referencing removed files are expired so the files are deleted from storage.

Each run writes one `pipeline_audit` row (event `dlq_retention`): rows archived, rows purged,
files and bytes freed. A second run on the same day changes nothing. Trigger it by hand with
`lakehouse airflow dags trigger dlq_retention`; see what a run would do with
`lakehouse dlq retention --dry-run` (add `--as-of 2026-06-01` to act as of another date).

**When it fails:** read the task log. The run is idempotent: a run killed between the archive
insert and the DLQ delete leaves rows in both tables and the next run only deletes them, so
*Clear* the task once the cause (usually a busy catalog) is gone. Do not run `dlq replay` at the
same time.
"""

from __future__ import annotations

from airflow.sdk import DAG

from lakehouse import names
from lakehouse.orchestration.dags import TAG, command_task, housekeeping_dag_kwargs
from lakehouse.settings import load_settings

settings = load_settings()

with DAG(
    dag_id=names.DLQ_RETENTION_DAG,
    description="Daily: archive dead letters after 30 days, purge them (files included) after 90",
    doc_md=__doc__,
    **housekeeping_dag_kwargs(settings, settings.dlq_retention_schedule, "silver"),
    tags=[TAG, "dlq", "maintenance"],
) as dag:
    command_task(
        "retention",
        ["dlq", "retention"],
        tables=[names.DLQ_TABLE, names.DLQ_ARCHIVE_TABLE, names.AUDIT_TABLE],
        settings=settings,
        doc_md="Runs `lakehouse dlq retention`: archive, then purge, one audit row. Idempotent; *Clear* to retry.",
    )
