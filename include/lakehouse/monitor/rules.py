"""The alert rules, as data: which figure each watches, its warning and critical thresholds, and
how long a threshold must hold before the alert fires.

One list serves every consumer: the ``pipeline_monitor`` DAG and ``lakehouse health`` evaluate it
(:mod:`lakehouse.monitor.alerting`), and the Prometheus rules under ``monitoring/`` mirror it (a
test compares both). Defaults are the seeds' thresholds; settings override them
(``LAKEHOUSE_ALERT_*``).

Figures are the gauges of :mod:`lakehouse.monitor.figures`, sent to StatsD as
``<prefix>.monitor.<figure>`` with their labels as tags, so Prometheus sees
``lakehouse_monitor_<figure>{...}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lakehouse.settings import Settings

WARNING = "warning"
CRITICAL = "critical"
SEVERITIES = (WARNING, CRITICAL)

# The figures (gauge names) the rules watch; figures.py computes them.
KAFKA_LAG_SECONDS = "kafka_lag_seconds"
DLQ_RATE = "dlq_rate"
STALLED_SECONDS = "stalled_seconds"
PRODUCER_IDLE_SECONDS = "producer_idle_seconds"
ALL_ERROR_TYPES = "all"  # the error_type label of the dead-letter rate over every error type


@dataclass(frozen=True)
class AlertRule:
    """An alert on one figure: it fires for every series (label set) of the figure past a threshold.

    ``only`` restricts the series it watches (label -> value), ``unit`` formats values in messages,
    ``runbook`` says what the person on call should do.
    """

    name: str
    figure: str
    warning: float | None
    critical: float | None
    for_s: float
    summary: str  # str.format'ed with the series' labels and ``value`` (formatted with ``unit``)
    runbook: str
    unit: str = "s"
    only: tuple[tuple[str, str], ...] = ()

    def severity(self, value: float) -> str | None:
        """The severity a value reaches, or None below every threshold."""
        if self.critical is not None and value > self.critical:
            return CRITICAL
        if self.warning is not None and value > self.warning:
            return WARNING
        return None

    def watches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.only)

    def format(self, value: float) -> str:
        if self.unit == "ratio":
            return f"{value:.1%}"
        return f"{value:.0f} {self.unit}"


def rules(settings: Settings) -> tuple[AlertRule, ...]:
    """Every alert rule with this configuration's thresholds."""
    return (
        AlertRule(
            name="kafka_lag", figure=KAFKA_LAG_SECONDS,
            warning=settings.alert_lag_warning_s, critical=settings.alert_lag_critical_s, for_s=settings.alert_for_s,
            summary="Bronze of {exchange} is {value} behind Kafka ({records} records)",
            runbook="Is bronze_ingestion running and succeeding? Check its last runs in the Airflow UI and the "
                    "Spark pool's queue. A lag that grows while runs succeed means Bronze cannot keep up: raise "
                    "LAKEHOUSE_BRONZE_MAX_RECORDS_PER_RUN or the pool's slots."),
        AlertRule(
            name="dlq_rate", figure=DLQ_RATE, unit="ratio",
            warning=settings.alert_dlq_rate_warning, critical=settings.alert_dlq_rate_critical,
            for_s=settings.alert_for_s, only=(("error_type", ALL_ERROR_TYPES),),
            summary="{value} of {exchange}'s rows went to the dead-letter table in the last {window} min "
                    "({error_types})",
            runbook="Look at the error types: bad_magic_byte/unknown_schema_id point at a producer or the schema "
                    "registry, invalid_* at the exchange's data. Inspect rows with 'lakehouse sql', fix the cause, "
                    "then trigger dlq_replay for the error type."),
        AlertRule(
            name="job_down", figure=STALLED_SECONDS,
            warning=settings.alert_job_down_warning_s, critical=settings.alert_job_down_critical_s,
            for_s=settings.alert_for_s,
            summary="{layer} of {exchange} has made no progress for {value} while its input has new records",
            runbook="Is the layer's DAG paused, or are its runs failing or queued? Unpause it, read the failed "
                    "task's log, or free the Spark pool. A warning that clears by itself was a slow run."),
        AlertRule(
            name="producer_down", figure=PRODUCER_IDLE_SECONDS,
            warning=settings.alert_producer_down_warning_s, critical=None, for_s=settings.alert_for_s,
            summary="no new records in {topic} for {value}",
            runbook="Is the exchange's producer running? Check its log for websocket errors; the exchange itself "
                    "may be down or the market closed."),
    )


__all__ = ["ALL_ERROR_TYPES", "CRITICAL", "DLQ_RATE", "KAFKA_LAG_SECONDS", "PRODUCER_IDLE_SECONDS", "SEVERITIES",
           "STALLED_SECONDS", "WARNING", "AlertRule", "rules"]
