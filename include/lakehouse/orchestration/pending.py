"""Is there anything for a layer run to do? Checked before a Spark application is started.

A layer run that finds nothing new still pays a whole Spark start (JVM, session, catalog): on a
two-core machine, seconds of CPU. Silver and Gold are started both by the clock and by their
upstream table's asset events, so half their runs would find nothing. These checks read what the
run itself would read first, without Spark: Kafka end offsets against the offsets in Bronze's
last commit, and each upstream table's newest append against the position its stream's
checkpoint has committed. When a check cannot decide (a remote checkpoint, an expired snapshot,
Kafka unreachable), it answers "run": a wasted start is cheap, a skipped batch is not.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from lakehouse import names
from lakehouse.settings import Settings

if TYPE_CHECKING:  # imported when a check runs: DAG parsing imports this module through the operators
    from pyiceberg.table import Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamPosition:
    """The Iceberg stream offset a checkpoint's last committed micro-batch ended at."""

    snapshot_id: int
    position: int


def local_dir(uri: str) -> Path | None:
    """The directory of a ``file:`` or scheme-less checkpoint URI; None for a remote one."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def batch_ids(directory: Path) -> list[int]:
    """The micro-batch ids logged in a checkpoint's ``offsets`` or ``commits`` directory, ascending."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def initial_offset_file(directory: Path) -> Path:
    """Where Iceberg's streaming source keeps a checkpoint's initial offset (its ``InitialOffsetStore``:
    ``<checkpoint>/sources/<source index>/offsets/0``; every layer stream has one source)."""
    return directory / "sources" / "0" / "offsets" / "0"


class Undecided(Exception):
    """The check cannot tell from what it can read: the caller runs the layer."""


def committed_position(checkpoint_uri: str) -> StreamPosition | None:
    """Where the checkpoint's stream stands: None before its first batch.

    Raises :class:`Undecided` for a checkpoint that is not a local directory, and when a planned
    batch is not committed yet (a run was refused or killed mid-batch: the next run redoes it).
    """
    directory = local_dir(checkpoint_uri)
    if directory is None:
        raise Undecided(f"checkpoint {checkpoint_uri} is not on a local file system")
    offsets, commits = batch_ids(directory / "offsets"), batch_ids(directory / "commits")
    if not offsets:
        return None
    if not commits or offsets[-1] > commits[-1]:
        raise Undecided(f"batch {offsets[-1]} of {checkpoint_uri} is planned but not committed")
    lines = [ln for ln in (directory / "offsets" / str(commits[-1])).read_text().splitlines() if ln.strip()]
    try:
        offset = json.loads(lines[-1])
        return StreamPosition(int(offset["snapshot_id"]), int(offset["position"]))
    except (IndexError, ValueError, KeyError, TypeError) as err:
        raise Undecided(f"unreadable offset of batch {commits[-1]} in {checkpoint_uri}: {err}") from err


def stream_behind(upstream: Table, checkpoint_uri: str) -> str | None:
    """Why a stream of ``upstream`` with this checkpoint has work (None: it has consumed every append)."""
    from lakehouse.catalog import newest_append

    newest = newest_append(upstream)
    if newest is None:
        return None
    try:
        position = committed_position(checkpoint_uri)
    except Undecided as err:
        return str(err)
    if position is None:
        return "first run of the stream"
    if position.snapshot_id == newest.snapshot_id:
        return None if position.position >= newest.added_files else "newest append partly consumed"
    consumed = upstream.metadata.snapshot_by_id(position.snapshot_id)
    if consumed is None:
        return f"checkpoint snapshot {position.snapshot_id} is no longer in the table"
    if (consumed.sequence_number or 0) > newest.sequence_number:
        return None
    return f"appends after snapshot {position.snapshot_id}"


def kafka_behind(settings: Settings, exchange: str) -> str | None:
    """Why Bronze of ``exchange`` has work: Kafka holds offsets its last commit does not cover."""
    from lakehouse.bronze import iceberg, kafka
    from lakehouse.bronze.errors import BronzeError
    from lakehouse.catalog import load_catalog

    topic = names.topic(settings, exchange)
    table = load_catalog(settings).load_table(names.bronze_table(exchange))
    _, offsets, found_in = iceberg.offsets_on_main(table, topic)
    if offsets is None and table.current_snapshot() is not None:
        return "no offsets on the table's remaining snapshots"
    try:
        recorded = iceberg.recorded_topic_id(table, found_in)
        current = kafka.topic_id(settings, topic)
        if recorded is not None and current is not None and recorded != current:
            return f"new incarnation of topic {topic} (id {recorded} -> {current})"
        marks = kafka.watermarks(settings.bootstrap_servers, names.bronze_reader_group(exchange), topic,
                                 settings.bronze_kafka_timeout_s)
    except BronzeError as err:  # the run reports it loudly
        return f"cannot read Kafka: {err}"
    committed = offsets or {}
    moved = [p for p, m in marks.items() if m.end != committed.get(p, 0) or m.low > committed.get(p, 0)]
    return f"new offsets in partitions {moved}" if moved else None


def pending_work(settings: Settings, layer: str) -> dict[str, str]:
    """Exchange -> why the layer has work for it; empty when a run would find nothing new."""
    from pyiceberg.exceptions import NoSuchTableError

    from lakehouse.catalog import load_catalog

    waiting: dict[str, str] = {}
    catalog = load_catalog(settings)
    for exchange in settings.exchanges:
        try:
            if layer == "bronze":
                reason = kafka_behind(settings, exchange)
            elif layer == "silver":
                reason = stream_behind(catalog.load_table(names.bronze_table(exchange)),
                                       names.checkpoint(settings, "silver", exchange))
            elif layer == "gold":
                reason = stream_behind(catalog.load_table(names.silver_table(exchange)),
                                       names.gold_checkpoint(settings, exchange))
            else:
                raise ValueError(f"unknown layer {layer!r}; expected one of {names.LAYERS}")
        except NoSuchTableError as err:
            reason = f"table missing ({err}): the run reports it"
        if reason:
            waiting[exchange] = reason
    return waiting


__all__ = ["StreamPosition", "Undecided", "committed_position", "kafka_behind", "pending_work", "stream_behind"]
