"""Spark configuration used by every job, the CLI, Airflow and the tests.

One builder produces the jars, the Iceberg catalog configuration and the local defaults;
:func:`submit_spec` turns a layer into the exact ``spark-submit`` that both
``lakehouse run`` and Airflow's ``SparkSubmitOperator`` execute.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from lakehouse.catalog import SQLITE_BUSY_TIMEOUT_MS, prepare_catalog_db
from lakehouse.settings import REPO_ROOT, Settings, SettingsError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ICEBERG_JAR = "iceberg-spark-runtime-3.5_2.12-1.10.2.jar"
SPARK_JOBS_DIR = REPO_ROOT / "spark_jobs"
LOG4J_CONF = Path(__file__).with_name("conf") / "log4j2.properties"
DAEMON_MODULE = "lakehouse.spark_daemon"


class SparkSetupError(RuntimeError):
    """A jar or setting Spark needs is missing; the message says what to install."""


def iceberg_runtime_jar() -> Path:
    try:
        jar = resources.files("snowpark_connect_deps_iceberg").joinpath("jars", ICEBERG_JAR)
    except ModuleNotFoundError as err:
        raise SparkSetupError("Iceberg runtime missing: pip install snowpark-connect-deps-iceberg==1.0.2") from err
    path = Path(str(jar))
    if not path.is_file():
        raise SparkSetupError(f"{ICEBERG_JAR} not found in snowpark-connect-deps-iceberg: install version 1.0.2")
    return path


def jars(settings: Settings) -> list[str]:
    out = [str(iceberg_runtime_jar())]
    drivers = {settings.spark_sqlite_jdbc_jar: "libxerial-sqlite-jdbc-java",
               settings.spark_postgres_jdbc_jar: "libpostgresql-jdbc-java"}
    needed = settings.spark_sqlite_jdbc_jar if settings.catalog_is_sqlite else settings.spark_postgres_jdbc_jar
    if not needed.is_file():
        raise SparkSetupError(f"JDBC driver {needed} not found: apt-get install {drivers[needed]}")
    # Both drivers when present, so one JVM can open an embedded and a production catalog.
    out += [str(jar) for jar in drivers if jar.is_file()]
    out += list(settings.spark_extra_jars)
    return out


def spark_conf(settings: Settings) -> dict[str, str]:
    """Every Spark setting except jars and master, as strings (spark-submit --conf pairs)."""
    cat = f"spark.sql.catalog.{settings.catalog_name}"
    conf = {
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        cat: "org.apache.iceberg.spark.SparkCatalog",
        f"{cat}.type": "jdbc",
        f"{cat}.uri": settings.catalog_jdbc_uri,
        f"{cat}.jdbc.schema-version": "V1",
        f"{cat}.warehouse": settings.warehouse_uri,
        # Other processes (pyiceberg, other jobs) commit to the same tables: always read fresh metadata.
        f"{cat}.cache-enabled": "false",
        "spark.sql.defaultCatalog": settings.catalog_name,
        # Python workers must import the project's virtualenv, not the system interpreter.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.executor.memory": settings.spark_executor_memory,
        "spark.ui.enabled": str(settings.spark_ui_enabled).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.streaming.minBatchesToRetain": "20",
        "spark.sql.iceberg.handle-timestamp-without-timezone": "true",
        "spark.driver.extraJavaOptions": driver_java_options(settings),
        "spark.executor.extraJavaOptions": f"-Dlog4j.configurationFile=file:{LOG4J_CONF}",
        # Python workers fork from a daemon that has already imported the task modules (pyarrow,
        # pyiceberg's writer, fastavro, confluent-kafka): each worker would otherwise pay the imports.
        "spark.python.daemon.module": DAEMON_MODULE,
    }
    if settings.catalog_is_sqlite:
        # Iceberg's JDBC catalog hands its jdbc.* properties, prefix removed, to the driver's connect; xerial's
        # driver reads the busy_timeout pragma from them (its default is 3 s): concurrent committers wait for
        # the database lock as long as pyiceberg's do, then fail instead of hanging.
        conf[f"{cat}.jdbc.busy_timeout"] = str(SQLITE_BUSY_TIMEOUT_MS)
        # The catalog tables are created by lakehouse.catalog.prepare_catalog_db (see why there).
        conf[f"{cat}.jdbc.init-catalog-tables"] = "false"
    elif settings.catalog_user:
        conf[f"{cat}.jdbc.user"] = settings.catalog_user
    if settings.warehouse_uri.startswith("s3"):
        conf.update({
            f"{cat}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
            f"{cat}.s3.endpoint": settings.s3_endpoint,
            f"{cat}.s3.path-style-access": "true",
        })
    return conf


def secret_conf(settings: Settings) -> dict[str, str]:
    """The Spark settings that are credentials (catalog password, S3 keys).

    They never travel as ``--conf`` arguments, which every local user can read in ``ps``: they
    reach Spark through :func:`secrets_file` instead. Spark keeps them out of its UI and event log
    by its default ``spark.redaction.regex`` (secret, password, access.key).
    """
    cat = f"spark.sql.catalog.{settings.catalog_name}"
    conf: dict[str, str] = {}
    if not settings.catalog_is_sqlite and settings.catalog_password:
        conf[f"{cat}.jdbc.password"] = settings.catalog_password
    if settings.warehouse_uri.startswith("s3"):
        if settings.s3_access_key:
            conf[f"{cat}.s3.access-key-id"] = settings.s3_access_key
        if settings.s3_secret_key:
            conf[f"{cat}.s3.secret-access-key"] = settings.s3_secret_key
    return conf


SECRETS_FILE = "spark-secrets.properties"


def secrets_file(settings: Settings) -> Path | None:
    """Write :func:`secret_conf` as a properties file only its owner can read; None when there are none.

    ``spark-submit --properties-file`` loads it: the command line names the file, not the values.
    The file lives in the private home's run directory, is written whole (temporary file, then
    rename, so a concurrent submit never reads half of it) and only when its content changes.
    """
    conf = secret_conf(settings)
    if not conf:
        return None
    settings.private_home()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = settings.run_dir / SECRETS_FILE
    text = "".join(f"{_escape_property(key)}={_escape_property(value)}\n" for key, value in sorted(conf.items()))
    try:
        if path.read_text(encoding="utf-8") == text and path.stat().st_mode & 0o077 == 0:
            return path
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{SECRETS_FILE}.", dir=settings.run_dir)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _escape_property(text: str) -> str:
    """``java.util.Properties`` escaping: backslashes, separators, line breaks, leading spaces."""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    out = out.replace("=", "\\=").replace(":", "\\:").replace("#", "\\#").replace("!", "\\!")
    return "\\ " + out[1:] if out.startswith(" ") else out


def driver_java_options(settings: Settings, archive: bool = True) -> str:
    """JVM options of the driver: the log configuration, ``spark_driver_java_options`` and, when
    ``make`` has built it, the class-data-sharing archive (``lakehouse jvm-archive``).

    The archive maps the classes a layer run loads (Spark SQL, Iceberg, the JDBC catalog) from one
    file instead of reading, verifying and linking them from jars at every start. The JVM checks
    that it matches the JDK and class path and otherwise ignores it (``-Xshare:auto``), so a stale
    archive costs speed, never correctness; its log lines are switched off.
    """
    options = [f"-Dlog4j.configurationFile=file:{LOG4J_CONF}", settings.spark_driver_java_options.strip()]
    if archive and settings.spark_cds_archive.is_file():
        options += ["-Xshare:auto", f"-XX:SharedArchiveFile={settings.spark_cds_archive}", "-Xlog:cds=off",
                    "-Xlog:cds+dynamic=off", "-Xlog:class+path=off"]
    return " ".join(o for o in options if o)


def local_environment(settings: Settings, env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Process environment for a local-mode Spark driver: bind to loopback, the project's Python."""
    if settings.spark_master.startswith("local"):
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    return env


