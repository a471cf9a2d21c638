"""One Bronze run: plan on the driver, read on executors, commit data and offsets atomically.

Order of a run, and what a SIGKILL at each point leaves behind:
  1. drop branches of runs killed earlier; read committed offsets from main; fix the end offsets
     in Kafka (one short fetch, never a wait for the end, which keeps moving while producers
     write); stamp the ingestion time; plan ranges (admission cap) -> killed here: nothing written.
  2. a new incarnation of the topic (its id changed): on the embedded broker, which keeps topics
     in memory, a restart; the run reads the new topic from offset 0 and writes one audit row
     counting the old topic's records that never reached Bronze. On Kafka a recreated topic is a
     data loss. Data loss (retention gap, recreated topic): audit row + metric, then fail, unless
     this run was started to accept it (``--accept-data-loss``: this run only, never a setting).
  3. create branch ``bronze_run_*`` from the planned-from snapshot; Spark tasks read the ranges
     with confluent-kafka and write them as Parquet data files (``tasks``); the driver appends
     the files to the branch in one snapshot whose summary holds the offsets -> killed here:
     an unreferenced branch (dropped by a later run) and orphan files, main untouched.
  4. ``fast_forward`` main to the branch (fails if main moved) -> the commit point.
  5. commit offsets to the Kafka consumer group, drop the branch -> killed here: the next
     run finds nothing new and redoes this step.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from lakehouse import broker, faults, names, runreport
from lakehouse.bronze import iceberg, kafka, tasks
from lakehouse.bronze.errors import BronzeError, CommitError, ConcurrentRunError, DataLossError
from lakehouse.bronze.planning import (
    OFFSETS_RESET,
    TOPIC_RECREATED,
    Incarnation,
    Plan,
    Watermarks,
    encode_offsets,
    group_tasks,
    plan_run,
)
from lakehouse.metrics import StatsD
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# A commit that lost the race to a maintenance commit (offsets unchanged) is re-planned this often.
MAX_ATTEMPTS = 3


class _MainMoved(Exception):
    """main moved under a run without its offsets changing (compaction): re-plan and retry."""


@dataclass
class RunResult:
    """Outcome of one run, logged as one structured line and sent as metrics."""

    exchange: str
    run_id: str
    status: str  # "committed" or "noop"
    records: int = 0
    bytes: int = 0
    # Records between the committed offsets and the planned ends: more than ``records`` means the
    # admission cap left the rest for the next run.
    available: int = 0
    ingestion_time: str = ""  # ISO time stamped on this run's records, fixed after the end offsets
    snapshot_id: int | None = None
    offsets_source: str = ""
    partitions: dict[int, dict[str, int]] = field(default_factory=dict)
    accepted_losses: list[dict[str, object]] = field(default_factory=list)
    incarnation: dict[str, object] | None = None  # set when this run started a new topic incarnation
    tasks: int = 0
    attempts: int = 1
    duration_s: float = 0.0

    def as_log(self) -> dict[str, Any]:
        return {"exchange": self.exchange, "run_id": self.run_id, "status": self.status, "records": self.records,
                "bytes": self.bytes, "available": self.available, "ingestion_time": self.ingestion_time,
                "snapshot_id": self.snapshot_id, "offsets_source": self.offsets_source,
                "partitions": {str(p): v for p, v in self.partitions.items()},
                "accepted_losses": self.accepted_losses, "incarnation": self.incarnation, "tasks": self.tasks,
                "attempts": self.attempts,
                "duration_s": round(self.duration_s, 3)}


def crash_point(settings: Settings, point: str) -> None:
    """Fault injection (kill tests): SIGKILL the driver and its spark-submit JVM at ``point``."""
    if settings.bronze_crash_point == point:
        faults.kill_job(point)


def task_frame(spark: SparkSession, settings: Settings, exchange: str, plan: Plan, table: Table,
               ingestion_time: dt.datetime) -> DataFrame:
    """One Spark task per planned range: each reads it with confluent-kafka and writes it as a data
    file of ``table``; the frame holds one result row (records, bytes, data files) per task."""
    from pyspark.sql import types as T

    read = kafka.ReadContext(bootstrap=settings.bootstrap_servers, group_id=names.bronze_reader_group(exchange),
                             timeout_s=settings.bronze_kafka_timeout_s,
                             ingestion_us=int(ingestion_time.timestamp() * 1_000_000),
                             schema=table.schema().as_arrow())
    write = tasks.WriteContext(metadata_json=table.metadata.model_dump_json(),
                               io_properties=dict(table.io.properties),
                               rows_per_file=settings.bronze_records_per_task)
    result = T.StructType([T.StructField("task", T.IntegerType()), T.StructField("records", T.LongType()),
                           T.StructField("bytes", T.LongType()), T.StructField("data_files", T.BinaryType())])
    groups = tuple(group_tasks(plan.tasks, spark.sparkContext.defaultParallelism))
    ids = spark.range(0, len(groups), 1, numPartitions=max(1, len(groups)))
    # The task body lives in lakehouse.bronze.tasks so Python workers import only what a task needs.
    return ids.mapInArrow(functools.partial(tasks.run_tasks, tasks=groups, read=read, write=write), result)


def _spark_reason(err: BaseException) -> str:
    """The informative line of a Spark failure: a Bronze error raised on an executor, else the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "lakehouse.bronze.errors." in line or line.startswith(("KafkaReadError", "lakehouse.")):
            return line[:500]
    return lines[0][:500] if lines else type(err).__name__


