"""Every topic, table, subject, consumer-group and checkpoint name, built in one place.

Nothing else in the project spells these names as literals (cryptofeed's ``defines.py``).
"""

from __future__ import annotations

from pathlib import Path

from lakehouse.settings import Settings

NAMESPACE = "market_data"

LAYERS = ("bronze", "silver", "gold")

DLQ_TABLE = f"{NAMESPACE}.silver_dlq_trades"
DLQ_ARCHIVE_TABLE = f"{NAMESPACE}.silver_dlq_trades_archive"
GOLD_TABLE = f"{NAMESPACE}.gold_crypto_trades"
OHLCV_TABLE = f"{NAMESPACE}.gold_ohlcv_1m"
AUDIT_TABLE = f"{NAMESPACE}.pipeline_audit"

# Snapshot-summary keys written by Bronze in the same commit as its data.
BRONZE_OFFSETS_PROPERTY = "lakehouse.kafka.offsets"
BRONZE_RUN_PROPERTY = "lakehouse.bronze.run-id"
# The id of the topic incarnation the offsets belong to (a recreated topic gets a new id).
BRONZE_TOPIC_ID_PROPERTY = "lakehouse.kafka.topic-id"


def topic(settings: Settings, exchange: str) -> str:
    return f"{settings.topic_prefix}.{exchange}"


def rejects_topic(settings: Settings, exchange: str) -> str:
    return f"{topic(settings, exchange)}.rejects"


def value_subject(topic_name: str) -> str:
    """Confluent TopicNameStrategy subject for record values."""
    return f"{topic_name}-value"


def bronze_table(exchange: str) -> str:
    return f"{NAMESPACE}.bronze_{exchange}_trades"


def silver_table(exchange: str) -> str:
    return f"{NAMESPACE}.silver_{exchange}_trades"


def bronze_consumer_group(exchange: str) -> str:
    return f"lakehouse-bronze-{exchange}"


def checkpoint(settings: Settings, layer: str, name: str) -> str:
    """Checkpoint location of one streaming query (``layer``/``name``) under the checkpoint root."""
    return f"{settings.checkpoint_uri.rstrip('/')}/{layer}/{name}"


def all_tables(settings: Settings) -> list[str]:
    """Every table of the product, in creation order."""
    tables: list[str] = []
    for exchange in settings.exchanges:
        tables += [bronze_table(exchange), silver_table(exchange)]
    return tables + [DLQ_TABLE, DLQ_ARCHIVE_TABLE, GOLD_TABLE, OHLCV_TABLE, AUDIT_TABLE]


def qualified(settings: Settings, table: str) -> str:
    """Catalog-qualified table name for Spark."""
    return f"{settings.catalog_name}.{table}"


# --- Airflow (issue 7): DAG ids, pool, connections, asset URIs -------------------------------
BRONZE_DAG = "bronze_ingestion"
SILVER_DAG = "silver_transformation"
GOLD_DAG = "gold_aggregation"
LAYER_DAGS = {"bronze": BRONZE_DAG, "silver": SILVER_DAG, "gold": GOLD_DAG}
SILVER_REPLAY_DAG = "silver_replay"
DLQ_REPLAY_DAG = "dlq_replay"
MAINTENANCE_DAG = "iceberg_maintenance"
DLQ_RETENTION_DAG = "dlq_retention"
MONITOR_DAG = "pipeline_monitor"
# Pool bounding concurrent Spark applications (slots: settings.airflow_spark_pool_slots).
SPARK_POOL = "lakehouse_spark"
SPARK_CONN_ID = "spark_default"
# Optional Airflow connection: when it exists, alerts are also POSTed to it as JSON.
ALERTS_CONN_ID = "lakehouse_alerts"


def asset_uri(settings: Settings, table: str) -> str:
    """Airflow asset URI of an Iceberg table: ``iceberg://<catalog>/<namespace>/<table>``."""
    namespace, _, name = table.rpartition(".")
    return f"iceberg://{settings.catalog_name}/{namespace}/{name}"


# --- Bronze (issue 4) --------------------------------------------------------------------------
# Prefix of the Iceberg branch each Bronze run writes to before fast-forwarding main onto it.
BRONZE_BRANCH_PREFIX = "bronze_run_"


def bronze_reader_group(exchange: str) -> str:
    """group.id of Bronze's assign-only readers (librdkafka needs one; they never commit)."""
    return f"lakehouse-bronze-{exchange}-reader"


# --- Gold (issue 6) ----------------------------------------------------------------------------

# Scratch table of the Gold benchmark's floor (a plain append of the same rows, no dedupe).
BENCH_GOLD_FLOOR_TABLE = f"{NAMESPACE}.bench_gold_floor"


def gold_checkpoint(settings: Settings, exchange: str) -> str:
    """Checkpoint of Gold's stream over one exchange's Silver table (one per source, see gold.job)."""
    return checkpoint(settings, "gold", f"silver_{exchange}")


# --- Silver (issue 5) ------------------------------------------------------------------------
# Snapshot-summary key on every Silver and dead-letter append: "<streaming query id>:<batch id>",
# so a retried micro-batch skips the table it already wrote.
SILVER_BATCH_PROPERTY = "lakehouse.silver.batch"
# Dead-lettered rows of that batch by error_type (JSON), on its Silver and dead-letter commits.
SILVER_DEAD_PROPERTY = "lakehouse.silver.dead-lettered"
# The exchange of that batch, on the same commits: the dead-letter table is shared by every exchange.
SILVER_EXCHANGE_PROPERTY = "lakehouse.silver.exchange"


# --- Run reports (issue 11) --------------------------------------------------------------------
def run_report_dir(settings: Settings, layer: str) -> Path:
    """Where layer runs write their reports (lakehouse.runreport): one JSON file per run."""
    return settings.run_dir / "reports" / layer


def topics_at_stop_file(settings: Settings) -> Path:
    """Where the embedded broker's topic ids and end offsets are recorded when it stops."""
    return settings.home / "broker" / "topics-at-stop.json"
