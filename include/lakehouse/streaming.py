"""Bounded runs of an Iceberg stream: what the upstream table held when the run started, in capped
micro-batches, then exit. The contract of ``trigger(availableNow=True)``, without that trigger.

Silver (reading Bronze) and Gold (reading Silver) both run this way. Two reasons not to use
availableNow with Iceberg 1.10's streaming source:

- it reads the whole backlog as one batch, ignoring ``streaming-max-files-per-micro-batch``
  (checked on this platform), so a run after an outage holds the entire backlog in one batch;
- it computes each run's end by walking the table's history from the stream's *initial* offset
  (the first snapshot it ever read), so that snapshot and everything after it must stay: snapshot
  expiry could never pass it (see :mod:`lakehouse.maintenance`).

So a run uses a processing-time trigger, which honours the cap, and a :class:`TargetProgress`: the
newest append of the upstream table when the run started is its target; once a batch ends at or
past it, the run admits at most :data:`EXTRA_BATCHES` more (data that arrived meanwhile) and stops
as soon as the stream is idle. A batch planned after that is refused before it writes anything
(:class:`RunComplete`): it stays uncommitted in the checkpoint and is the next run's first batch.

A new checkpoint gets its initial offset from :func:`ensure_initial_offset` before the query
starts, written whole, because Iceberg's own write of it is not atomic.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from lakehouse.catalog import NewestAppend, load_catalog, newest_append
from lakehouse.orchestration.pending import batch_ids, initial_offset_file, local_dir
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

IDLE_MESSAGE = "Waiting for data to arrive"  # Spark's status after a trigger that found no new data
EXTRA_BATCHES = 1  # micro-batches a run still admits after consuming its target

# The newest append of the upstream table when the run started: the run ends once it is consumed.
Target = NewestAppend

BatchHandler = Callable[["DataFrame", int], None]

log = logging.getLogger(__name__)


class RunComplete(RuntimeError):
    """A batch was planned after the run reached its target: refused unwritten, left for the next run."""


class StreamStalledError(RuntimeError):
    """The stream went idle although its checkpoint's newest committed batch ends before the run's
    target: the upstream rows after it would never be read. Never expected; raised rather than
    reporting a run that left rows behind as a success."""


def upstream_target(settings: Settings, table: str) -> Target | None:
    """The newest append snapshot in ``table``'s current history (replace/delete snapshots are not
    streamed); None when the table has none yet."""
    return newest_append(load_catalog(settings).load_table(table))


class TargetProgress:
    """Where a run is against its target, and which micro-batches it still admits.

    Stopping only when idle keeps the usual run free of interrupted batches; refusing batches
    after the extra one bounds a run when the upstream table outpaces this layer.
    """

    def __init__(self, settings: Settings, table: str, target: Target) -> None:
        self._settings = settings
        self._table = table
        self.target = target
        self.finished = threading.Event()  # the target has been consumed
        self.stopping = threading.Event()  # the driver is stopping the query: admit nothing
        self.refused = threading.Event()  # a batch was refused (RunComplete raised): the query ends with it
        self._extra = 0

    def admit(self) -> bool:
        if self.stopping.is_set():
            return False
        if not self.finished.is_set():
            return True
        self._extra += 1
        return self._extra <= EXTRA_BATCHES

    def observe(self, end_offset: dict[str, object]) -> None:
        """Note the stream offset a committed batch ended at (Iceberg's ``snapshot_id``/``position``)."""
        snapshot_id = int(str(end_offset["snapshot_id"]))
        if snapshot_id == self.target.snapshot_id:
            reached = int(str(end_offset["position"])) >= self.target.added_files
        else:
            metadata = load_catalog(self._settings).load_table(self._table).metadata
            snap = metadata.snapshot_by_id(snapshot_id)
            reached = snap is not None and (snap.sequence_number or 0) > self.target.sequence_number
        if reached:
            self.finished.set()

    def bounded(self, handler: BatchHandler, checkpoint: str) -> BatchHandler:
        """``handler`` as a ``foreachBatch`` function that refuses batches past the run's end and
        records where each committed batch ended."""
        def handle(batch_df: DataFrame, batch_id: int) -> None:
            if not self.admit():
                self.refused.set()
                raise RunComplete(f"batch {batch_id} starts after the run's target; left for the next run")
            handler(batch_df, batch_id)
            self.observe(batch_end_offset(batch_df.sparkSession, checkpoint, batch_id))
        return handle

    def confirm_idle(self, checkpoint: str) -> None:
        """At idle: the checkpoint's newest committed batch must end at or past the target.

        A run whose own batches reached the target passes at once. Otherwise (this run committed no
        batch, e.g. another run of the same checkpoint had done the work) the newest entry of the
        commit log is looked up. Raises :class:`StreamStalledError` when it ends before the target.
        Only a local checkpoint is checked (a remote one would need a listing per run).
        """
        directory = local_dir(checkpoint)
        if self.finished.is_set() or directory is None:
            return
        committed = batch_ids(directory / "commits")
        if committed:
            self.observe(source_offset((directory / "offsets" / str(committed[-1])).read_text().splitlines()))
        if not self.finished.is_set():
            raise StreamStalledError(
                f"the stream of {self._table} went idle before the run's target (snapshot {self.target.snapshot_id}); "
                f"checkpoint {checkpoint}: offsets {batch_ids(directory / 'offsets')[-3:]}, "
                f"commits {committed[-3:]} (newest batches)")

    def completed_by(self, err: BaseException) -> bool:
        """Whether a query failure is only the refusal of a batch past the run's end.

        The refusal is recorded when it is raised: the query's exception is a JVM
        ``StreamingQueryException`` wrapping the Python error as text, so its type cannot tell."""
        return self.refused.is_set() and (self.finished.is_set() or self.stopping.is_set())


INITIAL_OFFSET_VERSION = 1  # Iceberg's StreamingOffset JSON version


def initial_offset(table: Table) -> dict[str, object] | None:
    """The offset Iceberg starts a new stream of ``table`` at (``determineStartingOffset`` with no
    start timestamp): the oldest snapshot in the current snapshot's history, from its first file.
    None for a table without snapshots."""
    from pyiceberg.table.snapshots import ancestors_of

    oldest = None
    for oldest in ancestors_of(table.current_snapshot(), table.metadata):
        pass
    if oldest is None:
        return None
    return {"version": INITIAL_OFFSET_VERSION, "snapshot_id": oldest.snapshot_id, "position": 0,
            "scan_all_files": False}


def ensure_initial_offset(settings: Settings, table: str, checkpoint: str) -> None:
    """Write a new local checkpoint's initial stream offset whole, before the query starts.

    Iceberg 1.10's ``InitialOffsetStore`` checks whether the file exists, then creates it and writes
    the JSON in place. A second run starting the same new checkpoint in between reads an empty file
    and fails with "Failed to read StreamingOffset from json"; a run killed in between leaves an
    empty file that fails every later run. Written here to a temporary file and linked into place
    (which fails if the file exists), Iceberg only ever finds it whole, and reads it instead of
    writing it. Object stores (a remote checkpoint) create a file whole on close already.
    """
    directory = local_dir(checkpoint)
    if directory is None:
        return
    path = initial_offset_file(directory)
    if path.exists():
        return
    offset = initial_offset(load_catalog(settings).load_table(table))
    if offset is None:
        return  # nothing to stream yet: the run does not start a query
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as out:
            out.write(json.dumps(offset, separators=(",", ":")))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
            log.info("initial offset of %s written: %s", checkpoint, offset)
        except FileExistsError:
            pass  # another run of the same checkpoint wrote it first: the same offset, whole
    finally:
        temporary.unlink(missing_ok=True)


def source_offset(entry_lines: list[str]) -> dict[str, object]:
    """The stream's source offset in one offset-log entry (``v1``, the batch metadata, then one line per
    source; every layer stream has one source)."""
    return json.loads([line for line in entry_lines if line.strip()][-1])


def batch_end_offset(spark: SparkSession, checkpoint: str, batch_id: int) -> dict[str, object]:
    """The Iceberg stream offset this batch ends at, from the checkpoint's offset log (written before the batch)."""
    return source_offset([r.value for r in spark.read.text(f"{checkpoint}/offsets/{batch_id}").collect()])


def await_target(query: StreamingQuery, progress: TargetProgress, poll_s: float,
                 failure: Callable[[Exception], Exception], checkpoint: str) -> None:
    """Wait until the running ``query`` has consumed its target and is idle, then stop it.

    A query failure other than :class:`RunComplete` is raised as ``failure(err)``, and so is an
    idle stream whose ``checkpoint`` ends before the target (:meth:`TargetProgress.confirm_idle`).
    The query is stopped whatever happens.
    """
    from pyspark.errors import StreamingQueryException

    try:
        while True:
            try:
                if query.awaitTermination(poll_s):
                    return
            except StreamingQueryException as err:
                if progress.completed_by(err):
                    return
                log.debug("streaming query %s failed: %s", query.name, err)  # the whole JVM trace
                raise failure(err) from err
            # Idle is read from StreamingQueryStatus, not from the structured progress: Spark posts the
            # progress of a trigger that found no data only every noDataProgressEventInterval (10 s,
            # measured on 3.5.8), which would add 10 s to every run. The status message is the one
            # field that tells "sources checked, nothing new" from "initializing" or "between triggers".
            status = query.status
            if (not status["isTriggerActive"] and not status["isDataAvailable"]
                    and status["message"] == IDLE_MESSAGE):  # the stream has consumed everything there is
                progress.stopping.set()
                query.stop()
                error = query.exception()
                if error is not None and not progress.refused.is_set():
                    raise failure(error) from error
                try:
                    progress.confirm_idle(checkpoint)
                except StreamStalledError as stalled:
                    raise failure(stalled) from stalled
                return
    finally:
        if query.isActive:
            query.stop()


__all__ = ["EXTRA_BATCHES", "IDLE_MESSAGE", "BatchHandler", "RunComplete", "StreamStalledError", "Target", "TargetProgress",
           "await_target", "batch_end_offset", "ensure_initial_offset", "initial_offset", "source_offset",
           "upstream_target"]
