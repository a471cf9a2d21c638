"""The last run of each maintenance DAG, read from Airflow's metadata database.

The page's app runs inside Airflow's API server, which holds a configured ORM session factory, so
one indexed query per DAG (``dag_run`` by ``dag_id``, newest ``run_after`` first) is all it costs.
The alternative, calling Airflow's own REST API with the viewer's token, would be an HTTP round
trip from the API server to itself per refresh, and its answer could not be shared by viewers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from lakehouse import names

# The DAGs that keep the tables in shape: compaction, expiry and orphan cleanup; dead-letter retention.
MAINTENANCE_DAGS: tuple[str, ...] = (names.MAINTENANCE_DAG, names.DLQ_RETENTION_DAG)


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def last_runs(dag_ids: Iterable[str] = MAINTENANCE_DAGS) -> list[dict[str, Any]]:
    """Per DAG id: its newest run's id, state, start and end (all None when it never ran)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    rows = []
    with create_session() as session:
        for dag_id in dag_ids:
            run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)
                                  .order_by(DagRun.run_after.desc()).limit(1)).first()
            state = None if run is None or run.state is None else str(getattr(run.state, "value", run.state))
            rows.append({"dag_id": dag_id, "run_id": None if run is None else run.run_id, "state": state,
                         "start": None if run is None else _iso(run.start_date),
                         "end": None if run is None else _iso(run.end_date)})
    return rows


__all__ = ["MAINTENANCE_DAGS", "last_runs"]
