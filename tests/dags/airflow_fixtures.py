"""Fixtures and helpers for the Airflow tests: a temporary Airflow home per test, a local webhook
receiver and a local StatsD (UDP) receiver. (A module, not a conftest, imported
like tests/support.py.)

Airflow is never imported at module level here: importing it reads AIRFLOW_HOME once and would
create ``~/airflow``; the ``dagbag`` fixture imports it after pointing AIRFLOW_HOME at a temp dir.
"""

from __future__ import annotations

import json
import os
import queue
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from local_checks import http_server
from support import free_port, make_env

from lakehouse.orchestration.environment import DAGS_FOLDER, airflow_env
from lakehouse.settings import Settings, load_settings


@dataclass
class AirflowSetup:
    settings: Settings
    env: dict[str, str]


def airflow_setup(tmp_path: Path, **extra: str) -> AirflowSetup:
    """Settings for an isolated home plus the Airflow environment of that home.

    Log-server ports are free ports so a scheduler here never collides with another Airflow.
    """
    lakehouse_env = make_env(tmp_path / "home", **extra)
    settings = load_settings(lakehouse_env)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "AIRFLOW"))}
    base.update(lakehouse_env)
    base["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    base["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    return AirflowSetup(settings, airflow_env(settings, base))


@dataclass
class Webhook:
    url: str
    received: queue.Queue[dict[str, Any]]


@pytest.fixture()
def webhook() -> Iterator[Webhook]:
    """A local HTTP server recording every JSON POST it receives."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.put({"path": self.path, "content_type": self.headers.get("Content-Type"),
                          "authorization": self.headers.get("Authorization"), "json": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with http_server(Handler) as root:
        yield Webhook(f"{root}/hooks/lakehouse", received)


@pytest.fixture()
def statsd() -> Iterator[socket.socket]:
    """A UDP socket standing in for the StatsD daemon (port = sock.getsockname()[1])."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()


def statsd_lines(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock``, one metric line each."""
    lines: list[str] = []
    while True:
        try:
            data, _ = sock.recvfrom(65535)
        except (TimeoutError, socket.timeout):
            return lines
        lines += data.decode().splitlines()


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point this process's Airflow at a temp home before anything imports Airflow."""
    home = tmp_path_factory.mktemp("airflow-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_HOME", str(home))
    mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS_FOLDER))
    mp.setenv("LAKEHOUSE_HOME", str(home / "lakehouse"))
    try:
        yield home
    finally:
        mp.undo()


@pytest.fixture(scope="session")
def dagbag(airflow_home: Path) -> Any:
    """Airflow's own loader over the repo's ``dags/`` folder (what the DAG processor runs)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))