class BronzeRun:
    """One attempt: plan -> (losses) -> write to a branch -> conditional fast-forward of main."""

    def __init__(self, spark: SparkSession, settings: Settings, exchange: str, run_id: str | None = None,
                 accept_data_loss: bool = False) -> None:
        self.spark = spark
        self.accept_data_loss = accept_data_loss
        self.settings = settings
        self.exchange = exchange
        self.topic = names.topic(settings, exchange)
        self.table = names.qualified(settings, names.bronze_table(exchange))
        self.run_id = run_id or uuid.uuid4().hex
        self.branch = iceberg.branch_name(self.run_id)
        # Stamped by make_plan() once the end offsets are fixed (see there).
        self.ingestion_time: dt.datetime | None = None
        self.committed: iceberg.Committed | None = None
        self.plan: Plan | None = None
        self.marks: dict[int, Watermarks] = {}
        self.topic_id: str | None = None
        self.incarnation: Incarnation | None = None
        self.head: int | None = None
        self.branch_created = False
        self.records = 0
        self.bytes = 0
        self.tasks = 0

    def make_plan(self) -> Plan:
        """Committed offsets (from main) + end offsets fixed now (from Kafka) -> ranges within the cap."""
        s = self.settings
        iceberg.refresh(self.spark, s, self.exchange)
        self.committed = iceberg.committed_offsets(self.spark, s, self.exchange, self.topic)
        self.topic_id = kafka.topic_id(s, self.topic)
        self.marks = kafka.watermarks(s.bootstrap_servers, names.bronze_reader_group(self.exchange), self.topic,
                                      s.bronze_kafka_timeout_s)
        # Every planned record was in Kafka before this moment, so none carries a timestamp (Kafka's,
        # the trade's) later than its ingestion time. Stamped earlier (at run start), records produced
        # while the run planned would, and Silver's future-timestamp rule would dead-letter them.
        self.ingestion_time = dt.datetime.now(dt.timezone.utc)
        committed = self.committed.offsets
        previous = self.committed.topic_id
        recreated = previous is not None and self.topic_id is not None and previous != self.topic_id
        if recreated and s.kafka_embedded:
            # Memory storage: a new topic is the broker's restart, expected, never a silent skip.
            self.incarnation = Incarnation(self.topic, str(previous), str(self.topic_id), committed,
                                           broker.ends_at_stop(s, self.topic, str(previous)))
            committed, recreated = {}, False
        self.plan = plan_run(self.topic, committed, self.marks, max_records=s.bronze_max_records_per_run,
                             records_per_task=s.bronze_records_per_task, accept_loss=self.accept_data_loss,
                             recreated=recreated)
        return self.plan

    def write(self) -> int:
        """Read and write the planned records on executors, then append their data files to this
        run's branch in one snapshot that carries the offsets; main does not move yet."""
        assert self.plan is not None and self.committed is not None and self.ingestion_time is not None, \
            "make_plan() first"
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        iceberg.create_branch(self.spark, self.settings, self.exchange, self.branch, self.committed.snapshot_id)
        self.branch_created = True
        table = iceberg.load_table(self.settings, self.exchange)
        main = table.current_snapshot()
        if self.committed.snapshot_id is None and main is not None:
            # An empty table has no snapshot to branch from: the branch starts at a fresh empty
            # snapshot, unless another commit created main first, which this run must not build on.
            self._raise_moved(table, main.snapshot_id, "main appeared while this run planned on an empty table")
        try:
            results = task_frame(self.spark, self.settings, self.exchange, self.plan, table,
                                 self.ingestion_time).collect()
        except (PySparkException, Py4JJavaError) as err:
            raise CommitError(f"writing {self.table} failed, nothing committed: {_spark_reason(err)}") from err
        files = [f for row in results for f in tasks.decode_files(row["data_files"])]
        self.tasks = len(results)
        self.records = sum(row["records"] for row in results)
        self.bytes = sum(row["bytes"] for row in results)
        props = {names.BRONZE_OFFSETS_PROPERTY: encode_offsets(self.topic, self.plan.next_offsets),
                 names.BRONZE_RUN_PROPERTY: self.run_id}
        if self.topic_id is not None:
            props[names.BRONZE_TOPIC_ID_PROPERTY] = self.topic_id
        try:
            iceberg.append_to_branch(table, self.branch, files, props)
        except (CommitFailedException, ValueError, OSError) as err:
            raise CommitError(f"writing {self.table} branch {self.branch} failed, nothing committed: {err}") from err
        table = iceberg.load_table(self.settings, self.exchange)
        ref = table.refs().get(self.branch)
        snap = table.snapshot_by_id(ref.snapshot_id) if ref is not None else None
        if snap is None or snap.summary.get(names.BRONZE_RUN_PROPERTY) != self.run_id:
            raise CommitError(f"branch {self.branch} of {self.table} does not end with this run's snapshot "
                              f"(dropped by another run after {self.settings.bronze_branch_ttl_s}s?)")
        self.head = snap.snapshot_id
        return self.head

    def commit(self) -> int:
        """Fast-forward main to the branch: the single atomic commit of data and offsets."""
        assert self.head is not None and self.committed is not None, "write() first"
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        try:
            iceberg.fast_forward(self.spark, self.settings, self.exchange, self.branch)
        except (PySparkException, Py4JJavaError) as err:
            reason = _spark_reason(err)
            table = iceberg.load_table(self.settings, self.exchange)
            main = table.current_snapshot()
            main_id = main.snapshot_id if main is not None else None
            if main_id == self.head:
                log.warning("fast_forward reported an error but main is at this run's snapshot: %s", reason)
                return self.head
            if main_id == self.committed.snapshot_id:
                raise CommitError(f"commit of {self.table} failed, nothing committed: {reason}") from err
            self._raise_moved(table, main_id, reason, err)
        return self.head

    def _raise_moved(self, table: Table, main_id: int | None, reason: str, cause: BaseException | None = None) -> None:
        """main moved since planning: retry after a maintenance commit, fail after a Bronze commit."""
        assert self.committed is not None
        # Every Bronze commit carries offsets: unchanged offsets mean a maintenance commit moved main.
        _, offsets_now, _ = iceberg.offsets_on_main(table, self.topic)
        if offsets_now == (self.committed.offsets if self.committed.source == "snapshot" else None):
            raise _MainMoved(reason) from cause
        raise ConcurrentRunError(
            f"another Bronze run committed to {self.table} after this run planned from snapshot "
            f"{self.committed.snapshot_id} (main is now {main_id}); this run committed nothing") from cause

    def drop_branch(self) -> None:
        if not self.branch_created:
            return
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException

        try:
            iceberg.drop_branch(self.spark, self.settings, self.exchange, self.branch)
        except (PySparkException, Py4JJavaError) as err:  # a later run drops it after the TTL
            log.warning("could not drop branch %s: %s", self.branch, str(err).splitlines()[0][:200])


