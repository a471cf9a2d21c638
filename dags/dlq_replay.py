"""
### DLQ replay (manual): re-validate dead-letter rows of one error type

Runs `lakehouse dlq replay --error-type <error_type>`, the same operation the CLI offers: after the
cause of a class of rejections is fixed (a schema registered late, a validation rule corrected),
the dead-letter rows of that `error_type` go through Silver validation again; rows that now pass
land in Silver, the rest stay in the DLQ. Trigger it from the UI or a shell:

```
lakehouse airflow dags trigger dlq_replay --conf '{"error_type": "unknown_schema_id"}'
```

List the error types present with
`lakehouse sql "select error_type, count(*) from market_data.silver_dlq_trades group by 1"`.

**When it fails:** read the task log, fix the cause and *Clear* the task.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from lakehouse import names
from lakehouse.orchestration.dags import ERROR_TYPE_PATTERN, TAG, command_task, manual_dag_kwargs
from lakehouse.settings import load_settings

settings = load_settings()

with DAG(
    dag_id=names.DLQ_REPLAY_DAG,
    description="Manual: replay dead-letter rows of one error type through Silver validation",
    doc_md=__doc__,
    **manual_dag_kwargs(settings),
    # Triggered by hand (README, UI): a paused DAG would leave the run queued forever, and the
    # Airflow home pauses new DAGs at creation.
    is_paused_upon_creation=False,
    tags=[TAG, "dlq", "manual", "replay"],
    params={
        "error_type": Param(type="string", pattern=ERROR_TYPE_PATTERN,
                            description="error_type of the dead-letter rows to replay."),
    },
) as dag:
    command_task(
        "replay_dlq",
        ["dlq", "replay", "--error-type", "{{ params.error_type }}"],
        tables=[*(names.silver_table(ex) for ex in settings.exchanges), names.DLQ_TABLE],
        settings=settings,
        doc_md="Runs `lakehouse dlq replay` with this run's `error_type` param.",
    )
