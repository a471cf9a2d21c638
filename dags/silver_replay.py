"""
### Silver replay (manual): rebuild Silver for one exchange and a time range from Bronze

Runs `lakehouse replay silver --exchange <exchange> --from <from> --to <to>`, the same operation
the CLI offers: Bronze keeps the raw Kafka bytes, so Silver can be rebuilt after a validation or
decoding fix. Start it from the UI (*Trigger DAG w/ config*) or a shell:

```
lakehouse airflow dags trigger silver_replay \\
  --conf '{"exchange": "binance", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}'
```

`from`/`to` are ISO-8601 timestamps (UTC when no offset is given). The task uses the Spark pool,
so it waits for a free slot instead of starving the minute DAGs.

**When it fails:** read the task log (the command's output is in it), fix the cause and *Clear*
the task; the replay is idempotent for the same range.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from lakehouse import names
from lakehouse.orchestration.dags import TAG, TIMESTAMP_PATTERN, command_task, manual_dag_kwargs
from lakehouse.settings import load_settings

settings = load_settings()

with DAG(
    dag_id=names.SILVER_REPLAY_DAG,
    description="Manual: rebuild Silver from Bronze for one exchange and time range",
    doc_md=__doc__,
    **manual_dag_kwargs(settings),
    # Triggered by hand (README, UI): a paused DAG would leave the run queued forever, and the
    # Airflow home pauses new DAGs at creation.
    is_paused_upon_creation=False,
    tags=[TAG, "silver", "manual", "replay"],
    params={
        "exchange": Param(settings.exchanges[0], type="string", enum=list(settings.exchanges),
                          description="Exchange whose Silver table is rebuilt."),
        "from": Param(type="string", pattern=TIMESTAMP_PATTERN, description="Start of the range (ISO-8601)."),
        "to": Param(type="string", pattern=TIMESTAMP_PATTERN, description="End of the range (ISO-8601)."),
    },
) as dag:
    command_task(
        "replay_silver",
        ["replay", "silver", "--exchange", "{{ params.exchange }}",
         "--from", "{{ params['from'] }}", "--to", "{{ params['to'] }}"],
        tables=[*(names.silver_table(ex) for ex in settings.exchanges), names.DLQ_TABLE],
        settings=settings,
        doc_md="Runs `lakehouse replay silver` with this run's `exchange`, `from` and `to` params.",
    )
