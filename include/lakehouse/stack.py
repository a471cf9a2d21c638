"""The embedded stack as one unit: ``up`` (idempotent), ``down`` (leaves no process) and ``status``."""

from __future__ import annotations

import logging
from typing import Any

from lakehouse import broker, names, tables
from lakehouse.avro import load_schema
from lakehouse.catalog import load_catalog
from lakehouse.registry import RegistryError, registry_from_settings
from lakehouse.settings import Settings

log = logging.getLogger(__name__)


def up(settings: Settings) -> dict[str, Any]:
    """Start the broker (embedded mode), create topics, register schemas, create tables."""
    for directory in (settings.home, settings.log_dir, settings.run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    pid = broker.start(settings) if settings.kafka_embedded else None
    topics = broker.ensure_topics(settings)
    registry = registry_from_settings(settings)
    schema_ids = {names.topic(settings, ex): registry.register(names.value_subject(names.topic(settings, ex)),
                                                               load_schema())
                  for ex in settings.exchanges}
    created = tables.ensure_tables(settings)
    return {"broker_pid": pid, "bootstrap": settings.bootstrap_servers, "topics_created": topics,
            "schema_ids": schema_ids, "tables_created": created, "home": str(settings.home)}


def down(settings: Settings) -> dict[str, Any]:
    """Stop every process this home started (the broker; producers and Airflow stop with ``make run``)."""
    stopped = broker.stop(settings) if settings.kafka_embedded else False
    return {"broker_stopped": stopped}


def status(settings: Settings) -> dict[str, Any]:
    """A snapshot of the stack without starting Spark: broker, topics, registry, tables."""
    b = broker.status(settings)
    out: dict[str, Any] = {
        "home": str(settings.home),
        "broker": {"embedded": settings.kafka_embedded, "running": b.running, "pid": b.pid,
                   "bootstrap": b.bootstrap, "reachable": b.reachable},
        "topics": {},
        "schema_registry": {},
        "tables": {},
    }
    if b.reachable:
        for exchange in settings.exchanges:
            topic = names.topic(settings, exchange)
            marks = broker.topic_offsets(settings, topic, timeout_s=5)
            out["topics"][topic] = {"partitions": len(marks),
                                    "end_offsets": {str(p): hi for p, (_lo, hi) in marks.items()}}
    try:
        registry = registry_from_settings(settings)
        out["schema_registry"] = {"subjects": registry.subjects()}
    except RegistryError as err:
        out["schema_registry"] = {"error": str(err)}
    catalog = load_catalog(settings)
    for name in names.all_tables(settings):
        if not catalog.table_exists(name):
            out["tables"][name] = {"exists": False}
            continue
        table = catalog.load_table(name)
        snap = table.current_snapshot()
        summary = snap.summary if snap else None
        out["tables"][name] = {
            "exists": True,
            "snapshots": len(table.metadata.snapshots),
            "records": int(summary["total-records"]) if summary and "total-records" in summary else 0,
            "last_commit_ms": snap.timestamp_ms if snap else None,
        }
    return out
