"""The Lakehouse page of the Airflow UI (lag, freshness and dead letters at a glance).

:mod:`lakehouse.ui.app` is the FastAPI app the ``lakehouse`` plugin (``plugins/lakehouse_ui.py``)
mounts in Airflow's API server at ``/lakehouse``; its figures come from :mod:`lakehouse.monitor`.
``static/vendor`` holds the pinned chart library (see its ``manifest.json``).
"""
