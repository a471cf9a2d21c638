"""One typed settings module for the whole product.

Resolution order (later wins), as in pyiceberg's config:
  1. the defaults declared on :class:`Settings` below;
  2. an optional TOML file named by ``LAKEHOUSE_CONFIG`` (flat ``key = value`` pairs using the
     field names below);
  3. ``LAKEHOUSE_<FIELD>`` environment variables (upper-case field name);
  4. keyword arguments given to ``Settings(...)`` itself (:meth:`Settings.replace` copies).

:class:`Settings` is a pydantic-settings model: its sources are, highest first, the keyword
arguments, the environment (:class:`_EnvironmentSource`, ``os.environ`` or the mapping given to
:func:`load_settings`) and the TOML file (:class:`_ConfigFileSource`); fields not set by any of
them keep their declared defaults. An unknown or removed ``LAKEHOUSE_*`` variable or TOML key is
an error, not ignored. Every value is first parsed (``1_000`` integers, ``true/yes/on/1`` and
``false/no/off/0`` booleans, comma-separated lists, ``~`` in paths), then checked; a bad value
raises :class:`SettingsError` naming the variable and the value, on one line, so a misconfigured
job fails at start instead of half-way through a run. Derived locations (catalog database, warehouse,
checkpoints, logs) default to places under ``LAKEHOUSE_HOME`` so that two stacks with different
homes and ports run side by side.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "LAKEHOUSE_"
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"
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

# Where the Bronze job may SIGKILL itself when LAKEHOUSE_BRONZE_CRASH_POINT is set (issue 4).
BRONZE_CRASH_POINTS = ("", "before_write", "after_write", "after_commit")


# Where a Silver batch fails on purpose when LAKEHOUSE_SILVER_FAULT_INJECTION is set (issue 5).
SILVER_FAULT_POINTS = ("", "after_silver", "after_both")
GOLD_CRASH_POINTS = ("", "after_trades")
# Orphan files younger than the longest task timeout plus this are never deleted.
ORPHAN_AGE_MARGIN_S = 3600

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
COMPRESSION_CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
BINANCE_TIME_UNITS = ("MILLISECOND", "MICROSECOND")

# Field groups checked alike (see the validators of :class:`Settings`).
_PORTS = ("kafka_port", "statsd_port", "airflow_port")
_POSITIVE = (
    "topic_partitions", "topic_replication", "spark_shuffle_partitions", "bronze_max_records_per_run",
    "bronze_records_per_task", "silver_max_files_per_batch", "gold_max_files_per_batch", "airflow_parallelism",
    "airflow_spark_pool_slots", "deadline_bronze_s", "deadline_silver_s", "deadline_gold_s", "dlq_archive_days",
    "dlq_purge_days", "snapshot_retention_hours", "snapshot_retain_last", "orphan_min_age_hours", "producer_rate",
    # Airflow orchestration (issue 7)
    "airflow_task_retries", "airflow_retry_delay_s", "airflow_max_retry_delay_s", "airflow_task_timeout_s",
    "airflow_replay_timeout_s", "alert_webhook_timeout_s",
    # monitoring (issue 14)
    "alert_lag_warning_s", "alert_lag_critical_s", "alert_dlq_rate_warning", "alert_dlq_rate_critical",
    "alert_dlq_window_minutes", "alert_job_down_warning_s", "alert_job_down_critical_s",
    "alert_producer_down_warning_s", "alert_repeat_minutes",
    # Silver (issue 5) and the streams' polling
    "silver_max_rows_per_batch", "silver_poll_interval_s", "gold_poll_interval_s", "silver_rows_per_file",
    "silver_split_size_mb",
    # Bronze ingestion (issue 4)
    "bronze_kafka_timeout_s", "bronze_branch_ttl_s",
    # producers (issue 3)
    "producer_binance_max_connection_s", "producer_rollover_overlap_s", "producer_reconnect_min_s",
    "producer_reconnect_max_s", "producer_ping_interval_s", "producer_ping_timeout_s", "producer_open_timeout_s",
    "producer_flush_timeout_s", "producer_metrics_interval_s",
)
_NOT_NEGATIVE = ("max_clock_skew_s", "alert_for_s")
_WEBSOCKET_URLS = ("producer_binance_ws_url", "producer_kraken_ws_url")
# Fields with a fixed set of values: (allowed values, what the error says).
_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "log_level": (LOG_LEVELS, f"must be one of {', '.join(LOG_LEVELS)}"),
    "producer_compression": (COMPRESSION_CODECS, f"must be one of {', '.join(COMPRESSION_CODECS)}"),
    "silver_fault_injection": (SILVER_FAULT_POINTS,
                               f"must be one of {', '.join(repr(p) for p in SILVER_FAULT_POINTS)}"),
    "gold_crash_point": (GOLD_CRASH_POINTS, f"must be empty or one of {', '.join(p for p in GOLD_CRASH_POINTS if p)}"),
    "bronze_crash_point": (BRONZE_CRASH_POINTS,
                           f"must be empty or one of {', '.join(p for p in BRONZE_CRASH_POINTS if p)}"),
    "producer_binance_time_unit": (BINANCE_TIME_UNITS, f"must be {' or '.join(BINANCE_TIME_UNITS)}"),
}


class _Invalid(ValueError):
    """A parsed value a check refused: ``LAKEHOUSE_<FIELD>=<value>: <why>``.

    ``field`` is set by the cross-field checks, whose errors carry no field location.
    """

    def __init__(self, value: object, why: str, field: str | None = None) -> None:
        super().__init__(why)
        self.value = value
        self.field = field


class _Unparsable(ValueError):
    """A raw value that is not of the field's type: ``<source>=<raw>: is not a valid <kind>``."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Unparsable("bool", "expected true/false")


