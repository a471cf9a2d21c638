"""The Lakehouse page in a real Airflow API server: the ``lakehouse`` plugin is loaded from the
project's plugins folder, listed with its navigation entry, and serves no figures without a login.

The API server runs as the embedded stack runs it (``lakehouse.orchestration.environment``: simple
auth manager, SQLite metadata database, the project's plugins folder) in a temporary home. The
lakehouse tables do not exist there: the figures then say what they could not measure, which is
all this test needs (it is about who gets them, not what they are).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support import airflow_api_server, free_port, make_env

from lakehouse import names
from lakehouse.orchestration.environment import airflow_argv, airflow_env, password_file, run_airflow
from lakehouse.settings import load_settings

STARTUP_S = 90


@dataclass
class Server:
    base: str
    token: str
    exchanges: tuple[str, ...]


def _get(url: str, token: str | None = None, cookie: str | None = None, accept: str = "application/json",
         data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    if data is not None:
        headers["Content-Type"] = "application/json"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("lakehouse-page")
    lakehouse_env = make_env(home / "home")
    settings = load_settings(lakehouse_env)
    port = free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "AIRFLOW"))}
    base_env.update(lakehouse_env)
    base_env.update({"AIRFLOW__API__PORT": str(port), "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}"})
    env = airflow_env(settings, base_env)
    settings.airflow_home_path.mkdir(parents=True, exist_ok=True)
    run_airflow(settings, ["db", "migrate"], env)
    with airflow_api_server(airflow_argv(["api-server", "--port", str(port)]), env, port, home / "api-server.log",
                            ready=password_file(settings).exists, timeout_s=STARTUP_S) as base:
        passwords = json.loads(password_file(settings).read_text())
        user, password = next(iter(passwords.items()))
        status, _, body = _get(f"{base}/auth/token", data=json.dumps({"username": user, "password": password}).encode())
        assert status == 201, body[-500:]
        yield Server(base, json.loads(body)["access_token"], settings.exchanges)


def test_no_figures_without_a_login(server: Server) -> None:
    status, _, body = _get(f"{server.base}/lakehouse/api/health")
    assert status == 401 and b"exchanges" not in body and b"generated_at" not in body
    status, headers, body = _get(f"{server.base}/lakehouse/", accept="text/html")
    assert status == 401 or (status in (302, 303, 307) and "login" in headers.get("location", "")), status
    assert b"data-figure" not in body and b"data-exchange" not in body
    status, _, body = _get(f"{server.base}/lakehouse/api/health", token="not-a-jwt")
    assert status in (401, 403) and b"exchanges" not in body


def test_figures_with_a_login(server: Server) -> None:
    status, _, body = _get(f"{server.base}/lakehouse/api/health", token=server.token)
    assert status == 200, body[-500:]
    figures = json.loads(body)
    assert set(figures["exchanges"]) == set(server.exchanges)
    assert figures["errors"]  # no lakehouse tables in this home: said, not hidden
    assert [(run["dag_id"], run["state"]) for run in figures["maintenance"]] == [
        (names.MAINTENANCE_DAG, None), (names.DLQ_RETENTION_DAG, None)]  # read from Airflow's database: no runs yet
    status, _, page = _get(f"{server.base}/lakehouse/", cookie=server.token, accept="text/html")  # the UI's cookie
    assert status == 200 and b'<section class="exchange" data-exchange="binance">' in page
    assert b'src="/lakehouse/static/vendor/chart.umd.min.js"' in page
    status, _, script = _get(f"{server.base}/lakehouse/static/vendor/chart.umd.min.js")
    assert status == 200 and b"Chart.js v4" in script[:200]


def test_plugin_and_its_nav_entry_are_listed(server: Server) -> None:
    status, _, body = _get(f"{server.base}/api/v2/plugins", token=server.token)
    assert status == 200
    plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "lakehouse")
    assert [(a["name"], a["url_prefix"]) for a in plugin["fastapi_apps"]] == [("Lakehouse", "/lakehouse")]
    views = [(v["name"], v["href"], v["destination"], v["url_route"]) for v in plugin["external_views"]]
    assert views == [("Lakehouse", "/lakehouse/", "nav", "lakehouse")]
