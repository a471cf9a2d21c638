"""The distributed path, run for real: a Spark standalone master and worker started from pyspark's own
``bin/spark-class`` on 127.0.0.1, the Iceberg catalog on the local PostgreSQL server.

Bronze and Silver run through ``lakehouse run`` and Gold through the Airflow task (its master from
the ``spark_default`` connection), all with ``LAKEHOUSE_SPARK_MASTER=spark://127.0.0.1:<port>``. Their
tables must equal those of a local-mode run of the same jobs on the same Kafka records, in a
catalog of their own. Executors are separate JVMs with their own Python workers: nothing may depend on
sharing the driver's process. The catalog password travels to Spark by file, never on a command line:
every process's command line is sampled while the cluster runs.

Skips with the reason where PostgreSQL or its JDBC driver is absent. ``make test-spark-cluster`` runs it alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import PG, free_port, postgres_databases
from confluent_kafka import Producer

from lakehouse import names, tables
from lakehouse.catalog import load_catalog
from lakehouse.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

# Trust authentication ignores it; it is here to prove it never shows on a command line.
CATALOG_PASSWORD = f"pw-{uuid.uuid4().hex[:12]}:with=separators#"
TRADES = 1200
CORRUPT = 3  # per exchange: raw bytes that are no Avro record, so each run also writes dead letters
# Columns holding when a run happened rather than what it computed.
RUN_TIME_COLUMNS = {"ingestion_timestamp", "validation_timestamp", "dlq_timestamp", "dlq_date",
                    "gold_ingestion_timestamp", "updated_at"}
BRONZE_RUN_TIME = {"ingestion_timestamp"}  # in Silver and Gold this name is the producer's receipt time


@dataclass
class Cluster:
    master_url: str
    ui_url: str
    work_dir: Path


def _spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def _json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


@contextmanager
def standalone_cluster(root: Path) -> Iterator[Cluster]:
    """A master and one worker (2 cores, 2 GiB) on 127.0.0.1, stopped (process groups) at exit."""
    port, ui, worker_ui = free_port(), free_port(), free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(root / "logs"),
           "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
    (root / "logs").mkdir(parents=True)
    work = root / "work"
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with open(root / "logs" / f"{name}.out", "wb") as out:
            procs.append(subprocess.Popen([str(_spark_class()), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True))

    master_url = f"spark://127.0.0.1:{port}"
    ui_url = f"http://127.0.0.1:{ui}"
    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
              "--webui-port", str(ui))
        start("worker", "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
              "--webui-port", str(worker_ui), "--cores", "2", "--memory", "2g", "--work-dir", str(work))
        deadline = time.monotonic() + 90
        while True:
            try:
                if any(w.get("state") == "ALIVE" for w in _json(f"{ui_url}/json/").get("workers", [])):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join((root / "logs" / f"{n}.out").read_text()[-2000:] for n in ("master", "worker"))
                raise AssertionError(f"standalone cluster did not come up:\n{logs}")
            time.sleep(0.5)
        yield Cluster(master_url, ui_url, work)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class CommandLineWatch:
    """Samples every process's command line (what ``ps`` shows) and remembers any holding a secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.leaks: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples += 1
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    raw = cmdline.read_bytes()
                except OSError:
                    continue
                if self.secret in raw:
                    self.leaks.append(raw.replace(b"\0", b" ").decode(errors="replace")[:300])


@pytest.fixture()
def databases() -> Iterator[tuple[str, str]]:
    """Two empty PostgreSQL databases: the local-mode run's catalog and the cluster run's."""
    with postgres_databases("lakehouse_local", "lakehouse_cluster") as (local, cluster):
        yield local, cluster


