"""The embedded stack as one unit: ``up`` (idempotent), ``down`` (leaves no process) and ``status``."""

from __future__ import annotations

import json
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
    settings.private_home()
    for directory in (settings.log_dir, settings.run_dir):
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
    if out["tables"].get(names.AUDIT_TABLE, {}).get("exists"):
        out["discarded"] = discarded(catalog.load_table(names.AUDIT_TABLE))
    return out


# Audit events after which records that were produced never reached Bronze.
DISCARD_EVENTS = ("topic_incarnation_started", "data_loss_accepted")


def discarded(audit: Any) -> list[dict[str, Any]]:
    """What Bronze moved past without reading, oldest first: new topic incarnations (the embedded
    broker restarted) with the records of the old topic that never reached Bronze, and accepted
    data losses with their offset ranges. From the audit table, without Spark."""
    from pyiceberg.expressions import In

    rows = audit.scan(row_filter=In("event", DISCARD_EVENTS),
                      selected_fields=("event_time", "source", "event", "detail")).to_arrow().to_pylist()
    out = []
    for row in sorted(rows, key=lambda r: r["event_time"]):
        detail = json.loads(row["detail"] or "{}")
        entry: dict[str, Any] = {"time": row["event_time"].isoformat(), "table": row["source"], "event": row["event"],
                                 "topic": detail.get("topic")}
        if row["event"] == "topic_incarnation_started":
            entry["records"] = detail.get("unread_records")  # None: the broker was not stopped cleanly
            entry["detail"] = (f"new topic {detail.get('topic_id')} (was {detail.get('previous_topic_id')}); "
                               f"Bronze had read up to {detail.get('committed')}, the old topic ended at "
                               f"{detail.get('ends_at_stop') or 'unknown (not recorded at stop)'}")
        else:
            lo, hi = detail.get("missing_from"), detail.get("missing_to")
            entry["records"] = hi - lo if isinstance(lo, int) and isinstance(hi, int) else None
            entry["detail"] = (f"{detail.get('kind')} partition {detail.get('partition')}: offsets "
                               f"[{lo}, {'end of the old topic' if hi is None else hi}) accepted by run "
                               f"{detail.get('run_id')}")
        out.append(entry)
    return out
