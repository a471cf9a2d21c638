"""One typed settings module for the whole product.

Resolution order (later wins), as in pyiceberg's config:
  1. the defaults declared on :class:`Settings` below;
  2. an optional TOML file named by ``LAKEHOUSE_CONFIG`` (flat ``key = value`` pairs using the
     field names below);
  3. ``LAKEHOUSE_<FIELD>`` environment variables (upper-case field name).

Every value is parsed by a typed getter; a bad value raises :class:`SettingsError` naming the
variable, so a misconfigured job fails at start instead of half-way through a run.
Derived locations (catalog database, warehouse, checkpoints, logs) default to places under
``LAKEHOUSE_HOME`` so that two stacks with different homes and ports run side by side.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "LAKEHOUSE_"
REPO_ROOT = Path(__file__).resolve().parents[2]


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


# Settings that no longer exist, and what replaced them: named in the error instead of "unknown".
REMOVED = {
    "dlq_retention_days": "dead letters are archived after LAKEHOUSE_DLQ_ARCHIVE_DAYS and purged after "
                          "LAKEHOUSE_DLQ_PURGE_DAYS",
    "bronze_accept_data_loss": "accepting a data loss is a one-time act now: run 'lakehouse run bronze --exchange X "
                               "--accept-data-loss', or trigger bronze_ingestion with {\"accept_data_loss\": true}",
}


def _doc(text: str, default: object) -> typing.Any:
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class Settings:
    """Effective configuration. Build it with :func:`load_settings`, never by hand in jobs."""

    # --- locations -------------------------------------------------------------------
    home: Path = _doc("Directory holding all embedded state (broker, catalog, warehouse, checkpoints, logs).",
                      REPO_ROOT / ".lakehouse")
    # --- exchanges and topics ----------------------------------------------------------
    exchanges: tuple[str, ...] = _doc("Exchanges the pipeline ingests; each gets a topic and Bronze/Silver tables.",
                                      ("binance", "kraken"))
    topic_prefix: str = _doc("Kafka topic prefix; the topic of exchange X is '<prefix>.X'.", "crypto.trades")
    topic_partitions: int = _doc("Partitions per trade topic when the topic is created.", 3)
    topic_replication: int = _doc("Replication factor for created topics.", 1)
    # --- Kafka -------------------------------------------------------------------------
    kafka_embedded: bool = _doc("Start the embedded tansu broker with 'lakehouse up'.", True)
    kafka_host: str = _doc("Host the embedded broker listens on.", "127.0.0.1")
    kafka_port: int = _doc("Port the embedded broker listens on.", 9092)
    kafka_bootstrap: str = _doc("Kafka bootstrap servers; empty means the embedded broker's host:port.", "")
    # --- schema registry ----------------------------------------------------------------
    schema_registry_url: str = _doc("Confluent Schema Registry URL; empty means the local store in LAKEHOUSE_HOME.", "")
    schema_registry_timeout_s: float = _doc("HTTP timeout for the schema registry.", 10.0)
    # --- Iceberg catalog ------------------------------------------------------------------
    catalog_name: str = _doc("Iceberg catalog name used by Spark and pyiceberg.", "lakehouse")
    catalog_uri: str = _doc("JDBC URI of the Iceberg catalog; empty means SQLite in LAKEHOUSE_HOME.", "")
    catalog_user: str = _doc("Catalog database user (PostgreSQL).", "")
    catalog_password: str = _doc("Catalog database password (PostgreSQL).", "")
    warehouse: str = _doc("Warehouse location (file:// or s3://); empty means LAKEHOUSE_HOME/warehouse.", "")
    checkpoint_root: str = _doc("Root for streaming checkpoints; empty means LAKEHOUSE_HOME/checkpoints.", "")
    s3_endpoint: str = _doc("S3-compatible endpoint (MinIO) for s3:// warehouses.", "")
    s3_access_key: str = _doc("S3 access key.", "")
    s3_secret_key: str = _doc("S3 secret key.", "")
    # --- Spark ---------------------------------------------------------------------------
    spark_master: str = _doc("Spark master URL.", "local[*]")
    spark_driver_memory: str = _doc("spark.driver.memory.", "2g")
    spark_executor_memory: str = _doc("spark.executor.memory (cluster modes).", "2g")
    spark_shuffle_partitions: int = _doc("spark.sql.shuffle.partitions; small on a 2-core machine.", 4)
    spark_sqlite_jdbc_jar: Path = _doc("SQLite JDBC driver jar (Debian libxerial-sqlite-jdbc-java).",
                                       Path("/usr/share/java/sqlite-jdbc.jar"))
    spark_postgres_jdbc_jar: Path = _doc("PostgreSQL JDBC driver jar (Debian libpostgresql-jdbc-java).",
                                         Path("/usr/share/java/postgresql.jar"))
    spark_extra_jars: tuple[str, ...] = _doc("Extra jars added to every Spark job (comma-separated).", ())
    spark_ui_enabled: bool = _doc("Enable the Spark UI for jobs.", False)
    spark_driver_java_options: str = _doc(
        "Extra JVM options of the Spark driver (and of local-mode executors). Layer runs are short: C1-only "
        "JIT and the serial collector cut a run's start-up CPU by about a third.",
        "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
    spark_cds_archive: Path = _doc(
        "JVM class-data-sharing archive of the Spark driver, built by 'make' ('lakehouse jvm-archive'); used when "
        "the file exists, ignored by the JVM when it does not match the JDK or class path.",
        Path(sys.prefix) / "lakehouse-spark.jsa")
    # --- layer tuning ----------------------------------------------------------------------
    bronze_max_records_per_run: int = _doc("Admission cap: most Kafka records one Bronze run ingests.", 2_000_000)
    bronze_records_per_task: int = _doc("Offset-range size per Spark task when reading Kafka.", 250_000)
    silver_max_files_per_batch: int = _doc("Iceberg streaming admission cap for Silver (files per micro-batch).", 200)
    gold_max_files_per_batch: int = _doc("Iceberg streaming admission cap for Gold (files per micro-batch).", 200)
    gold_poll_interval_s: float = _doc("How often a Gold run checks whether it has reached the Silver snapshot that "
                                       "was current when it started, seconds.", 0.2)
    gold_watermark_minutes: int = _doc("Event-time window in which Gold dedupes cheaply in-batch.", 5)
    # --- maintenance (issue 13) ----------------------------------------------------------------
    maintenance_schedule: str = _doc("Schedule of the iceberg_maintenance DAG (cron or Airflow preset).", "@hourly")
    dlq_retention_schedule: str = _doc("Schedule of the dlq_retention DAG (cron or Airflow preset).", "@daily")
    snapshot_retention_hours: int = _doc("Snapshots older than this are expired by maintenance (never one a "
                                         "downstream stream still needs).", 24)
    snapshot_retain_last: int = _doc("Snapshots every table keeps whatever their age.", 100)
    orphan_min_age_hours: float = _doc("Files no snapshot references are deleted once older than this; must exceed "
                                       "the longest task timeout plus a margin.", 72.0)
    dlq_archive_days: int = _doc("Dead-letter rows older than this move to silver_dlq_trades_archive.", 30)
    dlq_purge_days: int = _doc("Archived dead-letter rows older than this are deleted, files included.", 90)
    # --- monitoring (issue 14): the pipeline_monitor DAG and its alert rules --------------------
    monitor_schedule: str = _doc("Schedule of the pipeline_monitor DAG (cron or Airflow preset).", "* * * * *")
    alert_lag_warning_s: float = _doc("Kafka lag into Bronze, seconds behind, that raises a warning.", 120.0)
    alert_lag_critical_s: float = _doc("Kafka lag into Bronze, seconds behind, that is critical.", 300.0)
    alert_dlq_rate_warning: float = _doc("Dead-letter share of a layer's rows (0-1, over the DLQ window) that raises "
                                         "a warning.", 0.01)
    alert_dlq_rate_critical: float = _doc("Dead-letter share of rows (0-1, over the DLQ window) that is critical.",
                                          0.05)
    alert_dlq_window_minutes: int = _doc("Window of the dead-letter rate, minutes (from snapshot summaries).", 15)
    alert_job_down_warning_s: float = _doc("A layer with no progress for this long while its input has new "
                                           "records is falling behind (warning), seconds.", 120.0)
    alert_job_down_critical_s: float = _doc("A layer with no progress for this long while its input has new records "
                                            "is down (critical), seconds.", 300.0)
    alert_producer_down_warning_s: float = _doc("A topic without a new record for this long raises a producer-down "
                                                "warning, seconds.", 300.0)
    alert_for_s: float = _doc("How long a threshold must hold before its alert fires, seconds.", 0.0)
    alert_repeat_minutes: int = _doc("A firing alert is notified again this often while it fires, minutes.", 60)
    # --- producers -----------------------------------------------------------------------
    producer_rate: float = _doc("Default replay rate in trades/s per exchange for 'make run'.", 200.0)
    producer_compression: str = _doc("Kafka producer compression codec.", "zstd")
    producer_linger_ms: int = _doc(
        "Kafka producer linger.ms. Fewer, larger record batches cost the broker less per record (the embedded "
        "broker's fetches slow down with the number of batches it holds); the layers run once a minute, so "
        "100 ms more latency here is invisible.", 100)
    # --- observability ----------------------------------------------------------------------
    statsd_host: str = _doc("StatsD host for metrics.", "127.0.0.1")
    statsd_port: int = _doc("StatsD UDP port.", 8125)
    statsd_prefix: str = _doc("Prefix of every metric name.", "lakehouse")
    log_level: str = _doc("Log level for jobs and services.", "INFO")
    log_json: bool = _doc("Structured JSON logs (true) or plain text (false).", True)
    # --- Airflow ------------------------------------------------------------------------------
    airflow_home: str = _doc("AIRFLOW_HOME for the embedded Airflow; empty means LAKEHOUSE_HOME/airflow.", "")
    airflow_port: int = _doc("Port of the embedded Airflow API server / UI.", 8080)
    airflow_parallelism: int = _doc("Airflow core.parallelism for the embedded LocalExecutor.", 4)
    airflow_spark_pool_slots: int = _doc("Slots of the Airflow pool that bounds concurrent Spark applications.", 2)
    deadline_bronze_s: int = _doc("Deadline after queueing for a Bronze DAG run, seconds.", 90)
    deadline_silver_s: int = _doc("Deadline after queueing for a Silver DAG run, seconds.", 120)
    deadline_gold_s: int = _doc("Deadline after queueing for a Gold DAG run, seconds.", 180)
    # --- Airflow orchestration (issue 7: task policy, alerts) ---------------------------------
    airflow_task_retries: int = _doc("Retries of a layer task before it fails and alerts.", 2)
    airflow_retry_delay_s: int = _doc("First retry delay of a layer task, seconds (doubles on each retry).", 15)
    airflow_max_retry_delay_s: int = _doc("Upper bound of a layer task's retry delay, seconds.", 120)
    airflow_task_timeout_s: int = _doc("execution_timeout of one layer Spark task, seconds.", 600)
    airflow_replay_timeout_s: int = _doc("execution_timeout of a manual replay task (silver_replay, dlq_replay), seconds.",
                                         3600)
    alert_webhook_timeout_s: float = _doc("HTTP timeout of the alert webhook POST (connection 'lakehouse_alerts').", 10.0)
    # --- Bronze ingestion (issue 4) -------------------------------------------------------------
    bronze_kafka_timeout_s: float = _doc("Bronze fails when Kafka makes no progress for this long (planning and reading).",
                                         60.0)
    bronze_branch_ttl_s: int = _doc("Age after which a killed Bronze run's leftover Iceberg branch is dropped, seconds.",
                                    600)
    bronze_crash_point: str = _doc("Fault injection for kill tests: SIGKILL the Bronze job at before_write, after_write "
                                   "or after_commit; empty means off.", "")

    # --- Producers: live feeds, replay (issue 3) ----------------------------------------------
    producer_binance_ws_url: str = _doc("Binance spot websocket base URL; the client appends /stream?streams=....",
                                        "wss://stream.binance.com:9443")
    producer_kraken_ws_url: str = _doc("Kraken spot WebSocket v2 URL.", "wss://ws.kraken.com/v2")
    producer_binance_symbols: tuple[str, ...] = _doc("Binance symbols followed by 'lakehouse produce --live' by default.",
                                                     ("btcusdt", "ethusdt"))
    producer_kraken_symbols: tuple[str, ...] = _doc("Kraken symbols followed by 'lakehouse produce --live' by default.",
                                                    ("BTC/USD", "ETH/USD"))
    producer_binance_time_unit: str = _doc("timeUnit requested on Binance live streams: MILLISECOND or MICROSECOND.",
                                           "MICROSECOND")
    producer_binance_quotes: tuple[str, ...] = _doc(
        "Quote assets a Binance symbol may end with; the longest matching suffix is the currency.",
        ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USDP", "DAI", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "GBP",
         "AUD", "JPY", "RUB", "UAH", "ZAR", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "IDR", "BIDR", "IDRT",
         "NGN", "XRP", "TRX", "DOGE", "DOT", "PAX", "AEUR", "EURI"))
    producer_binance_max_connection_s: float = _doc(
        "Age at which a Binance connection is replaced proactively (the server closes it at 24 h).", 84600.0)
    producer_rollover_overlap_s: float = _doc(
        "After a proactive reconnect, how long the old connection keeps reading next to the new one.", 5.0)
    producer_reconnect_min_s: float = _doc("Reconnect backoff after the first failed attempt (doubles, with jitter).",
                                           0.5)
    producer_reconnect_max_s: float = _doc("Upper bound of the reconnect backoff.", 30.0)
    producer_ping_interval_s: float = _doc("Websocket keepalive ping interval.", 20.0)
    producer_ping_timeout_s: float = _doc("A ping without pong for this long closes the connection (then reconnect).",
                                          20.0)
    producer_open_timeout_s: float = _doc("Websocket connect and handshake timeout.", 10.0)
    producer_dedupe_window: int = _doc(
        "Live mode: recent message_ids remembered to drop repeats (Kraken snapshots, reconnect overlap).", 100_000)
    producer_flush_timeout_s: float = _doc("How long shutdown waits for Kafka to acknowledge queued records.", 60.0)
    producer_metrics_interval_s: float = _doc("How often producer counters are sent to StatsD, seconds.", 1.0)
    # --- Silver: decode, validate, dead-letter, replay (issue 5) --------------------------------
    silver_max_rows_per_batch: int = _doc("Admission cap of Silver micro-batches in Bronze rows (soft: whole files), "
                                          "next to silver_max_files_per_batch.", 2_000_000)
    silver_rows_per_file: int = _doc("Rows a Silver task buffers before it writes them as data files (its memory "
                                     "bound: about 300 bytes a row).", 500_000)
    silver_split_size_mb: int = _doc("Bronze bytes per Silver task within a micro-batch (Iceberg split size): "
                                     "smaller spreads a large batch over more cores, larger writes fewer files.", 16)
    silver_poll_interval_s: float = _doc("How often a Silver run checks whether it has reached the Bronze snapshot "
                                         "that was current when it started, seconds.", 0.2)
    max_clock_skew_s: float = _doc(
        "Tolerance of the future-timestamp rule: a trade may be stamped up to this many seconds after the time its "
        "record reached Bronze (clock skew between the exchange or producer and this machine).", 5.0)
    gold_crash_point: str = _doc("Fault injection for kill tests: SIGKILL the Gold job after_trades (Gold trades "
                                 "committed, minute bars not); empty means off.", "")
    silver_fault_injection: str = _doc("Fault injection for kill-and-retry tests: fail each Silver batch after_silver "
                                       "(Silver written, DLQ not) or after_both (before the checkpoint commit); "
                                       "empty means off.", "")
    # --- derived locations -------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def catalog_db_path(self) -> Path:
        return self.home / "catalog.db"

    @property
    def catalog_jdbc_uri(self) -> str:
        return self.catalog_uri or f"jdbc:sqlite:{self.catalog_db_path}"

    @property
    def catalog_is_sqlite(self) -> bool:
        return self.catalog_jdbc_uri.startswith("jdbc:sqlite:")

    @property
    def warehouse_uri(self) -> str:
        return self.warehouse or (self.home / "warehouse").as_uri()

    @property
    def checkpoint_uri(self) -> str:
        return self.checkpoint_root or (self.home / "checkpoints").as_uri()

    @property
    def registry_dir(self) -> Path:
        return self.home / "schema-registry"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def airflow_home_path(self) -> Path:
        return Path(self.airflow_home) if self.airflow_home else self.home / "airflow"

    def private_home(self) -> Path:
        """The home directory, created readable by its owner only (0700), and returned.

        It holds the catalog, the local schema registry, Airflow's database, the generated admin
        password and Spark's secrets file. A home that this user owns but that others can read
        (created by an older version, or by hand) is narrowed to 0700; one owned by someone else
        is left alone.
        """
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = self.home.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            self.home.chmod(0o700)
        return self.home

    def env(self) -> dict[str, str]:
        """These settings as LAKEHOUSE_* variables, so child processes see the same config."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            out[ENV_PREFIX + f.name.upper()] = text
        return out

    def as_dict(self) -> dict[str, object]:
        """Effective settings for ``lakehouse config``; secrets are masked."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("password", "secret_key")) and value:
                value = "***"
            out[f.name] = list(value) if isinstance(value, tuple) else (str(value) if isinstance(value, Path) else value)
        return out


_TYPES = typing.get_type_hints(Settings)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(name: str, raw: object, source: str) -> object:
    """Parse one raw value into the declared type of field ``name``."""
    kind = _TYPES[name]
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true/false")
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(str(raw).strip().replace("_", ""))
        if kind is float:
            return float(str(raw).strip())
        if kind is Path:
            text = str(raw).strip()
            if not text:
                raise ValueError("expected a path")
            return Path(text).expanduser()
        if kind == tuple[str, ...]:
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            return tuple(str(item).strip() for item in items if str(item).strip())
        return str(raw).strip()
    except ValueError as err:
        raise SettingsError(f"{source}={raw!r} is not a valid {getattr(kind, '__name__', kind)}: {err}") from err


# Where the Bronze job may SIGKILL itself when LAKEHOUSE_BRONZE_CRASH_POINT is set (issue 4).
BRONZE_CRASH_POINTS = ("", "before_write", "after_write", "after_commit")


# Where a Silver batch fails on purpose when LAKEHOUSE_SILVER_FAULT_INJECTION is set (issue 5).
SILVER_FAULT_POINTS = ("", "after_silver", "after_both")
GOLD_CRASH_POINTS = ("", "after_trades")
# Orphan files younger than the longest task timeout plus this are never deleted.
ORPHAN_AGE_MARGIN_S = 3600


def _validate(s: Settings) -> None:
    def bad(name: str, why: str) -> SettingsError:
        return SettingsError(f"{ENV_PREFIX}{name.upper()}={getattr(s, name)!r}: {why}")

    for port_field in ("kafka_port", "statsd_port", "airflow_port"):
        if not 0 < getattr(s, port_field) < 65536:
            raise bad(port_field, "must be a TCP port between 1 and 65535")
    for positive in ("topic_partitions", "topic_replication", "spark_shuffle_partitions",
                     "bronze_max_records_per_run", "bronze_records_per_task", "silver_max_files_per_batch",
                     "gold_max_files_per_batch", "airflow_parallelism", "airflow_spark_pool_slots",
                     "deadline_bronze_s", "deadline_silver_s", "deadline_gold_s", "dlq_archive_days",
                     "dlq_purge_days", "snapshot_retention_hours", "snapshot_retain_last", "orphan_min_age_hours"):
        if getattr(s, positive) <= 0:
            raise bad(positive, "must be greater than zero")
    if s.max_clock_skew_s < 0:
        raise bad("max_clock_skew_s", "must be zero or positive")
    if s.producer_rate <= 0:
        raise bad("producer_rate", "must be greater than zero")
    if not s.exchanges:
        raise bad("exchanges", "at least one exchange is required")
    for exchange in s.exchanges:
        if not exchange.isidentifier() or exchange.lower() != exchange:
            raise bad("exchanges", f"exchange name {exchange!r} must be a lower-case identifier")
    if len(set(s.exchanges)) != len(s.exchanges):
        raise bad("exchanges", "exchange names must be unique")
    if s.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise bad("log_level", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if s.producer_compression not in {"none", "gzip", "snappy", "lz4", "zstd"}:
        raise bad("producer_compression", "must be one of none, gzip, snappy, lz4, zstd")
    if s.catalog_uri and not s.catalog_uri.startswith("jdbc:"):
        raise bad("catalog_uri", "must be a JDBC URI such as jdbc:postgresql://host:5432/db")
    # Airflow orchestration (issue 7)
    for positive in ("airflow_task_retries", "airflow_retry_delay_s", "airflow_max_retry_delay_s",
                     "airflow_task_timeout_s", "airflow_replay_timeout_s", "alert_webhook_timeout_s"):
        if getattr(s, positive) <= 0:
            raise bad(positive, "must be greater than zero")
    if s.airflow_max_retry_delay_s < s.airflow_retry_delay_s:
        raise bad("airflow_max_retry_delay_s", "must not be smaller than LAKEHOUSE_AIRFLOW_RETRY_DELAY_S")
    # Maintenance (issue 13)
    if s.dlq_purge_days <= s.dlq_archive_days:
        raise bad("dlq_purge_days", f"must be greater than LAKEHOUSE_DLQ_ARCHIVE_DAYS ({s.dlq_archive_days})")
    shortest_orphan_age_s = max(s.airflow_task_timeout_s, s.airflow_replay_timeout_s) + ORPHAN_AGE_MARGIN_S
    if s.orphan_min_age_hours * 3600 < shortest_orphan_age_s:
        raise bad("orphan_min_age_hours", f"must be at least {shortest_orphan_age_s / 3600:.2f} hours (the longest "
                  f"task timeout plus {ORPHAN_AGE_MARGIN_S // 3600} h): a file a running job is writing must never "
                  f"be deleted")
    # Monitoring (issue 14)
    for positive in ("alert_lag_warning_s", "alert_lag_critical_s", "alert_dlq_rate_warning",
                     "alert_dlq_rate_critical", "alert_dlq_window_minutes", "alert_job_down_warning_s",
                     "alert_job_down_critical_s",
                     "alert_producer_down_warning_s", "alert_repeat_minutes"):
        if getattr(s, positive) <= 0:
            raise bad(positive, "must be greater than zero")
    if s.alert_for_s < 0:
        raise bad("alert_for_s", "must be zero or positive")
    if s.alert_lag_critical_s < s.alert_lag_warning_s:
        raise bad("alert_lag_critical_s", f"must not be below LAKEHOUSE_ALERT_LAG_WARNING_S ({s.alert_lag_warning_s})")
    if s.alert_job_down_critical_s < s.alert_job_down_warning_s:
        raise bad("alert_job_down_critical_s", f"must not be below LAKEHOUSE_ALERT_JOB_DOWN_WARNING_S "
                  f"({s.alert_job_down_warning_s})")
    if not s.alert_dlq_rate_warning <= s.alert_dlq_rate_critical <= 1:
        raise bad("alert_dlq_rate_critical", f"must be between LAKEHOUSE_ALERT_DLQ_RATE_WARNING "
                  f"({s.alert_dlq_rate_warning}) and 1")
    # Silver (issue 5) and the streams' polling
    for positive in ("silver_max_rows_per_batch", "silver_poll_interval_s", "gold_poll_interval_s",
                     "silver_rows_per_file", "silver_split_size_mb"):
        if getattr(s, positive) <= 0:
            raise bad(positive, "must be greater than zero")
    if s.silver_fault_injection not in SILVER_FAULT_POINTS:
        raise bad("silver_fault_injection", f"must be one of {', '.join(repr(p) for p in SILVER_FAULT_POINTS)}")
    if s.gold_crash_point not in GOLD_CRASH_POINTS:
        raise bad("gold_crash_point", f"must be empty or one of {', '.join(p for p in GOLD_CRASH_POINTS if p)}")
    # Bronze ingestion (issue 4)
    for positive in ("bronze_kafka_timeout_s", "bronze_branch_ttl_s"):
        if getattr(s, positive) <= 0:
            raise bad(positive, "must be greater than zero")
    if s.bronze_crash_point not in BRONZE_CRASH_POINTS:
        raise bad("bronze_crash_point", f"must be empty or one of {', '.join(p for p in BRONZE_CRASH_POINTS if p)}")
    # Producers (issue 3)
    for positive in ("producer_binance_max_connection_s", "producer_rollover_overlap_s", "producer_reconnect_min_s",
                     "producer_reconnect_max_s", "producer_ping_interval_s", "producer_ping_timeout_s",
                     "producer_open_timeout_s", "producer_flush_timeout_s", "producer_metrics_interval_s"):
        if getattr(s, positive) <= 0:
            raise bad(positive, "must be greater than zero")
    if s.producer_reconnect_max_s < s.producer_reconnect_min_s:
        raise bad("producer_reconnect_max_s", "must not be smaller than LAKEHOUSE_PRODUCER_RECONNECT_MIN_S")
    if s.producer_dedupe_window < 0:
        raise bad("producer_dedupe_window", "must be zero (off) or positive")
    if s.producer_binance_time_unit not in {"MILLISECOND", "MICROSECOND"}:
        raise bad("producer_binance_time_unit", "must be MILLISECOND or MICROSECOND")
    if not s.producer_binance_quotes or any(not q.isalnum() or q.upper() != q for q in s.producer_binance_quotes):
        raise bad("producer_binance_quotes", "must be a non-empty list of upper-case asset codes")
    for url_field in ("producer_binance_ws_url", "producer_kraken_ws_url"):
        if not getattr(s, url_field).startswith(("ws://", "wss://")):
            raise bad(url_field, "must be a ws:// or wss:// URL")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the effective settings from defaults, the optional TOML file, then the environment."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    names = {f.name for f in dataclasses.fields(Settings)}

    config_file = env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        path = Path(config_file).expanduser()
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise SettingsError(f"{ENV_PREFIX}CONFIG={config_file!r}: cannot read TOML file: {err}") from err
        for key, raw in data.items():
            if key in REMOVED:
                raise SettingsError(f"{path}: setting {key!r} was removed: {REMOVED[key]}")
            if key not in names:
                raise SettingsError(f"{path}: unknown setting {key!r}")
            values[key] = _parse(key, raw, f"{path}:{key}")

    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name in REMOVED:
            raise SettingsError(f"{key} was removed: {REMOVED[name]}")
        if name not in names:
            raise SettingsError(f"{key} is not a known setting (see 'lakehouse config')")
        values[name] = _parse(name, raw, key)

    settings = Settings(**values)  # type: ignore[arg-type]
    if not settings.home.is_absolute():
        settings = dataclasses.replace(settings, home=settings.home.resolve())
    _validate(settings)
    return settings


def setting_docs() -> dict[str, str]:
    """Field name -> one-line description, for ``lakehouse config --help``-style output."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(Settings)}