def _on(base: Settings, root: Path, db: str, **extra: str) -> dict[str, str]:
    """The environment of one run: the shared broker and registry, its own catalog, warehouse and checkpoints."""
    return {**base.env(), "LAKEHOUSE_CATALOG_URI": f"jdbc:postgresql://{PG['host']}:{PG['port']}/{db}",
            "LAKEHOUSE_CATALOG_USER": PG["user"], "LAKEHOUSE_CATALOG_PASSWORD": CATALOG_PASSWORD,
            "LAKEHOUSE_WAREHOUSE": (root / "warehouse").as_uri(),
            "LAKEHOUSE_CHECKPOINT_ROOT": (root / "checkpoints").as_uri(), **extra}


def _produce(settings: Settings, tmp: Path) -> None:
    """Recorded-format trades of every exchange through the real producer, plus corrupt records."""
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)).isoformat()
    env = {**os.environ, **settings.env()}
    for i, exchange in enumerate(settings.exchanges):
        recording = tmp / f"{exchange}.jsonl"
        for argv in (["generate", "--exchange", exchange, "--trades", str(TRADES), "--out", str(recording),
                      "--seed", str(i + 7), "--start", start],
                     ["produce", "--exchange", exchange, "--replay", str(recording)]):
            done = subprocess.run([sys.executable, "-m", "lakehouse", *argv], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    for exchange in settings.exchanges:
        for n in range(CORRUPT):
            producer.produce(names.topic(settings, exchange), value=b"not avro %d" % n, key=b"corrupt")
    assert producer.flush(30) == 0


def _lakehouse_run(env: dict[str, str], layer: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lakehouse", "run", layer], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"lakehouse run {layer}: {done.stderr[-3000:]}"


def _airflow_task(env: dict[str, str], tmp: Path, layer: str) -> dict[str, Any]:
    """The layer DAG's own task, executed in a process of its own: the master comes from the
    ``spark_default`` connection, as the scheduler's worker would run it."""
    script = ("import json, sys\n"
              "from airflow.dag_processing.dagbag import DagBag\n"
              "from lakehouse import names\n"
              "from lakehouse.orchestration.environment import DAGS_FOLDER\n"
              "dag_id = {'bronze': names.BRONZE_DAG, 'silver': names.SILVER_DAG, 'gold': names.GOLD_DAG}[sys.argv[1]]\n"
              "task = DagBag(dag_folder=str(DAGS_FOLDER)).dags[dag_id].task_dict[sys.argv[1]]\n"
              "print('XCOM ' + json.dumps(task.execute(context={})))\n")
    airflow_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LAKEHOUSE_"))}
    airflow_env.update(env)
    airflow_env.update({"AIRFLOW_HOME": str(tmp / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    done = subprocess.run([sys.executable, "-c", script, layer], env=airflow_env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"Airflow {layer} task: {done.stderr[-3000:]}"
    line = next(x for x in done.stdout.splitlines() if x.startswith("XCOM "))
    return json.loads(line[len("XCOM "):])


def _run_locally(spark: Any, settings: Settings) -> None:
    """The same jobs in local mode, in this test run's Spark session (the catalog registers at run time)."""
    from lakehouse.bronze.run import run_bronze
    from lakehouse.gold.job import run as gold_run
    from lakehouse.silver.job import run as silver_run
    from lakehouse.spark import session

    tables.ensure_tables(settings)
    spark = session(settings, "lakehouse-local-reference")
    for exchange in settings.exchanges:
        run_bronze(spark, settings, exchange)
    for exchange in settings.exchanges:
        silver_run(spark, settings, exchange)
    gold_run(spark, settings)


def _contents(settings: Settings, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` without its run-time columns, in a stable order."""
    data = load_catalog(settings).load_table(table).scan().to_arrow()
    drop = BRONZE_RUN_TIME if table.startswith(f"{names.NAMESPACE}.bronze_") else RUN_TIME_COLUMNS
    data = data.drop_columns([c for c in data.column_names if c in drop])
    return sorted(data.to_pylist(), key=lambda row: json.dumps(row, sort_keys=True, default=str))


@pytest.mark.slow  # ~2 min with a whole master and worker: make test-slow and make test-spark-cluster
def test_cluster_run_equals_local_run(isolated: Settings, databases: tuple[str, str], spark: Any,
                                      tmp_path: Path) -> None:
    local_db, cluster_db = databases
    local = load_settings(_on(isolated, tmp_path / "local", local_db,
                              LAKEHOUSE_CATALOG_NAME=f"lh_cl_{local_db[-8:]}"))
    if not local.spark_postgres_jdbc_jar.is_file():
        pytest.skip(f"{local.spark_postgres_jdbc_jar} missing: apt-get install libpostgresql-jdbc-java")
    _produce(isolated, tmp_path)

    _run_locally(spark, local)

    with standalone_cluster(tmp_path / "spark") as cluster:
        env = _on(isolated, tmp_path / "cluster", cluster_db, LAKEHOUSE_SPARK_MASTER=cluster.master_url,
                  LAKEHOUSE_SPARK_EXECUTOR_MEMORY="1g")
        remote = load_settings(env)
        tables.ensure_tables(remote)
        host, _, port = cluster.master_url.rpartition(":")
        env_airflow = {**env, "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": host,
                                                                         "port": int(port)})}
        with CommandLineWatch(CATALOG_PASSWORD) as watch:
            _lakehouse_run(env, "bronze")
            _lakehouse_run(env, "silver")
            xcom = _airflow_task(env_airflow, tmp_path, "gold")
        apps = _json(f"{cluster.ui_url}/json/").get("completedapps", [])

    assert watch.samples > 10 and watch.leaks == [], watch.leaks[:3]
    assert xcom["exchanges"], xcom
    # Every layer ran as an application of the cluster, on executors the worker started.
    assert sorted(a["name"] for a in apps) == ["lakehouse-bronze", "lakehouse-gold", "lakehouse-silver"], apps
    assert all(a["state"] == "FINISHED" for a in apps), apps
    executor_dirs = [d for d in cluster.work_dir.glob("app-*/*") if d.is_dir()]
    assert len({d.parent.name for d in executor_dirs}) == 3, executor_dirs

    checked = 0
    for table in names.all_tables(isolated):
        expected, actual = _contents(local, table), _contents(remote, table)
        assert actual == expected, f"{table}: {len(actual)} rows on the cluster, {len(expected)} locally"
        checked += len(expected)
    silver = sum(len(_contents(remote, names.silver_table(e))) for e in isolated.exchanges)
    assert silver == TRADES * len(isolated.exchanges)
    assert len(_contents(remote, names.DLQ_TABLE)) == CORRUPT * len(isolated.exchanges)
    assert len(_contents(remote, names.GOLD_TABLE)) == silver
    assert checked > 3 * silver


def test_command_line_watch_sees_a_secret_on_a_command_line() -> None:
    """The watch above can fail: a process with the secret in its argv is caught."""
    with CommandLineWatch(CATALOG_PASSWORD) as watch:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.8)", CATALOG_PASSWORD], check=True)
    assert watch.leaks and CATALOG_PASSWORD in watch.leaks[0]


JAVA_READ_PROPERTIES = """
import java.io.FileReader;
import java.util.Properties;
public class ReadProperties {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (FileReader r = new FileReader(args[0], java.nio.charset.StandardCharsets.UTF_8)) { p.load(r); }
        System.out.print(p.getProperty(args[1]));
    }
}
"""


def test_java_reads_back_every_credential_of_the_secrets_file(tmp_path: Path) -> None:
    """What spark-submit loads (java.util.Properties) is exactly the password, whatever it contains."""
    from lakehouse.spark import secret_conf, secrets_file

    tricky = " lead=in:g#!\\back\tslash\nline"
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home"),
                              "LAKEHOUSE_CATALOG_URI": "jdbc:postgresql://127.0.0.1:5432/x",
                              "LAKEHOUSE_CATALOG_PASSWORD": tricky})
    path = secrets_file(settings)
    assert path is not None
    source = tmp_path / "ReadProperties.java"
    source.write_text(JAVA_READ_PROPERTIES)
    for key, value in secret_conf(settings).items():
        done = subprocess.run(["java", str(source), str(path), key], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode() == value