def _handle_losses(run: BronzeRun, metrics: StatsD, audited: set[tuple[int, str]]) -> list[dict[str, object]]:
    """Audit row + metric per lost partition; fail unless the operator accepted the loss."""
    assert run.plan is not None
    s, plan = run.settings, run.plan
    fresh = [loss for loss in plan.losses if (loss.partition, loss.kind) not in audited]
    accepted = run.accept_data_loss
    event = "data_loss_accepted" if accepted else "data_loss_detected"
    details = [{**loss.as_dict(), "run_id": run.run_id, "table": names.bronze_table(run.exchange),
                "accepted": accepted} for loss in fresh]
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    audit_failure = ""
    try:
        iceberg.write_audit(run.spark, s, event, names.bronze_table(run.exchange), details)
    except (PySparkException, Py4JJavaError) as err:
        if accepted:  # an accepted loss must be on record before the run moves past it
            raise CommitError(f"could not record the accepted data loss in {names.AUDIT_TABLE}, nothing "
                              f"committed: {_spark_reason(err)}") from err
        audit_failure = f" (audit row not written: {_spark_reason(err)})"
    for loss in fresh:
        audited.add((loss.partition, loss.kind))
        metrics.incr("bronze.data_loss", loss.records, tags={"exchange": run.exchange, "partition": loss.partition,
                                                            "kind": loss.kind, "accepted": str(accepted).lower()})
        log.error("Bronze data loss (%s): %s", "accepted" if accepted else "run fails", loss.describe(),
                  extra={"loss": loss.as_dict(), "exchange": run.exchange, "run_id": run.run_id})
    if not accepted:
        hint = (f"to accept this loss once, run 'lakehouse run bronze --exchange {run.exchange} --accept-data-loss' "
                f"or trigger {names.BRONZE_DAG} with {{\"accept_data_loss\": true}}")
        if any(loss.kind in (OFFSETS_RESET, TOPIC_RECREATED) for loss in plan.losses):
            hint += " (reads the recreated topic from its first offset)"
        raise DataLossError("; ".join(loss.describe() for loss in plan.losses) + f"; {hint}{audit_failure}")
    return details


