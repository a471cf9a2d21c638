"""Airflow as docker-compose.yaml configures it, run for real on the local PostgreSQL server.

The compose file's Airflow settings (FAB auth manager, Fernet key, JWT secret, session key) and the
airflow-init job's own ``airflow users create`` lines: the admin is created once and re-running init
is harmless, the API refuses requests without a login, a wrong password gets no token, the right one
does, and connection passwords are stored encrypted. Skips with the reason where PostgreSQL is absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PG, airflow_api_server, free_port, postgres_databases
from compose_policy import COMPOSE_FILE, environment_of, interpolate_tree, load, sample_environment, services

pytestmark = [pytest.mark.postgres]

FROM_COMPOSE = ("AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
                "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__LOAD_EXAMPLES", "AIRFLOW_ADMIN_USERNAME",
                "AIRFLOW_ADMIN_EMAIL", "AIRFLOW_ADMIN_PASSWORD")


@pytest.fixture()
def database() -> Iterator[str]:
    with postgres_databases("airflow_auth") as (db,):
        yield db


def _compose_airflow(tmp_path: Path, db: str) -> tuple[dict[str, str], str]:
    """The airflow-init service's environment (the settings above) and its user-creation script."""
    from cryptography.fernet import Fernet

    sample = {**sample_environment(), "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode()}
    init = services(interpolate_tree(load(COMPOSE_FILE.read_text()), sample))["airflow-init"]
    compose_env = {k: str(v) for k, v in environment_of(init).items() if v is not None}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LAKEHOUSE_"))}
    env.update({k: compose_env[k] for k in FROM_COMPOSE})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the image's airflow
    env.update({"AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}"})
    script = init["command"][0]
    create = re.search(r"^\s*airflow users create .*?[^\\]$", script, re.S | re.M)
    assert create, script
    return env, create.group(0).replace("$$", "$")


def _airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    airflow = str(Path(sys.executable).with_name("airflow"))
    return subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=300, check=False)


def _request(url: str, data: bytes | None = None, token: str | None = None) -> tuple[int, Any]:
    import json

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None


def test_compose_airflow_settings_give_a_real_user_store(database: str, tmp_path: Path) -> None:
    import json

    env, create_admin = _compose_airflow(tmp_path, database)
    assert "FabAuthManager" in env["AIRFLOW__CORE__AUTH_MANAGER"]
    migrated = _airflow(env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    for attempt in range(2):  # airflow-init runs at every 'docker compose up': the second time is a no-op
        created = subprocess.run(["bash", "-c", create_admin], env=env, capture_output=True, text=True, timeout=300)
        assert created.returncode == 0, (attempt, created.stderr[-3000:])
    assert "already exists" in created.stdout + created.stderr

    added = _airflow(env, "connections", "add", "webhook", "--conn-uri", "http://user:hush-hush@example.org")
    assert added.returncode == 0, added.stderr[-3000:]
    import psycopg2

    with psycopg2.connect(dbname=database, **PG) as con, con.cursor() as cur:
        cur.execute("SELECT password, is_encrypted FROM connection WHERE conn_id = 'webhook'")
        stored, encrypted = cur.fetchone()
    assert encrypted and "hush-hush" not in stored

    port = free_port()
    argv = [str(Path(sys.executable).with_name("airflow")), "api-server", "--port", str(port)]
    with airflow_api_server(argv, env, port) as base:
        assert _request(f"{base}/api/v2/dags")[0] == 401
        user, password = env["AIRFLOW_ADMIN_USERNAME"], env["AIRFLOW_ADMIN_PASSWORD"]
        wrong = json.dumps({"username": user, "password": password + "x"}).encode()
        assert _request(f"{base}/auth/token", wrong)[0] == 401
        status, body = _request(f"{base}/auth/token", json.dumps({"username": user, "password": password}).encode())
        assert status == 201 and body["access_token"]
        status, dags = _request(f"{base}/api/v2/dags", token=body["access_token"])
        assert status == 200 and dags["total_entries"] == 0


