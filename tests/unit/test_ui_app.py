"""The Lakehouse page's FastAPI app with the monitor's measurement stubbed: the JSON's shape, the
page's elements (the contract the browser test relies on), unmeasured figures rendered empty, the
figures cache, and no figures without an Airflow login."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lakehouse import names
from lakehouse.monitor import figures as F
from lakehouse.monitor.alerting import AlertState, save_state, state_path
from lakehouse.monitor.rules import KAFKA_LAG_SECONDS
from lakehouse.settings import Settings, load_settings

EX = "binance"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def ui() -> Iterator[Any]:
    """lakehouse.ui.app, imported with AIRFLOW_HOME in a temporary directory (importing Airflow
    would otherwise create ~/airflow)."""
    import tempfile

    saved = os.environ.get("AIRFLOW_HOME")
    with tempfile.TemporaryDirectory(prefix="airflow-home-") as home:
        os.environ["AIRFLOW_HOME"] = home
        try:
            from lakehouse.ui import app

            yield app
        finally:
            if saved is None:
                os.environ.pop("AIRFLOW_HOME", None)
            else:
                os.environ["AIRFLOW_HOME"] = saved


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("LAKEHOUSE_HOME", str(tmp_path / "home"))
    return load_settings()


def fake_health(settings: Settings) -> F.Health:
    """Binance: every layer's lag measured (Gold's first, caught up); kraken's Gold lag not measured
    (a remote checkpoint) and nothing else of kraken; one table's figures."""
    health = F.Health(at=NOW)
    health.add(F.LAYER_LAG_RECORDS, 0, layer="gold", exchange=EX)
    health.add(F.LAYER_LAG_SECONDS, 0.0, layer="gold", exchange=EX)
    health.add(F.KAFKA_LAG_RECORDS, 12, exchange=EX)
    health.add(KAFKA_LAG_SECONDS, 3.25, {"records": 12}, exchange=EX)
    health.add(F.LAYER_LAG_RECORDS, 40, layer="silver", exchange=EX)
    health.add(F.LAYER_LAG_SECONDS, 7.56, layer="silver", exchange=EX)
    health.failed(F.STREAM_FIGURES, "gold kraken", ValueError("checkpoint s3://x is not local </script>"))
    table = names.bronze_table(EX)
    for name, value in ((F.COMMIT_AGE_SECONDS, 4.0), (F.EVENT_AGE_SECONDS, 9.5), (F.TABLE_BYTES, 3 * 1024 ** 2),
                        (F.TABLE_DATA_FILES, 17), (F.TABLE_SNAPSHOTS, 1440)):
        health.add(name, value, layer="bronze", exchange=EX, table=table)
    return health


