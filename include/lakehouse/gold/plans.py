"""Iceberg scan metrics of an executed Spark query, read from its physical plan.

Iceberg's Spark scan reports per-query metrics (data files kept and skipped by partition and
column-stat pruning, manifests read) as SQL metrics of the ``BatchScanExec`` node. Reading them
after a MERGE or a query shows how much of a table it really touched, which is how Gold proves
that its dedupe cost does not grow with the table. The plan is read through Spark internals
(:mod:`lakehouse.adapters.spark`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lakehouse.adapters.spark import batch_scan_metrics

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class ScanMetrics:
    """The metrics of one Iceberg table scan in an executed plan."""

    table: str
    metrics: dict[str, int] = field(default_factory=dict)

    @property
    def files_scanned(self) -> int:
        return self.metrics.get("resultDataFiles", 0)

    @property
    def files_skipped(self) -> int:
        """Files dropped by stats inside manifests that were read (not those of skipped manifests)."""
        return self.metrics.get("skippedDataFiles", 0)

    @property
    def manifests_scanned(self) -> int:
        return self.metrics.get("scannedDataManifests", 0)

    @property
    def manifests_skipped(self) -> int:
        """Manifests dropped whole by their partition summaries."""
        return self.metrics.get("skippedDataManifests", 0)


def scan_metrics(executed: DataFrame, table: str | None = None) -> list[ScanMetrics]:
    """Metrics of every Iceberg scan (of ``table`` when given) in an already executed query.

    ``executed`` is the DataFrame returned by ``spark.sql(<command>)`` or one an action already
    ran on; the metrics are zero for a plan that has not run.
    """
    out = [ScanMetrics(table=name, metrics=values) for name, values in batch_scan_metrics(executed)]
    if table is not None:
        out = [m for m in out if m.table == table]
    return out
