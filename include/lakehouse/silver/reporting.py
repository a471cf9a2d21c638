"""What a Silver run reports: per micro-batch and per run, as one structured log line and StatsD
metrics (``silver.*``, tagged by exchange and error_type), and its entry of the run report."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from lakehouse.metrics import StatsD

log = logging.getLogger(__name__)

METRIC = "silver"


@dataclass(frozen=True)
class SilverBatchStats:
    """One micro-batch's counts, and which of its two commits this run wrote (a retry may write neither)."""

    batch_id: int
    read: int
    valid: int
    dead_lettered: dict[str, int]
    duration_s: float
    wrote_silver: bool
    wrote_dlq: bool

    @property
    def dead(self) -> int:
        return sum(self.dead_lettered.values())


@dataclass
class RunSummary:
    exchange: str
    batches: list[SilverBatchStats] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def read(self) -> int:
        return sum(b.read for b in self.batches)

    @property
    def valid(self) -> int:
        return sum(b.valid for b in self.batches)

    @property
    def dead_lettered(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for b in self.batches:
            total.update(b.dead_lettered)
        return dict(total)

    @property
    def dlq_rate(self) -> float:
        return (self.read - self.valid) / self.read if self.read else 0.0


def report_batch(stats: SilverBatchStats, exchange: str, statsd: StatsD) -> None:
    """One structured log line and the StatsD metrics of a micro-batch."""
    rate = stats.dead / stats.read if stats.read else 0.0
    tags = {"exchange": exchange}
    log.info("silver batch", extra={"exchange": exchange, "batch_id": stats.batch_id, "records_read": stats.read,
                                    "records_valid": stats.valid, "records_dead_lettered": stats.dead,
                                    "dead_lettered_by_type": stats.dead_lettered, "dlq_rate": round(rate, 6),
                                    "duration_s": round(stats.duration_s, 3), "wrote_silver": stats.wrote_silver,
                                    "wrote_dlq": stats.wrote_dlq})
    statsd.incr(f"{METRIC}.records_read", stats.read, tags)
    statsd.incr(f"{METRIC}.records_valid", stats.valid, tags)
    for error_type, n in stats.dead_lettered.items():
        statsd.incr(f"{METRIC}.records_dead_lettered", n, {**tags, "error_type": error_type})
    statsd.gauge(f"{METRIC}.batch_dlq_rate", rate, tags)
    statsd.timing(f"{METRIC}.batch_duration_ms", stats.duration_s * 1000, tags)


def report_run(summary: RunSummary, statsd: StatsD) -> None:
    """One structured log line and the StatsD metrics of a whole run."""
    tags = {"exchange": summary.exchange}
    log.info("silver run finished", extra={"exchange": summary.exchange, "batches": len(summary.batches),
                                           "records_read": summary.read, "records_valid": summary.valid,
                                           "dead_lettered_by_type": summary.dead_lettered,
                                           "dlq_rate": round(summary.dlq_rate, 6),
                                           "duration_s": round(summary.duration_s, 3)})
    statsd.gauge(f"{METRIC}.run_records_read", summary.read, tags)
    statsd.gauge(f"{METRIC}.run_records_valid", summary.valid, tags)
    for error_type, n in summary.dead_lettered.items():
        statsd.gauge(f"{METRIC}.run_records_dead_lettered", n, {**tags, "error_type": error_type})
    statsd.gauge(f"{METRIC}.dlq_rate", summary.dlq_rate, tags)
    statsd.timing(f"{METRIC}.run_duration_ms", summary.duration_s * 1000, tags)


def describe_run(summary: RunSummary) -> tuple[str, int, dict[str, object]]:
    """One exchange's entry of the run report (:mod:`lakehouse.runreport`)."""
    return ("committed" if summary.read else "noop", summary.read,
            {"valid": summary.valid, "dead_lettered": summary.dead_lettered, "batches": len(summary.batches),
             "dlq_rate": round(summary.dlq_rate, 6), "duration_s": round(summary.duration_s, 3)})


__all__ = ["METRIC", "RunSummary", "SilverBatchStats", "describe_run", "report_batch", "report_run"]
