"""The Lakehouse page: a FastAPI app that the ``lakehouse`` Airflow plugin mounts in the API server.

``GET /`` is the page (server-rendered, then refreshed by its script every 15 s), ``GET /api/health``
the same figures as JSON for scripts, ``/static`` the page's script, style sheet and the pinned
chart library (no data there, so no login). The figures are :func:`lakehouse.monitor.overview.report`
(what ``lakehouse health`` measures, arranged per exchange, layer and table, with the last hours
from Iceberg metadata) plus the maintenance DAGs' last runs from Airflow's database.

Login: both data routes depend on Airflow's own ``requires_access_view(AccessView.WEBSITE)``: the
caller must be an authenticated Airflow user (JWT in the ``_token`` cookie the UI sets, or an
``Authorization: Bearer`` token) allowed to see the Airflow website. The page is read-only and shows
no more than the Airflow UI's home does, so no narrower permission is asked.

Cost: at most one figures computation per :data:`TTL_S` per API server process, whatever the
number of viewers, and none while nobody looks: the result is cached, a computation runs in a
worker thread (the event loop keeps serving) under a lock, and while the page is open the cache is
refreshed in the background, so only the first viewer after :data:`STALE_S` of quiet waits for one.
"""

from __future__ import annotations

import decimal
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lakehouse import names

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"
TTL_S = 15.0  # figures are recomputed at most this often per API server process
STALE_S = 300.0  # older figures are still shown at once while a refresh runs; beyond this, a viewer waits
REFRESH_S = 15  # the page re-fetches the JSON this often
LAYERS = names.LAYERS
Figures = dict[str, Any]


class FiguresCache:
    """The last figures and when they were computed (monotonic clock).

    ``get`` answers from the cache while it is younger than ``ttl_s``. Older but younger than
    ``stale_s``, it still answers at once and starts one refresh in the background, so a viewer
    never waits for a computation while someone keeps the page open. Older still (or never
    computed), one caller computes (in a worker thread, under a lock) and the callers that arrive
    meanwhile wait for that result. A failed computation is not cached: the next request tries again.
    """

    def __init__(self, compute: Callable[[], Figures], ttl_s: float = TTL_S, stale_s: float = STALE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._compute = compute
        self._ttl_s = ttl_s
        self._stale_s = max(stale_s, ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._value: Figures | None = None
        self._at = 0.0
        self._refreshing = False
        self.computations = 0

    def _young(self, limit: float) -> Figures | None:
        if self._value is not None and self._clock() - self._at < limit:
            return self._value
        return None

    def _refresh(self) -> Figures:
        with self._lock:
            value = self._young(self._ttl_s)
            if value is None:
                value = self._compute()
                self._value, self._at = value, self._clock()
                self.computations += 1
            return value

    def _refresh_in_background(self) -> None:
        try:
            self._refresh()
        except (OSError, RuntimeError, ValueError) as err:  # the next request computes (and reports) again
            log.warning("lakehouse figures refresh failed: %s", err)
        finally:
            self._refreshing = False

    async def get(self) -> Figures:
        value = self._young(self._ttl_s)
        if value is not None:
            return value
        stale = self._young(self._stale_s)
        if stale is not None:
            if not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh_in_background, name="lakehouse-figures", daemon=True).start()
            return stale
        return await run_in_threadpool(self._refresh)


def lakehouse_figures() -> Figures:
    """The page's figures: the monitor's report and the maintenance DAGs' last runs."""
    from sqlalchemy.exc import SQLAlchemyError

    from lakehouse.monitor.overview import report
    from lakehouse.settings import load_settings
    from lakehouse.ui.airflow_runs import last_runs

    figures = report(load_settings())
    try:
        figures["maintenance"] = last_runs()
    except SQLAlchemyError as err:
        log.warning("maintenance DAG runs unreadable: %s", err)
        figures["maintenance"] = []
        figures["errors"] = [*figures["errors"], f"airflow dag runs: {str(err).splitlines()[0]}"]
    return figures


# --- rendering --------------------------------------------------------------------------------

def fmt_records(value: float | None) -> str:
    return "" if value is None else str(int(round(value)))


def fmt_seconds(value: float | None) -> str:
    """Seconds with one decimal, rounded as the page's script rounds (``toFixed(1)``: half up on the
    exact binary value, 3.25 -> 3.3); empty when not measured."""
    if value is None:
        return ""
    return str(decimal.Decimal(value).quantize(decimal.Decimal("0.1"), rounding=decimal.ROUND_HALF_UP))


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return ""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def raw(value: float | None) -> str:
    """The ``data-value`` attribute: the number as the page's script writes it (``String(v)``: 12,
    not 12.0), empty when not measured."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(["html"]))
    env.filters.update(records=fmt_records, seconds=fmt_seconds, size=fmt_bytes, raw=raw)
    return env


def _script_json(figures: Figures) -> str:
    """The figures for the page's script, safe inside a <script> element (no "<" at all: an error
    message quoting "</script>" or "<!--" cannot end or confuse it)."""
    return json.dumps(figures, separators=(",", ":")).replace("<", "\\u003c")


def airflow_root(request: Request) -> str:
    """The Airflow UI's root path: this app's mount point without its own prefix."""
    root = request.scope.get("root_path", "")
    return root[: -len("/lakehouse")] if root.endswith("/lakehouse") else ""


def _authorized() -> Callable[..., None]:
    """Airflow's own check: an authenticated user allowed to see the website."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return requires_access_view(AccessView.WEBSITE)