def session(settings: Settings, app_name: str) -> SparkSession:
    """A SparkSession with the project's configuration (used by jobs and tests)."""
    from pyspark.sql import SparkSession

    from lakehouse.adapters.spark import jvm_gateway

    local_environment(settings, os.environ)
    prepare_catalog_db(settings)
    conf = spark_conf(settings)
    launch_args = os.environ.get("PYSPARK_SUBMIT_ARGS")
    if jvm_gateway() is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
        # This process starts the JVM, and pyspark passes every builder setting to it as a --conf
        # argument (launch_gateway), visible in ps: the credentials go in by file instead.
        secrets = secrets_file(settings)
        if secrets is not None:
            os.environ["PYSPARK_SUBMIT_ARGS"] = (f"--properties-file {shlex.quote(str(secrets))} "
                                                 f"{launch_args or 'pyspark-shell'}")
    else:
        # The JVM exists (under spark-submit, or an earlier session here): settings travel over py4j.
        conf.update(secret_conf(settings))
    builder = SparkSession.builder.appName(app_name).master(settings.spark_master)
    builder = builder.config("spark.jars", ",".join(jars(settings)))
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    finally:
        if launch_args is None:
            os.environ.pop("PYSPARK_SUBMIT_ARGS", None)
        else:
            os.environ["PYSPARK_SUBMIT_ARGS"] = launch_args
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextmanager
def temp_view(df: DataFrame, prefix: str) -> Iterator[str]:
    """``df`` as a uniquely named temporary view (for SQL such as MERGE), dropped afterwards.

    A unique name keeps concurrent uses in one session apart. A DataFrame that ``spark.sql``
    built on the view inside the block still works after the drop: the view was resolved into
    its plan when ``spark.sql`` analyzed the query.
    """
    name = f"{prefix}_{uuid.uuid4().hex}"
    df.createOrReplaceTempView(name)
    try:
        yield name
    finally:
        df.sparkSession.catalog.dropTempView(name)


