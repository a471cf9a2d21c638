"""
### Pipeline monitor (every minute): lag, freshness, dead-letter rate, jobs and producers down

Measures, per exchange and layer, from metadata only (no Spark, never waits for the Spark pool):

| figure | what it says |
|---|---|
| `kafka_lag_records`, `kafka_lag_seconds` | records in Kafka not yet in Bronze, and the age of the oldest |
| `commit_age_seconds`, `event_age_seconds` | per table: since its last commit, and since its newest event |
| `end_to_end_seconds` | age of the oldest trade produced but not yet in Gold |
| `dlq_rate` | dead letters over all rows of the last 15 minutes, per error type and `all` |
| `stalled_seconds` | how long a layer has made no progress while its input has new records |
| `producer_idle_seconds` | since the newest record of the exchange's topic |

Every figure goes to StatsD (`lakehouse.monitor.<figure>`, labels as tags) on every run, whether
the layer jobs run or not. The alert rules (`lakehouse.monitor.rules`, thresholds from
`LAKEHOUSE_ALERT_*`) notify through the alert log, StatsD and the `lakehouse_alerts` webhook once
when an alert starts firing or changes severity, every `LAKEHOUSE_ALERT_REPEAT_MINUTES` while it
fires, and once when it resolves. The same figures from a shell: `lakehouse health`.

**When it fails:** its log names what could not be measured (Kafka down, a table missing); the
rest was still published and alerts on the unmeasured figures stay as they were. The next minute's
run is the retry.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from lakehouse import names
from lakehouse.orchestration.dags import TAG, monitor_dag_kwargs
from lakehouse.settings import load_settings

settings = load_settings()


@dag(dag_id=names.MONITOR_DAG, description="Every minute: lag, freshness and dead-letter figures to StatsD; alerts",
     doc_md=__doc__, tags=[TAG, "monitoring"], **monitor_dag_kwargs(settings))
def pipeline_monitor() -> None:
    @task(doc_md="Measures every figure, sends it to StatsD, moves the alert state and notifies its changes.")
    def measure() -> dict[str, float]:
        from lakehouse.monitor.run import run_monitor
        from lakehouse.orchestration.notify import resolve_webhook

        current = load_settings()
        result = run_monitor(current, webhook=resolve_webhook(current))
        return {"figures": len(result.health.figures), "firing": sum(a.firing for a in result.alerts.values()),
                "notifications": len(result.notifications)}

    measure()


dag = pipeline_monitor()