def _record_incarnation(run: BronzeRun, metrics: StatsD) -> dict[str, object]:
    """One audit row (and a metric) for a new incarnation of the topic, before the run reads it.

    A run killed after its audit row and before its commit finds the same incarnation again: the
    row names the new topic id, and is written only once per id.
    """
    assert run.incarnation is not None
    incarnation, source = run.incarnation, names.bronze_table(run.exchange)
    detail = {**incarnation.as_dict(), "run_id": run.run_id, "table": source}
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        if not iceberg.audited(run.spark, run.settings, INCARNATION_EVENT, source, "topic_id", incarnation.current_id):
            iceberg.write_audit(run.spark, run.settings, INCARNATION_EVENT, source, [detail])
    except (PySparkException, Py4JJavaError) as err:  # the new topic is read only once this is on record
        raise CommitError(f"could not record the new incarnation of {incarnation.topic} in {names.AUDIT_TABLE}, "
                          f"nothing committed: {_spark_reason(err)}") from err
    if incarnation.unread:
        metrics.incr("bronze.records_discarded", incarnation.unread, tags={"exchange": run.exchange,
                                                                           "reason": "broker_restart"})
    log.warning("%s", incarnation.describe(), extra={"incarnation": detail, "exchange": run.exchange})
    return detail


# The audit event of a new topic incarnation (the embedded broker restarted).
INCARNATION_EVENT = "topic_incarnation_started"