@dataclass(frozen=True)
class SubmitSpec:
    """Everything one ``spark-submit`` needs; Airflow and the CLI both build from this."""

    name: str
    application: str
    application_args: list[str]
    conf: dict[str, str]
    jars: list[str]
    master: str
    env: dict[str, str] = field(default_factory=dict)
    properties_file: str | None = None  # the credentials (secrets_file), read by spark-submit

    def argv(self, spark_submit: str = "spark-submit") -> list[str]:
        cmd = [spark_submit, "--master", self.master, "--name", self.name, "--jars", ",".join(self.jars)]
        if self.properties_file:
            cmd += ["--properties-file", self.properties_file]
        for key, value in self.conf.items():
            cmd += ["--conf", f"{key}={value}"]
        return cmd + [self.application, *self.application_args]


JOBS = {"bronze": "bronze_job.py", "silver": "silver_job.py", "gold": "gold_job.py",
        "maintenance": "maintenance_job.py"}


def submit_spec(settings: Settings, job: str, args: list[str] | None = None, name: str | None = None) -> SubmitSpec:
    """The spark-submit of one job (``bronze``, ``silver``, ``gold``, ...) with its arguments."""
    if job not in JOBS:
        raise SettingsError(f"unknown Spark job {job!r}; expected one of {sorted(JOBS)}")
    args = list(args or [])
    secrets = secrets_file(settings)
    return SubmitSpec(
        name=name or "-".join(["lakehouse", job, *[a for a in args if not a.startswith("-")]]),
        application=str(SPARK_JOBS_DIR / JOBS[job]),
        application_args=args,
        conf=spark_conf(settings),
        jars=jars(settings),
        master=settings.spark_master,
        env=dict(local_environment(settings, settings.env())),
        properties_file=str(secrets) if secrets else None,
    )


def spark_submit_binary() -> str:
    """The spark-submit of the pyspark installed next to this interpreter."""
    candidate = Path(sys.executable).with_name("spark-submit")
    if candidate.exists():
        return str(candidate)
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")