def _parse_int(raw: object) -> int:
    if isinstance(raw, bool):
        raise _Unparsable("int", "expected an integer")
    try:
        return int(str(raw).strip().replace("_", ""))
    except ValueError as err:
        raise _Unparsable("int", str(err)) from err


def _parse_float(raw: object) -> float:
    try:
        return float(str(raw).strip())
    except ValueError as err:
        raise _Unparsable("float", str(err)) from err


def _parse_path(raw: object) -> Path:
    text = str(raw).strip()
    if not text:
        raise _Unparsable("Path", "expected a path")
    return Path(text).expanduser()


def _parse_names(raw: object) -> tuple[str, ...]:
    """A list from TOML, a tuple from Python, or ``"a, b"`` from the environment."""
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def _parse_str(raw: object) -> str:
    return str(raw).strip()


_PARSERS: dict[object, Callable[[object], object]] = {
    bool: _parse_bool, int: _parse_int, float: _parse_float, Path: _parse_path, tuple[str, ...]: _parse_names,
    str: _parse_str,
}


@dataclasses.dataclass
class _Origin:
    """Where the values of one resolution come from, so that errors name the right variable or file."""

    environ: Mapping[str, str]
    config_file: Path | None = None
    config_keys: frozenset[str] = frozenset()

    def label(self, name: str, init_keys: frozenset[str]) -> str:
        """``LAKEHOUSE_<NAME>`` when the value came from the environment (or the caller), else ``<file>:<name>``."""
        variable = ENV_PREFIX + name.upper()
        if name in init_keys or self.config_file is None or name not in self.config_keys:
            return variable
        for key in self.environ:
            if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() == name:
                return key
        return f"{self.config_file}:{name}"


# The origin of the resolution in progress: load_settings(env=...) resolves from its mapping.
_ORIGIN: ContextVar[_Origin | None] = ContextVar("lakehouse_settings_origin", default=None)


