"""
### Iceberg maintenance: compaction, manifests, snapshot expiry, orphan files (`LAKEHOUSE_MAINTENANCE_SCHEDULE`, hourly)

One Spark task per table, one after the other (a failed table does not stop the next), in the
`lakehouse_spark` pool. Each task runs Iceberg's own procedures on its table:

1. `rewrite_data_files` (bin-pack to the table's `write.target-file-size-bytes`) on partitions
   nothing writes any more: older than the current hour (Gold) or day (the other tables), with
   partial progress so a big table is compacted in bounded steps;
2. `rewrite_manifests`;
3. `expire_snapshots` older than `LAKEHOUSE_SNAPSHOT_RETENTION_HOURS`, keeping at least
   `LAKEHOUSE_SNAPSHOT_RETAIN_LAST`. Never a snapshot a downstream stream (Silver reading Bronze,
   Gold reading Silver) still needs, nor the newest one carrying Bronze's Kafka offsets, nor the
   commit of an in-flight Silver batch: the log says what was kept back and why;
4. `remove_orphan_files` older than `LAKEHOUSE_ORPHAN_MIN_AGE_HOURS` (measured on the real
   clock; the setting cannot be shorter than the longest task timeout plus an hour).

Compaction and manifest rewrites change no rows (streams skip their `replace` commits); expiry
and orphan removal only delete what no kept snapshot references.

**When it fails**
1. Open the failed task's log: each operation logs one line of what it did, the error is last.
2. See what it would do without changing anything: `lakehouse maintain --table <table> --dry-run`.
3. *Clear* the task (every operation is safe to repeat), or run `lakehouse maintain --table <table>`.
   `lakehouse airflow dags trigger iceberg_maintenance` starts a run now.
4. "expire ... skipped, position of stream ... unknown": a checkpoint could not be read; expiry of
   that table waits until it can (nothing is lost meanwhile, the table just keeps more snapshots).
"""

from __future__ import annotations

from airflow.sdk import DAG, chain

from lakehouse import names
from lakehouse.orchestration.dags import TAG, housekeeping_dag_kwargs, maintenance_task
from lakehouse.settings import load_settings
from lakehouse.tables import table_defs

settings = load_settings()

with DAG(
    dag_id=names.MAINTENANCE_DAG,
    description="Iceberg compaction, manifest rewrite, snapshot expiry and orphan removal, per table",
    doc_md=__doc__,
    **housekeeping_dag_kwargs(settings, settings.maintenance_schedule, "maintenance"),
    tags=[TAG, "maintenance"],
) as dag:
    chain(*(maintenance_task(settings, d.name) for d in table_defs(settings)))