AUTHORIZED = _authorized()


def create_app(compute: Callable[[], Figures] = lakehouse_figures, ttl_s: float = TTL_S) -> FastAPI:
    """The app (its cache in ``app.state.figures``); ``compute`` is replaced in tests."""
    from lakehouse.catalog import CatalogUnavailableError

    app = FastAPI(title="Lakehouse", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.figures = FiguresCache(compute, ttl_s)
    templates = _environment()

    async def figures_or_503() -> Figures | Response:
        try:
            return await app.state.figures.get()
        except (CatalogUnavailableError, OSError) as err:
            log.warning("lakehouse figures unavailable: %s", err)
            return JSONResponse({"detail": f"lakehouse figures unavailable: {err}"}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def login_page(request: Request, exc: StarletteHTTPException) -> Response:
        """A browser without a login gets a line and a link to Airflow, an API client Airflow's JSON."""
        if exc.status_code in (401, 403) and "text/html" in request.headers.get("accept", ""):
            root = airflow_root(request)
            return HTMLResponse(f'<!doctype html><title>Lakehouse</title><p>{exc.detail}: '
                                f'<a href="{root}/" target="_top">log in to Airflow</a></p>',
                                status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/api/health", dependencies=[Depends(AUTHORIZED)])
    async def health_json() -> Response:
        figures = await figures_or_503()
        return figures if isinstance(figures, Response) else JSONResponse(figures)

    @app.get("/", response_class=HTMLResponse, dependencies=[Depends(AUTHORIZED)])
    async def page(request: Request) -> Response:
        figures = await figures_or_503()
        if isinstance(figures, Response):
            return figures
        root = request.scope.get("root_path", "")
        html = templates.get_template("page.html").render(
            f=figures, layers=LAYERS, root=root, airflow=airflow_root(request), refresh_ms=REFRESH_S * 1000,
            dlq_replay_dag=names.DLQ_REPLAY_DAG, data_json=_script_json(figures))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


__all__ = ["AUTHORIZED", "REFRESH_S", "STALE_S", "STATIC_DIR", "TTL_S", "FiguresCache", "airflow_root", "create_app",
           "fmt_bytes", "fmt_records", "fmt_seconds", "lakehouse_figures", "raw"]