class _EnvironmentSource(PydanticBaseSettingsSource):
    """``LAKEHOUSE_<FIELD>`` variables of the resolution's mapping; unknown and removed names are errors.

    pydantic-settings' own ``EnvSettingsSource`` inspects every field on every load (a few ms for
    this many fields, in every task process); this one looks only at the ``LAKEHOUSE_*`` variables
    there are, and leaves their parsing to the fields' validators.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        prefix = self.config.get("env_prefix") or ENV_PREFIX
        fields = settings_cls.model_fields
        self.values: dict[str, str] = {}
        for key, raw in environ.items():
            if not key.startswith(prefix) or key == CONFIG_VARIABLE:
                continue
            name = key[len(prefix):].lower()
            if name in REMOVED:
                raise SettingsError(f"{key} was removed: {REMOVED[name]}")
            if name not in fields:
                raise SettingsError(f"{key} is not a known setting (see 'lakehouse config')")
            self.values[name] = raw

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


class _ConfigFileSource(TomlConfigSettingsSource):
    """The TOML file named by ``LAKEHOUSE_CONFIG``: a named file that cannot be read is an error, as
    are keys that are not settings (or no longer are)."""

    def __init__(self, settings_cls: type[BaseSettings], configured: str, origin: _Origin) -> None:
        self._configured = configured
        path = Path(configured).expanduser()
        super().__init__(settings_cls, toml_file=path)
        for key in self.toml_data:
            if key in REMOVED:
                raise SettingsError(f"{path}: setting {key!r} was removed: {REMOVED[key]}")
            if key not in settings_cls.model_fields:
                raise SettingsError(f"{path}: unknown setting {key!r}")
        origin.config_file = path
        origin.config_keys = frozenset(self.toml_data)

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        # The base class skips files that do not exist; a file named on purpose must exist.
        return self._read_file(files)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            return tomllib.loads(Path(file_path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise SettingsError(f"{CONFIG_VARIABLE}={self._configured!r}: cannot read TOML file: {err}") from err


class Settings(BaseSettings):
    """Effective configuration. Build it with :func:`load_settings`, never by hand in jobs."""

    # Frozen: hashable, and no job changes its configuration under another's feet. Unknown names are
    # refused by the sources with a better message; "forbid" covers keyword arguments.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # --- locations -------------------------------------------------------------------
    home: Path = Field(REPO_ROOT / ".lakehouse", description="Directory holding all embedded state (broker, catalog, "
                                                             "warehouse, checkpoints, logs).")
    # --- exchanges and topics ----------------------------------------------------------
    exchanges: tuple[str, ...] = Field(("binance", "kraken"), description="Exchanges the pipeline ingests; each gets "
                                                                          "a topic and Bronze/Silver tables.")
    topic_prefix: str = Field("crypto.trades", description="Kafka topic prefix; the topic of exchange X is "
                                                           "'<prefix>.X'.")
    topic_partitions: int = Field(3, description="Partitions per trade topic when the topic is created.")
    topic_replication: int = Field(1, description="Replication factor for created topics.")
    # --- Kafka -------------------------------------------------------------------------
    kafka_embedded: bool = Field(True, description="Start the embedded tansu broker with 'lakehouse up'.")
    kafka_host: str = Field("127.0.0.1", description="Host the embedded broker listens on.")
    kafka_port: int = Field(9092, description="Port the embedded broker listens on.")
    kafka_bootstrap: str = Field("", description="Kafka bootstrap servers; empty means the embedded broker's "
                                                 "host:port.")
    # --- schema registry ----------------------------------------------------------------
    schema_registry_url: str = Field("", description="Confluent Schema Registry URL; empty means the local store in "
                                                     "LAKEHOUSE_HOME.")
    schema_registry_timeout_s: float = Field(10.0, description="HTTP timeout for the schema registry.")
    schema_registry_basic_auth_user_info: str = Field("", description="Schema Registry basic auth as 'user:password'; "
                                                                      "empty means none.")
    schema_registry_ssl_ca_location: str = Field("", description="CA bundle that verifies the Schema Registry's TLS "
                                                                 "certificate; empty means the system's.")
    schema_registry_ssl_certificate_location: str = Field("", description="Client certificate for Schema Registry "
                                                                          "mutual TLS.")
    schema_registry_ssl_key_location: str = Field("", description="Private key of that client certificate.")
    # --- Iceberg catalog ------------------------------------------------------------------
    catalog_name: str = Field("lakehouse", description="Iceberg catalog name used by Spark and pyiceberg.")
    catalog_uri: str = Field("", description="JDBC URI of the Iceberg catalog; empty means SQLite in LAKEHOUSE_HOME.")
    catalog_user: str = Field("", description="Catalog database user (PostgreSQL).")
    catalog_password: str = Field("", description="Catalog database password (PostgreSQL).")
    warehouse: str = Field("", description="Warehouse location (file:// or s3://); empty means "
                                           "LAKEHOUSE_HOME/warehouse.")
    checkpoint_root: str = Field("", description="Root for streaming checkpoints; empty means "
                                                 "LAKEHOUSE_HOME/checkpoints.")
    s3_endpoint: str = Field("", description="S3-compatible endpoint (MinIO) for s3:// warehouses.")
    s3_access_key: str = Field("", description="S3 access key.")
    s3_secret_key: str = Field("", description="S3 secret key.")
    # --- Spark ---------------------------------------------------------------------------
    spark_master: str = Field("local[*]", description="Spark master URL.")
    spark_driver_memory: str = Field("2g", description="spark.driver.memory.")
    spark_executor_memory: str = Field("2g", description="spark.executor.memory (cluster modes).")
    spark_shuffle_partitions: int = Field(4, description="spark.sql.shuffle.partitions; small on a 2-core machine.")
    spark_sqlite_jdbc_jar: Path = Field(
        Path("/usr/share/java/sqlite-jdbc.jar"),
        description="SQLite JDBC driver jar (Debian libxerial-sqlite-jdbc-java).")
    spark_postgres_jdbc_jar: Path = Field(
        Path("/usr/share/java/postgresql.jar"),
        description="PostgreSQL JDBC driver jar (Debian libpostgresql-jdbc-java).")
    spark_extra_jars: tuple[str, ...] = Field((), description="Extra jars added to every Spark job (comma-separated).")
    spark_ui_enabled: bool = Field(False, description="Enable the Spark UI for jobs.")
    spark_driver_java_options: str = Field(
        "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        description="Extra JVM options of the Spark driver (and of local-mode executors). Layer runs are short: "
                    "C1-only JIT and the serial collector cut a run's start-up CPU by about a third.")
    spark_cds_archive: Path = Field(
        Path(sys.prefix) / "lakehouse-spark.jsa",
        description="JVM class-data-sharing archive of the Spark driver, built by 'make' ('lakehouse jvm-archive'); "
                    "used when the file exists, ignored by the JVM when it does not match the JDK or class path.")
    # --- layer tuning ----------------------------------------------------------------------
    bronze_max_records_per_run: int = Field(2_000_000, description="Admission cap: most Kafka records one Bronze run "
                                                                   "ingests.")
    bronze_records_per_task: int = Field(250_000, description="Offset-range size per Spark task when reading Kafka.")
    silver_max_files_per_batch: int = Field(200, description="Iceberg streaming admission cap for Silver (files per "
                                                             "micro-batch).")
    gold_max_files_per_batch: int = Field(200, description="Iceberg streaming admission cap for Gold (files per "
                                                           "micro-batch).")
    gold_poll_interval_s: float = Field(0.2, description="How often a Gold run checks whether it has reached the "
                                                         "Silver snapshot that was current when it started, seconds.")
    gold_watermark_minutes: int = Field(5, description="Event-time window in which Gold dedupes cheaply in-batch.")
    # --- maintenance (issue 13) ----------------------------------------------------------------
    maintenance_schedule: str = Field("@hourly", description="Schedule of the iceberg_maintenance DAG (cron or "
                                                             "Airflow preset).")
    dlq_retention_schedule: str = Field("@daily", description="Schedule of the dlq_retention DAG (cron or Airflow "
                                                              "preset).")
    snapshot_retention_hours: int = Field(24, description="Snapshots older than this are expired by maintenance "
                                                          "(never one a downstream stream still needs).")
    snapshot_retain_last: int = Field(100, description="Snapshots every table keeps whatever their age.")
    orphan_min_age_hours: float = Field(72.0, description="Files no snapshot references are deleted once older than "
                                                          "this; must exceed the longest task timeout plus a margin.")
    dlq_archive_days: int = Field(30, description="Dead-letter rows older than this move to silver_dlq_trades_archive.")
    dlq_purge_days: int = Field(90, description="Archived dead-letter rows older than this are deleted, files "
                                                "included.")
    # --- monitoring (issue 14): the pipeline_monitor DAG and its alert rules --------------------
    monitor_schedule: str = Field("* * * * *", description="Schedule of the pipeline_monitor DAG (cron or Airflow "
                                                           "preset).")
    alert_lag_warning_s: float = Field(120.0, description="Kafka lag into Bronze, seconds behind, that raises a "
                                                          "warning.")
    alert_lag_critical_s: float = Field(300.0, description="Kafka lag into Bronze, seconds behind, that is critical.")
    alert_dlq_rate_warning: float = Field(0.01, description="Dead-letter share of a layer's rows (0-1, over the DLQ "
                                                            "window) that raises a warning.")
    alert_dlq_rate_critical: float = Field(0.05, description="Dead-letter share of rows (0-1, over the DLQ window) "
                                                             "that is critical.")
    alert_dlq_window_minutes: int = Field(15, description="Window of the dead-letter rate, minutes (from snapshot "
                                                          "summaries).")
    alert_job_down_warning_s: float = Field(120.0, description="A layer with no progress for this long while its "
                                                               "input has new records is falling behind (warning), "
                                                               "seconds.")
    alert_job_down_critical_s: float = Field(300.0, description="A layer with no progress for this long while its "
                                                                "input has new records is down (critical), seconds.")
    alert_producer_down_warning_s: float = Field(300.0, description="A topic without a new record for this long "
                                                                    "raises a producer-down warning, seconds.")
    alert_for_s: float = Field(0.0, description="How long a threshold must hold before its alert fires, seconds.")
    alert_repeat_minutes: int = Field(60, description="A firing alert is notified again this often while it fires, "
                                                      "minutes.")
    # --- producers -----------------------------------------------------------------------
    producer_rate: float = Field(200.0, description="Default replay rate in trades/s per exchange for 'make run'.")
    producer_compression: str = Field("zstd", description="Kafka producer compression codec.")
    producer_linger_ms: int = Field(100, description="Kafka producer linger.ms. Fewer, larger record batches cost the "
                                                     "broker less per record (the embedded broker's fetches slow down "
                                                     "with the number of batches it holds); the layers run once a "
                                                     "minute, so 100 ms more latency here is invisible.")
    # --- observability ----------------------------------------------------------------------
    statsd_host: str = Field("127.0.0.1", description="StatsD host for metrics.")
    statsd_port: int = Field(8125, description="StatsD UDP port.")
    statsd_prefix: str = Field("lakehouse", description="Prefix of every metric name.")
    log_level: str = Field("INFO", description="Log level for jobs and services.")
    log_json: bool = Field(True, description="Structured JSON logs (true) or plain text (false).")
    # --- Airflow ------------------------------------------------------------------------------
    airflow_home: str = Field("", description="AIRFLOW_HOME for the embedded Airflow; empty means "
                                              "LAKEHOUSE_HOME/airflow.")
    airflow_port: int = Field(8080, description="Port of the embedded Airflow API server / UI.")
    airflow_parallelism: int = Field(4, description="Airflow core.parallelism for the embedded LocalExecutor.")
    airflow_spark_pool_slots: int = Field(2, description="Slots of the Airflow pool that bounds concurrent Spark "
                                                         "applications.")
    deadline_bronze_s: int = Field(90, description="Deadline after queueing for a Bronze DAG run, seconds.")
    deadline_silver_s: int = Field(120, description="Deadline after queueing for a Silver DAG run, seconds.")
    deadline_gold_s: int = Field(180, description="Deadline after queueing for a Gold DAG run, seconds.")
    # --- Airflow orchestration (issue 7: task policy, alerts) ---------------------------------
    airflow_task_retries: int = Field(2, description="Retries of a layer task before it fails and alerts.")
    airflow_retry_delay_s: int = Field(15, description="First retry delay of a layer task, seconds (doubles on each "
                                                       "retry).")
    airflow_max_retry_delay_s: int = Field(120, description="Upper bound of a layer task's retry delay, seconds.")
    airflow_task_timeout_s: int = Field(600, description="execution_timeout of one layer Spark task, seconds.")
    airflow_replay_timeout_s: int = Field(3600, description="execution_timeout of a manual replay task "
                                                            "(silver_replay, dlq_replay), seconds.")
    alert_webhook_timeout_s: float = Field(10.0, description="HTTP timeout of the alert webhook POST (connection "
                                                             "'lakehouse_alerts').")
    # --- Bronze ingestion (issue 4) -------------------------------------------------------------
    bronze_kafka_timeout_s: float = Field(60.0, description="Bronze fails when Kafka makes no progress for this long "
                                                            "(planning and reading).")
    bronze_branch_ttl_s: int = Field(600, description="Age after which a killed Bronze run's leftover Iceberg branch "
                                                      "is dropped, seconds.")
    bronze_crash_point: str = Field("", description="Fault injection for kill tests: SIGKILL the Bronze job at "
                                                    "before_write, after_write or after_commit; empty means off.")

    # --- Producers: live feeds, replay (issue 3) ----------------------------------------------
    producer_binance_ws_url: str = Field(
        "wss://stream.binance.com:9443",
        description="Binance spot websocket base URL; the client appends /stream?streams=....")
    producer_kraken_ws_url: str = Field("wss://ws.kraken.com/v2", description="Kraken spot WebSocket v2 URL.")
    producer_binance_symbols: tuple[str, ...] = Field(
        ("btcusdt", "ethusdt"),
        description="Binance symbols followed by 'lakehouse produce --live' by default.")
    producer_kraken_symbols: tuple[str, ...] = Field(
        ("BTC/USD", "ETH/USD"),
        description="Kraken symbols followed by 'lakehouse produce --live' by default.")
    producer_binance_time_unit: str = Field("MICROSECOND", description="timeUnit requested on Binance live streams: "
                                                                       "MILLISECOND or MICROSECOND.")
    producer_binance_quotes: tuple[str, ...] = Field(
        ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USDP", "DAI", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "GBP",
         "AUD", "JPY", "RUB", "UAH", "ZAR", "PLN", "RON", "ARS", "MXN", "COP", "CZK", "IDR", "BIDR", "IDRT",
         "NGN", "XRP", "TRX", "DOGE", "DOT", "PAX", "AEUR", "EURI"),
        description="Quote assets a Binance symbol may end with; the longest matching suffix is the currency.")
    producer_binance_max_connection_s: float = Field(84600.0, description="Age at which a Binance connection is "
                                                                          "replaced proactively (the server closes it "
                                                                          "at 24 h).")
    producer_rollover_overlap_s: float = Field(5.0, description="After a proactive reconnect, how long the old "
                                                                "connection keeps reading next to the new one.")
    producer_reconnect_min_s: float = Field(0.5, description="Reconnect backoff after the first failed attempt "
                                                             "(doubles, with jitter).")
    producer_reconnect_max_s: float = Field(30.0, description="Upper bound of the reconnect backoff.")
    producer_ping_interval_s: float = Field(20.0, description="Websocket keepalive ping interval.")
    producer_ping_timeout_s: float = Field(20.0, description="A ping without pong for this long closes the connection "
                                                             "(then reconnect).")
    producer_open_timeout_s: float = Field(10.0, description="Websocket connect and handshake timeout.")
    producer_dedupe_window: int = Field(100_000, description="Live mode: recent message_ids remembered to drop "
                                                             "repeats (Kraken snapshots, reconnect overlap).")
    producer_flush_timeout_s: float = Field(60.0, description="How long shutdown waits for Kafka to acknowledge "
                                                              "queued records.")
    producer_metrics_interval_s: float = Field(1.0, description="How often producer counters are sent to StatsD, "
                                                                "seconds.")
    # --- Silver: decode, validate, dead-letter, replay (issue 5) --------------------------------
    silver_max_rows_per_batch: int = Field(2_000_000, description="Admission cap of Silver micro-batches in Bronze "
                                                                  "rows (soft: whole files), next to "
                                                                  "silver_max_files_per_batch.")
    silver_rows_per_file: int = Field(500_000, description="Rows a Silver task buffers before it writes them as data "
                                                           "files (its memory bound: about 300 bytes a row).")
    silver_split_size_mb: int = Field(16, description="Bronze bytes per Silver task within a micro-batch (Iceberg "
                                                      "split size): smaller spreads a large batch over more cores, "
                                                      "larger writes fewer files.")
    silver_poll_interval_s: float = Field(0.2, description="How often a Silver run checks whether it has reached the "
                                                           "Bronze snapshot that was current when it started, "
                                                           "seconds.")
    max_clock_skew_s: float = Field(5.0, description="Tolerance of the future-timestamp rule: a trade may be stamped "
                                                     "up to this many seconds after the time its record reached "
                                                     "Bronze (clock skew between the exchange or producer and this "
                                                     "machine).")
    gold_crash_point: str = Field("", description="Fault injection for kill tests: SIGKILL the Gold job after_trades "
                                                  "(Gold trades committed, minute bars not); empty means off.")
    silver_fault_injection: str = Field("", description="Fault injection for kill-and-retry tests: fail each Silver "
                                                        "batch after_silver (Silver written, DLQ not) or after_both "
                                                        "(before the checkpoint commit); empty means off.")

    # --- sources -----------------------------------------------------------------------------
    def __init__(self, **values: Any) -> None:
        """Resolve from ``values``, then the environment and the TOML file; errors become :class:`SettingsError`."""
        origin = _ORIGIN.get()
        token = None
        if origin is None:
            # Built directly rather than by load_settings: os.environ is the environment, unless every
            # field is given (copies: replace()), which leaves nothing to resolve.
            origin = _Origin({} if values.keys() >= type(self).model_fields.keys() else os.environ)
            token = _ORIGIN.set(origin)
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise SettingsError(_one_line(err, origin, frozenset(values))) from err
        finally:
            if token is not None:
                _ORIGIN.reset(token)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then the resolution's environment, then its TOML file (no .env, no secrets dir)."""
        origin = _ORIGIN.get() or _Origin(os.environ)
        configured = origin.environ.get(CONFIG_VARIABLE)
        # The file is read first so that its errors come before the environment's, as they always have.
        config_file = (_ConfigFileSource(settings_cls, configured, origin),) if configured else ()
        return init_settings, _EnvironmentSource(settings_cls, origin.environ), *config_file

    # --- parsing and checks ------------------------------------------------------------------
    @field_validator("*", mode="before")
    @classmethod
    def _parse(cls, raw: object, info: ValidationInfo) -> object:
        """Environment strings, TOML values and Python values, parsed into the field's type."""
        return _FIELD_PARSERS[info.field_name](raw) if info.field_name else raw

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value if value.is_absolute() else value.resolve()

    @field_validator(*_PORTS)
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 < value < 65536:
            raise _Invalid(value, "must be a TCP port between 1 and 65535")
        return value

    @field_validator(*_POSITIVE)
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise _Invalid(value, "must be greater than zero")
        return value

    @field_validator(*_NOT_NEGATIVE)
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise _Invalid(value, "must be zero or positive")
        return value

    @field_validator("producer_dedupe_window")
    @classmethod
    def _dedupe_window(cls, value: int) -> int:
        if value < 0:
            raise _Invalid(value, "must be zero (off) or positive")
        return value

    @field_validator("exchanges")
    @classmethod
    def _exchanges(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise _Invalid(value, "at least one exchange is required")
        for exchange in value:
            if not exchange.isidentifier() or exchange.lower() != exchange:
                raise _Invalid(value, f"exchange name {exchange!r} must be a lower-case identifier")
        if len(set(value)) != len(value):
            raise _Invalid(value, "exchange names must be unique")
        return value

    @field_validator(*_CHOICES)
    @classmethod
    def _choice(cls, value: str, info: ValidationInfo) -> str:
        allowed, why = _CHOICES[str(info.field_name)]
        if (value.upper() if info.field_name == "log_level" else value) not in allowed:
            raise _Invalid(value, why)
        return value

    @field_validator("catalog_uri")
    @classmethod
    def _catalog_uri(cls, value: str) -> str:
        if value and not value.startswith("jdbc:"):
            raise _Invalid(value, "must be a JDBC URI such as jdbc:postgresql://host:5432/db")
        return value

    @field_validator("producer_binance_quotes")
    @classmethod
    def _quotes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not q.isalnum() or q.upper() != q for q in value):
            raise _Invalid(value, "must be a non-empty list of upper-case asset codes")
        return value

    @field_validator(*_WEBSOCKET_URLS)
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise _Invalid(value, "must be a ws:// or wss:// URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Checks across fields; the error names the field that has to move."""
        def bad(name: str, why: str) -> _Invalid:
            return _Invalid(getattr(self, name), why, field=name)

        if self.airflow_max_retry_delay_s < self.airflow_retry_delay_s:
            raise bad("airflow_max_retry_delay_s", "must not be smaller than LAKEHOUSE_AIRFLOW_RETRY_DELAY_S")
        if self.dlq_purge_days <= self.dlq_archive_days:
            raise bad("dlq_purge_days", f"must be greater than LAKEHOUSE_DLQ_ARCHIVE_DAYS ({self.dlq_archive_days})")
        shortest_orphan_age_s = max(self.airflow_task_timeout_s, self.airflow_replay_timeout_s) + ORPHAN_AGE_MARGIN_S
        if self.orphan_min_age_hours * 3600 < shortest_orphan_age_s:
            raise bad("orphan_min_age_hours", f"must be at least {shortest_orphan_age_s / 3600:.2f} hours (the "
                      f"longest task timeout plus {ORPHAN_AGE_MARGIN_S // 3600} h): a file a running job is writing "
                      f"must never be deleted")
        if self.alert_lag_critical_s < self.alert_lag_warning_s:
            raise bad("alert_lag_critical_s", f"must not be below LAKEHOUSE_ALERT_LAG_WARNING_S "
                      f"({self.alert_lag_warning_s})")
        if self.alert_job_down_critical_s < self.alert_job_down_warning_s:
            raise bad("alert_job_down_critical_s", f"must not be below LAKEHOUSE_ALERT_JOB_DOWN_WARNING_S "
                      f"({self.alert_job_down_warning_s})")
        if not self.alert_dlq_rate_warning <= self.alert_dlq_rate_critical <= 1:
            raise bad("alert_dlq_rate_critical", f"must be between LAKEHOUSE_ALERT_DLQ_RATE_WARNING "
                      f"({self.alert_dlq_rate_warning}) and 1")
        if self.producer_reconnect_max_s < self.producer_reconnect_min_s:
            raise bad("producer_reconnect_max_s", "must not be smaller than LAKEHOUSE_PRODUCER_RECONNECT_MIN_S")
        return self

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

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, parsed and checked like loaded values (the environment is not read again)."""
        return type(self)(**{**self.__dict__, **changes})

    def env(self) -> dict[str, str]:
        """These settings as LAKEHOUSE_* variables, so child processes see the same config."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            out[ENV_PREFIX + name.upper()] = text
        return out

    def as_dict(self) -> dict[str, object]:
        """Effective settings for ``lakehouse config``; secrets are masked."""
        out: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith(("password", "secret_key", "user_info")) and value:
                value = "***"
            out[name] = list(value) if isinstance(value, tuple) else (str(value) if isinstance(value, Path) else value)
        return out


def _field_parsers() -> dict[str, Callable[[object], object]]:
    parsers: dict[str, Callable[[object], object]] = {}
    for name, info in Settings.model_fields.items():
        if info.annotation not in _PARSERS:
            raise TypeError(f"setting {name!r}: no parser for type {info.annotation!r}")
        parsers[name] = _PARSERS[info.annotation]
    return parsers


_FIELD_PARSERS = _field_parsers()


def _one_line(err: ValidationError, origin: _Origin, init_keys: frozenset[str]) -> str:
    """pydantic's multi-line report as one line: each bad setting with its value and what is expected."""
    parts: list[str] = []
    for error in err.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, _Invalid):
            parts.append(f"{ENV_PREFIX}{(cause.field or name).upper()}={cause.value!r}: {cause}")
        elif isinstance(cause, _Unparsable):
            parts.append(f"{origin.label(name, init_keys)}={error['input']!r} is not a valid {cause.kind}: {cause}")
        elif error["type"] == "extra_forbidden":
            parts.append(f"{name!r} is not a known setting (see 'lakehouse config')")
        else:
            parts.append(f"{origin.label(name, init_keys)}={error['input']!r}: {error['msg']}")
    return "; ".join(parts)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the effective settings from defaults, the optional TOML file, then the environment.

    ``env`` replaces ``os.environ`` as the environment (tests pass their own mapping).
    """
    token = _ORIGIN.set(_Origin(os.environ if env is None else env))
    try:
        return Settings()
    finally:
        _ORIGIN.reset(token)


def setting_docs() -> dict[str, str]:
    """Field name -> one-line description, for ``lakehouse config --help``-style output."""
    return {name: info.description or "" for name, info in Settings.model_fields.items()}