def run_bronze(spark: SparkSession, settings: Settings, exchange: str, accept_data_loss: bool = False) -> RunResult:
    """Ingest what the exchange's topic holds now (up to the admission cap), exactly once.

    ``accept_data_loss`` accepts the data loss this run finds (recorded with its offset ranges in
    the audit table) and nothing after it: the next run without it fails on a new loss again.
    """
    if exchange not in settings.exchanges:
        raise BronzeError(f"unknown exchange {exchange!r}; configured: {', '.join(settings.exchanges)}")
    started = time.monotonic()
    metrics = StatsD.from_settings(settings)
    tags = {"exchange": exchange}
    run_id = uuid.uuid4().hex
    audited: set[tuple[int, str]] = set()
    try:
        with runreport.phase("planning", exchange):
            iceberg.drop_stale_branches(spark, settings, exchange)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            run = BronzeRun(spark, settings, exchange, run_id, accept_data_loss)
            try:
                with runreport.phase("planning", exchange):
                    plan = run.make_plan()
                    incarnation = _record_incarnation(run, metrics) if run.incarnation is not None else None
                    accepted = _handle_losses(run, metrics, audited) if plan.losses else []
                assert run.committed is not None and run.ingestion_time is not None
                result = RunResult(exchange, run_id, "noop", available=plan.available,
                                   ingestion_time=run.ingestion_time.isoformat(), offsets_source=run.committed.source,
                                   accepted_losses=accepted, incarnation=incarnation, attempts=attempt)
                # A new topic incarnation is committed even before it has records: its id is recorded.
                if plan.changes_offsets or run.incarnation is not None:
                    crash_point(settings, "before_write")
                    with runreport.phase("work", exchange):
                        run.write()
                    crash_point(settings, "after_write")
                    with runreport.phase("commit", exchange):
                        result.snapshot_id = run.commit()
                    crash_point(settings, "after_commit")
                    result.status, result.records, result.bytes = "committed", run.records, run.bytes
                    result.tasks = run.tasks
                break
            except _MainMoved as moved:
                if attempt == MAX_ATTEMPTS:
                    raise ConcurrentRunError(f"main of {run.table} kept moving during {attempt} attempts "
                                             f"(maintenance?): {moved}") from moved
                log.warning("main of %s moved without new offsets (compaction?); re-planning", run.table,
                            extra={"attempt": attempt, "run_id": run_id})
            finally:
                with runreport.phase("commit", exchange):  # the commit's clean-up (a no-op without a branch)
                    run.drop_branch()
        starts = {r.partition: r.start for r in plan.ranges}
        with runreport.phase("commit", exchange):
            lag = _commit_group(settings, exchange, run, plan)
        result.partitions = {p: {"start": starts.get(p, o), "end": o, "lag": lag.get(p, 0)}
                             for p, o in plan.next_offsets.items()}
    except BronzeError as err:
        metrics.incr("bronze.runs", tags={**tags, "status": "failed"})
        metrics.timing("bronze.duration_ms", (time.monotonic() - started) * 1000, tags={**tags, "status": "failed"})
        log.error("bronze run failed: %s", err, extra={"exchange": exchange, "run_id": run_id,
                                                       "error_type": type(err).__name__})
        raise
    finally:
        metrics.close()
    result.duration_s = time.monotonic() - started
    _send_metrics(settings, result)
    log.info("bronze run %s: %d records", result.status, result.records, extra={"bronze_run": result.as_log()})
    return result


def _commit_group(settings: Settings, exchange: str, run: BronzeRun, plan: Plan) -> dict[int, int]:
    """Mirror main's offsets into the consumer group (every run, so a run killed before this heals)."""
    try:
        return kafka.commit_group(settings.bootstrap_servers, names.bronze_consumer_group(exchange), run.topic,
                                  plan.next_offsets, {p: m.end for p, m in run.marks.items()},
                                  settings.bronze_kafka_timeout_s)
    except KafkaException as err:
        # The Iceberg commit is the source of truth; the group is only for lag tooling.
        log.warning("could not commit Bronze offsets to consumer group %s: %s",
                    names.bronze_consumer_group(exchange), err, extra={"exchange": exchange})
        metrics = StatsD.from_settings(settings)
        try:
            metrics.incr("bronze.group_commit_failed", tags={"exchange": exchange})
        finally:
            metrics.close()
        return {p: max(0, m.end - plan.next_offsets.get(p, 0)) for p, m in run.marks.items()}


def _send_metrics(settings: Settings, result: RunResult) -> None:
    metrics = StatsD.from_settings(settings)
    tags = {"exchange": result.exchange}
    try:
        metrics.incr("bronze.runs", tags={**tags, "status": result.status})
        metrics.incr("bronze.records", result.records, tags=tags)
        metrics.incr("bronze.bytes", result.bytes, tags=tags)
        metrics.timing("bronze.duration_ms", result.duration_s * 1000, tags={**tags, "status": result.status})
        for p, info in result.partitions.items():
            metrics.gauge("bronze.lag", info["lag"], tags={**tags, "partition": p})
            metrics.gauge("bronze.offset", info["end"], tags={**tags, "partition": p})
    finally:
        metrics.close()
