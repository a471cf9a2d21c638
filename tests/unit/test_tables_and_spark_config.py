"""Table definitions (declared once) and the Spark configuration every job uses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pyiceberg.types import DecimalType, ListType, MapType, NestedField

from lakehouse import names, tables
from lakehouse.catalog import sqlalchemy_uri
from lakehouse.settings import SettingsError, load_settings
from lakehouse.spark import SPARK_JOBS_DIR, SparkSetupError, jars, spark_conf, submit_spec

V2_FIELDS = ["message_id", "trade_id", "symbol", "exchange", "asset_class", "timestamp", "price", "quantity",
             "currency", "side", "trade_conditions", "source_sequence", "ingestion_timestamp",
             "platform_sequence", "vendor_data"]


def _all_ids(fields: tuple[NestedField, ...]) -> list[int]:
    ids = []
    for f in fields:
        ids.append(f.field_id)
        t = f.field_type
        if isinstance(t, ListType):
            ids.append(t.element_id)
        elif isinstance(t, MapType):
            ids += [t.key_id, t.value_id]
        if hasattr(t, "fields"):
            ids += _all_ids(t.fields)
        if isinstance(t, ListType) and hasattr(t.element_type, "fields"):
            ids += _all_ids(t.element_type.fields)
    return ids


def test_every_table_of_the_design_is_declared() -> None:
    settings = load_settings({})
    declared = [d.name for d in tables.table_defs(settings)]
    assert declared == names.all_tables(settings)
    assert {"market_data.bronze_binance_trades", "market_data.bronze_kraken_trades",
            "market_data.silver_binance_trades", "market_data.silver_kraken_trades",
            "market_data.silver_dlq_trades", "market_data.gold_crypto_trades"} <= set(declared)


def test_field_ids_are_unique() -> None:
    for d in tables.table_defs(load_settings({})):
        ids = _all_ids(d.schema().fields)
        assert len(ids) == len(set(ids)), d.name


def test_v2_fields_and_types() -> None:
    silver = tables.silver_def("binance").schema()
    gold = tables.GOLD_DEF.schema()
    assert [f.name for f in silver.fields][:15] == V2_FIELDS
    assert [f.name for f in gold.fields][:15] == V2_FIELDS
    assert silver.find_field("price").field_type == DecimalType(18, 8)
    assert str(gold.find_field("vendor_data").field_type) == "string"  # JSON string in Gold
    assert isinstance(silver.find_field("vendor_data").field_type, MapType)


def test_partitioning_matches_the_design() -> None:
    def spec(d: tables.TableDef) -> list[str]:
        schema = d.schema()
        return [f"{schema.find_field(p.source_id).name}:{p.transform}" for p in d.partition_spec(schema).fields]

    assert spec(tables.bronze_def("kraken")) == ["ingestion_timestamp:day"]
    assert spec(tables.silver_def("kraken")) == ["exchange_date:identity"]
    assert spec(tables.DLQ_DEF) == ["dlq_date:identity", "bronze_source:identity", "error_type:identity"]
    assert spec(tables.GOLD_DEF) == ["exchange_date:identity", "exchange_hour:identity"]


def test_spark_schema_is_derived_from_the_iceberg_schema() -> None:
    from pyspark.sql import types as T

    bronze = tables.spark_schema(tables.bronze_def("binance"))
    assert bronze["value"].dataType == T.BinaryType()
    assert bronze["offset"].dataType == T.LongType() and not bronze["offset"].nullable
    assert bronze["headers"].dataType == T.ArrayType(T.StructType([
        T.StructField("key", T.StringType()), T.StructField("value", T.BinaryType())]))
    silver = tables.spark_schema(tables.silver_def("binance"))
    assert silver["price"].dataType == T.DecimalType(18, 8)
    assert silver["vendor_data"].dataType == T.MapType(T.StringType(), T.StringType())


def test_spark_conf_points_every_job_at_the_same_catalog(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path), "LAKEHOUSE_CATALOG_NAME": "lh"})
    conf = spark_conf(settings)
    assert conf["spark.sql.catalog.lh.uri"] == f"jdbc:sqlite:{tmp_path / 'catalog.db'}"
    assert conf["spark.sql.catalog.lh.jdbc.schema-version"] == "V1"
    assert conf["spark.sql.defaultCatalog"] == "lh"
    # Executors and the driver run this virtualenv's interpreter (the one with lakehouse installed),
    # not whichever "python" is first on the PATH.
    assert conf["spark.pyspark.python"] == conf["spark.pyspark.driver.python"] == sys.executable
    assert any(j.endswith("iceberg-spark-runtime-3.5_2.12-1.10.2.jar") for j in jars(settings))


def test_submit_spec_is_what_spark_submit_runs(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path)})
    spec = submit_spec(settings, "bronze", ["--exchange", "kraken"])
    argv = spec.argv("spark-submit")
    assert argv[:3] == ["spark-submit", "--master", "local[*]"]
    assert argv[-3:] == [str(SPARK_JOBS_DIR / "bronze_job.py"), "--exchange", "kraken"]
    assert f"spark.sql.catalog.lakehouse.warehouse={(tmp_path / 'warehouse').as_uri()}" in argv
    assert spec.env["LAKEHOUSE_HOME"] == str(tmp_path)
    assert spec.name == "lakehouse-bronze-kraken"
    with pytest.raises(SettingsError, match="unknown Spark job"):
        submit_spec(settings, "platinum")


def test_missing_jdbc_driver_is_one_clear_line(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_SPARK_SQLITE_JDBC_JAR": str(tmp_path / "nope.jar")})
    with pytest.raises(SparkSetupError, match="apt-get install libxerial-sqlite-jdbc-java"):
        jars(settings)


def test_postgres_catalog_translation() -> None:
    settings = load_settings({"LAKEHOUSE_CATALOG_URI": "jdbc:postgresql://db:5432/lake",
                              "LAKEHOUSE_CATALOG_USER": "ice", "LAKEHOUSE_CATALOG_PASSWORD": "p@ss"})
    assert sqlalchemy_uri(settings) == "postgresql+psycopg2://ice:p%40ss@db:5432/lake"
    conf = spark_conf(settings)
    assert conf["spark.sql.catalog.lakehouse.jdbc.user"] == "ice"
    assert "spark.sql.catalog.lakehouse.jdbc.busy_timeout" not in conf


def test_driver_jvm_maps_the_class_archive_only_when_make_built_it(tmp_path: Path) -> None:
    from lakehouse.spark import driver_java_options, spark_conf

    archive = tmp_path / "spark.jsa"
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path), "LAKEHOUSE_SPARK_CDS_ARCHIVE": str(archive)})
    options = spark_conf(settings)["spark.driver.extraJavaOptions"]
    assert "-XX:TieredStopAtLevel=1" in options and "-XX:+UseSerialGC" in options
    assert "SharedArchiveFile" not in options and "log4j.configurationFile" in options
    archive.write_bytes(b"x")
    options = driver_java_options(settings)
    assert f"-XX:SharedArchiveFile={archive}" in options and "-Xshare:auto" in options
    assert "SharedArchiveFile" not in driver_java_options(settings, archive=False)
    # Executors (other machines in cluster modes) never get the driver's archive.
    assert "SharedArchiveFile" not in spark_conf(settings)["spark.executor.extraJavaOptions"]
    custom = load_settings({"LAKEHOUSE_HOME": str(tmp_path), "LAKEHOUSE_SPARK_DRIVER_JAVA_OPTIONS": "-Xss4m"})
    assert "-Xss4m" in driver_java_options(custom) and "TieredStopAtLevel" not in driver_java_options(custom)


def test_python_workers_fork_from_a_daemon_that_preloaded_the_task_modules() -> None:
    import subprocess

    from lakehouse import spark_daemon
    from lakehouse.spark import DAEMON_MODULE, spark_conf

    assert spark_conf(load_settings({}))["spark.python.daemon.module"] == DAEMON_MODULE == spark_daemon.__name__
    probe = ("import sys; from lakehouse.spark_daemon import preload; missing = preload(); "
             "print(missing, all(m in sys.modules for m in ('lakehouse.bronze.tasks', 'lakehouse.silver.tasks', "
             "'pyiceberg.io.pyarrow')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[] True"
    assert spark_daemon.preload(("lakehouse.no_such_module",)) == ["lakehouse.no_such_module"]
