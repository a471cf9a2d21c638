"""Spark and Iceberg-on-Spark internals the Gold job reads through py4j, in one place.

pyspark has no public API for a query's executed physical plan or for the Iceberg ``Table``
behind a catalog name, so Gold reaches them through pyspark's private JVM handles
(``DataFrame._jdf``, ``SparkSession._jvm`` and ``_jsparkSession``; the error chain reads
``SparkContext._gateway`` and ``CapturedException._origin``) and walks Spark's internal
plan classes (``AdaptiveSparkPlanExec``, query stages, ``BatchScanExec``). These change between
Spark and Iceberg releases without notice: the versions below are the ones this was checked
against (tests/unit/test_private_api_adapters.py for the Python side, the Gold integration tests
for the JVM side).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# pyspark versions whose internals were checked against this module.
TESTED_VERSIONS = frozenset({"3.5.8"})
# The Iceberg Spark runtime whose Spark3Util and scan metrics this module uses (lakehouse.spark.ICEBERG_JAR).
TESTED_ICEBERG_RUNTIME = "iceberg-spark-runtime-3.5_2.12-1.10.2.jar"

# Wrapper nodes and the accessor of the plan they wrap (AQE, query stages, command results).
_WRAPPERS = {
    "AdaptiveSparkPlanExec": "executedPlan",
    "ShuffleQueryStageExec": "plan",
    "BroadcastQueryStageExec": "plan",
    "TableCacheQueryStageExec": "plan",
    "CommandResultExec": "commandPhysicalPlan",
}


def installed_version() -> str:
    import pyspark

    return pyspark.__version__


def jvm_gateway() -> Any:
    """This process's py4j gateway to the driver JVM, or None when no JVM was started here."""
    from pyspark import SparkContext

    return SparkContext._gateway


def captured_jvm_exception(err: BaseException) -> Any:
    """The JVM throwable pyspark kept on a converted exception (``CapturedException._origin``), or None."""
    return getattr(err, "_origin", None)


def load_iceberg_table(spark: SparkSession, table: str) -> Any:
    """The Iceberg Java ``Table`` behind a catalog-qualified name (``Spark3Util``, no Spark job)."""
    return spark._jvm.org.apache.iceberg.spark.Spark3Util.loadIcebergTable(spark._jsparkSession, table)


def executed_plan(executed: DataFrame) -> Any:
    """The physical plan (a JVM ``SparkPlan``) a DataFrame was or will be executed with."""
    return executed._jdf.queryExecution().executedPlan()


def _seq(scala_seq: Any) -> list[Any]:
    return [scala_seq.apply(i) for i in range(scala_seq.size())]


def _walk(node: Any, out: list[tuple[str, dict[str, int]]]) -> None:
    kind = node.getClass().getSimpleName()
    if kind in _WRAPPERS:
        _walk(getattr(node, _WRAPPERS[kind])(), out)
        return
    if kind == "BatchScanExec":
        metrics = node.metrics()
        keys = metrics.keySet().iterator()
        values: dict[str, int] = {}
        while keys.hasNext():
            key = keys.next()
            values[str(key)] = int(metrics.apply(key).value())
        out.append((str(node.table().name()), values))
    for sub in _seq(node.subqueries()):
        _walk(sub, out)
    for child in _seq(node.children()):
        _walk(child, out)


def batch_scan_metrics(executed: DataFrame) -> list[tuple[str, dict[str, int]]]:
    """(table name, SQL metrics) of every ``BatchScanExec`` in ``executed``'s physical plan, looking
    through adaptive-execution wrappers, query stages, command results and subqueries."""
    out: list[tuple[str, dict[str, int]]] = []
    _walk(executed_plan(executed), out)
    return out


__all__ = ["TESTED_ICEBERG_RUNTIME", "TESTED_VERSIONS", "batch_scan_metrics", "captured_jvm_exception",
           "executed_plan", "installed_version", "jvm_gateway", "load_iceberg_table"]
