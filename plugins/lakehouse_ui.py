"""The ``lakehouse`` Airflow plugin: a "Lakehouse" entry in the Airflow UI's navigation.

Airflow 3 plugins can add a FastAPI app (mounted in the API server under its ``url_prefix``), an
external view (a navigation entry the UI opens in an iframe at ``/plugin/<url_route>``) or a React
app (a JavaScript bundle the UI loads). The page is a FastAPI app plus an external view pointing at
it: the app is served by the API server under Airflow's authentication, and the page needs no
JavaScript build, which a React app would. The logic lives in :mod:`lakehouse.ui`.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from lakehouse.ui.app import create_app

URL_PREFIX = "/lakehouse"


class LakehousePlugin(AirflowPlugin):
    name = "lakehouse"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Lakehouse"}]
    external_views = [{"name": "Lakehouse", "href": f"{URL_PREFIX}/", "destination": "nav", "url_route": "lakehouse"}]