@pytest.fixture()
def stubbed(ui: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The real figures path (lakehouse_figures -> monitor.overview.report) over a made-up monitor
    run and made-up DAG runs; counts the measurements."""
    from lakehouse.ui import airflow_runs

    calls = {"collect": 0}

    def collect(_settings: Settings, now: float | None = None, loaded: dict | None = None) -> F.Health:
        calls["collect"] += 1
        return fake_health(settings)

    monkeypatch.setattr(F, "collect", collect)
    monkeypatch.setattr(airflow_runs, "last_runs", lambda: [
        {"dag_id": names.MAINTENANCE_DAG, "run_id": "scheduled__1", "state": "success",
         "start": "2026-12-01T01:00:00+00:00", "end": "2026-12-01T01:02:00+00:00"},
        {"dag_id": names.DLQ_RETENTION_DAG, "run_id": None, "state": None, "start": None, "end": None}])
    return calls


@pytest.fixture()
def client(ui: Any, stubbed: dict[str, int]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    app = ui.create_app()
    app.dependency_overrides[ui.AUTHORIZED] = lambda: None  # a logged-in user (Airflow's check is tested below)
    with TestClient(app) as test_client:
        yield test_client


def test_json_has_the_figures_per_exchange_layer_and_table(client: Any, settings: Settings) -> None:
    body = client.get("/api/health").json()
    assert body["generated_at"].startswith("2027-01-15T08:00:00")
    assert body["at"] == NOW and body["status"] == "critical"  # a figure could not be measured
    assert set(body["exchanges"]) == set(settings.exchanges)
    lag = body["exchanges"][EX]["lag"]
    assert lag == {"bronze": {"records": 12, "seconds": 3.25}, "silver": {"records": 40, "seconds": 7.56},
                   "gold": {"records": 0, "seconds": 0}}
    assert body["exchanges"]["kraken"]["lag"]["gold"] == {"records": None, "seconds": None}
    assert [t["table"] for t in body["tables"]] == names.all_tables(settings)
    bronze = next(t for t in body["tables"] if t["table"] == names.bronze_table(EX))
    assert bronze == {"table": names.bronze_table(EX), "layer": "bronze", "exchange": EX, "commit_age_seconds": 4.0,
                      "event_age_seconds": 9.5, "bytes": 3 * 1024 ** 2, "data_files": 17, "snapshots": 1440}
    assert body["maintenance"][0]["state"] == "success" and body["maintenance"][1]["state"] is None
    history = body["history"]
    assert len(history["records_bins"]) == 180 and history["records_bin_seconds"] == 60
    assert body["errors"] == ["gold kraken: checkpoint s3://x is not local </script>"]
    assert {f["name"] for f in body["figures"]} >= {F.KAFKA_LAG_RECORDS, F.LAYER_LAG_SECONDS}  # the raw figures too


def _element(html: str, pattern: str) -> str:
    found = re.findall(pattern, html, re.S)
    assert len(found) == 1, f"{pattern!r}: {len(found)} matches"
    return found[0]


def test_page_has_the_contract_elements_and_unmeasured_figures_are_empty(client: Any, settings: Settings) -> None:
    save_state(state_path(settings), {"kafka_lag{exchange=binance}": AlertState(
        "kafka_lag", {"exchange": EX}, "critical", NOW - 600, firing=True, value=900, summary="Bronze is behind")})
    html = client.get("/").text
    assert 'data-generated-at="2027-01-15T08:00:00+00:00"' in html
    for exchange in settings.exchanges:
        assert f'<section class="exchange" data-exchange="{exchange}">' in html
        assert f'<canvas id="records-chart-{exchange}">' in html and f'<canvas id="dlq-chart-{exchange}">' in html
    section = _element(html, r'<section class="exchange" data-exchange="binance">(.*?)</section>')
    cell = r'<td class="figure" data-figure="{}" data-layer="{}" data-value="([^"]*)">([^<]*)</td>'
    assert re.search(cell.format("lag_records", "bronze"), section).groups() == ("12", "12")  # type: ignore[union-attr]
    assert re.search(cell.format("lag_seconds", "bronze"), section).groups() == ("3.25", "3.3")  # type: ignore[union-attr]
    assert re.search(cell.format("lag_seconds", "silver"), section).groups() == ("7.56", "7.6")  # type: ignore[union-attr]
    assert re.search(cell.format("lag_records", "gold"), section).groups() == ("0", "0")  # type: ignore[union-attr]
    kraken = _element(html, r'<section class="exchange" data-exchange="kraken">(.*?)</section>')
    for figure in ("lag_records", "lag_seconds"):  # kraken's lag was not measured: empty, not 0
        for layer in ("bronze", "gold"):
            assert re.search(cell.format(figure, layer), kraken).groups() == ("", "")  # type: ignore[union-attr]
    freshness = _element(html, r'<table id="freshness">(.*?)</table>')
    assert re.findall(r'<tr data-table="([^"]+)">', freshness) == names.all_tables(settings)
    assert 'data-value="4">4.0</td>' in freshness and 'data-value="9.5">9.5</td>' in freshness
    link = _element(html, r'<a id="dlq-replay-link" href="([^"]+)"')
    assert link.endswith(f"/dags/{names.DLQ_REPLAY_DAG}")
    alerts = _element(html, r'<ul id="alerts">(.*?)</ul>')
    assert 'data-alert="kafka_lag{exchange=binance}"' in alerts and "Bronze is behind" in alerts
    tables = _element(html, r'<table id="tables">(.*?)</table>')
    assert ">3.0 MiB</td>" in tables and 'data-value="1440">1440</td>' in tables
    maintenance = _element(html, r'<table id="maintenance">(.*?)</table>')
    assert f'data-dag-id="{names.MAINTENANCE_DAG}"' in maintenance and "success" in maintenance
    assert "never ran" in maintenance
    assert re.search(r'<script type="application/json" id="lakehouse-data">\{.*"exchanges".*\}</script>', html)
    assert html.count("</script>") == 3  # the two scripts and the data: the error quoting one is escaped
    assert "not local &lt;/script&gt;</li>" in _element(html, r'<ul id="errors">(.*?)</ul>')


def test_no_alert_firing_is_said(client: Any) -> None:
    alerts = _element(client.get("/").text, r'<ul id="alerts">(.*?)</ul>')
    assert "none firing" in alerts and "data-alert" not in alerts


def test_two_requests_within_the_ttl_measure_once(client: Any, stubbed: dict[str, int]) -> None:
    assert client.get("/api/health").status_code == 200
    assert client.get("/").status_code == 200
    assert stubbed["collect"] == 1 and client.app.state.figures.computations == 1


def test_the_cache_computes_once_for_concurrent_callers_then_refreshes_in_the_background(ui: Any) -> None:
    clock = [0.0]
    runs: list[float] = []
    done = threading.Event()

    def compute() -> dict[str, Any]:
        runs.append(clock[0])
        time.sleep(0.2)  # long enough for the other callers to arrive while it runs
        done.set()
        return {"n": len(runs)}

    cache = ui.FiguresCache(compute, ttl_s=15, stale_s=60, clock=lambda: clock[0])

    async def many() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(cache.get() for _ in range(5))))

    assert asyncio.run(many()) == [{"n": 1}] * 5 and len(runs) == 1
    clock[0] = 14.9
    assert asyncio.run(cache.get()) == {"n": 1} and len(runs) == 1  # within the TTL: cached
    clock[0] = 15.1
    done.clear()
    assert asyncio.run(many()) == [{"n": 1}] * 5  # stale: answered at once, one refresh started
    assert done.wait(5)
    deadline = time.monotonic() + 5
    while cache.computations < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert asyncio.run(cache.get()) == {"n": 2} and len(runs) == 2
    clock[0] = 15.1 + 61  # past stale_s: the caller waits for a fresh computation
    assert asyncio.run(cache.get()) == {"n": 3}


def test_no_figures_without_a_login(ui: Any, stubbed: dict[str, int]) -> None:
    from fastapi.testclient import TestClient

    with TestClient(ui.create_app()) as anonymous:  # Airflow's own check, not overridden
        api = anonymous.get("/api/health")
        page = anonymous.get("/", headers={"Accept": "text/html"})
        static = anonymous.get("/static/lakehouse.js")
    assert api.status_code == 401 and api.json() == {"detail": "Not authenticated"}
    assert page.status_code == 401 and "data-figure" not in page.text and "log in" in page.text
    assert stubbed["collect"] == 0  # nothing was even measured
    assert static.status_code == 200  # the assets hold no data
