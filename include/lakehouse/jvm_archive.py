"""``lakehouse jvm-archive``: build the Spark driver's class-data-sharing (AppCDS) archive.

Every layer run is a new JVM that loads some 15,000 classes (Spark SQL, Iceberg, the JDBC
catalog) from jars. A dynamic CDS archive (JDK 13+) records the classes a representative run
loaded, already parsed and verified, in one file the next JVMs map at start; measured here it
cuts a Bronze run's start-up from about 5 to 3.5 CPU-seconds. ``make`` builds it after the
virtualenv, because it depends on the JDK and the jar paths; ``lakehouse.spark`` uses it when the
file exists, and the JVM ignores a mismatching archive.

The training run (this module run by ``spark-submit``) touches what the layer jobs touch, in a
throwaway home: the JDBC catalog, table DDL and appends, branches and ``fast_forward``, a MERGE,
an Iceberg stream with ``availableNow`` and ``foreachBatch``, and an Arrow Python UDF.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lakehouse.settings import Settings

log = logging.getLogger(__name__)

TRAINING_TIMEOUT_S = 600.0


class ArchiveError(RuntimeError):
    """The archive could not be built; the message has the tail of the training run's output."""


def build(settings: Settings, timeout_s: float = TRAINING_TIMEOUT_S) -> Path:
    """Run the training job with ``-XX:ArchiveClassesAtExit`` and move the archive into place."""
    from lakehouse.spark import driver_java_options, jars, local_environment, spark_conf, spark_submit_binary

    target = settings.spark_cds_archive
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lakehouse-jvm-archive-") as tmp:
        home = Path(tmp) / "home"
        scratch = settings.replace(home=home, catalog_uri="", warehouse="", checkpoint_root="")
        dump = Path(tmp) / "spark.jsa"
        conf = spark_conf(scratch)
        conf["spark.driver.extraJavaOptions"] = (driver_java_options(scratch, archive=False)
                                                 + f" -XX:ArchiveClassesAtExit={dump} -Xlog:cds=off"
                                                 + " -Xlog:cds+dynamic=off")
        argv = [spark_submit_binary(), "--master", settings.spark_master, "--name", "lakehouse-jvm-archive",
                "--jars", ",".join(jars(scratch))]
        for key, value in conf.items():
            argv += ["--conf", f"{key}={value}"]
        argv.append(str(Path(__file__)))
        env = dict(local_environment(scratch, scratch.env()))
        env = {**os.environ, **env}
        try:
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=tmp,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise ArchiveError(f"the training run did not finish within {timeout_s:.0f}s") from err
        if done.returncode != 0 or not dump.is_file():
            tail = "\n".join(done.stdout.strip().splitlines()[-10:])
            raise ArchiveError(f"the training run exited with {done.returncode} and wrote no archive:\n{tail}")
        if dump.stat().st_dev == target.parent.stat().st_dev:
            os.replace(dump, target)
        else:
            _copy(dump, target)
    return target


def _copy(source: Path, target: Path) -> None:
    """Copy across file systems, then rename: a JVM starting meanwhile sees the old or the new file."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    partial.write_bytes(source.read_bytes())
    os.replace(partial, target)


def _train() -> None:
    """What the layer jobs do, on a few rows (runs inside spark-submit)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from lakehouse.catalog import prepare_catalog_db
    from lakehouse.settings import load_settings
    from lakehouse.spark import session

    settings = load_settings()
    prepare_catalog_db(settings)
    spark = session(settings, "lakehouse-jvm-archive")
    try:
        spark.sql("CREATE NAMESPACE IF NOT EXISTS train")
        spark.sql("CREATE TABLE train.t (id BIGINT, v STRING, ts TIMESTAMP) USING iceberg "
                  "PARTITIONED BY (days(ts)) TBLPROPERTIES ('format-version'='2')")
        spark.sql("INSERT INTO train.t VALUES (1, 'a', current_timestamp()), (2, 'b', current_timestamp())")
        spark.sql("ALTER TABLE train.t CREATE BRANCH b1")
        spark.sql("INSERT INTO train.t.branch_b1 VALUES (3, 'c', current_timestamp())")
        spark.sql(f"CALL {settings.catalog_name}.system.fast_forward('train.t', 'main', 'b1')")
        spark.sql("ALTER TABLE train.t DROP BRANCH b1")
        spark.sql("MERGE INTO train.t AS g USING (SELECT 4 AS id, 'd' AS v, current_timestamp() AS ts) AS s "
                  "ON g.id = s.id WHEN NOT MATCHED THEN INSERT *")
        spark.sql("CREATE TABLE train.u (id BIGINT, n BIGINT) USING iceberg")

        def batch(frame, batch_id: int) -> None:  # type: ignore[no-untyped-def]
            frame.groupBy("id").count().withColumnRenamed("count", "n").writeTo(f"{settings.catalog_name}.train.u") \
                .append()

        checkpoint = f"{settings.checkpoint_uri.rstrip('/')}/train"
        query = (spark.readStream.format("iceberg").load(f"{settings.catalog_name}.train.t").writeStream
                 .option("checkpointLocation", checkpoint).trigger(availableNow=True).foreachBatch(batch).start())
        query.awaitTermination()

        def double(batches):  # type: ignore[no-untyped-def]
            for b in batches:
                yield pa.RecordBatch.from_arrays([pc.multiply(b.column(0), 2)], names=["id"])

        spark.range(0, 1000, 1, 2).mapInArrow(double, "id long").agg({"id": "sum"}).collect()
        spark.table("train.u").join(spark.table("train.t"), "id").count()
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(_train())
