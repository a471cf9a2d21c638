"""One committer of the catalog-contention test, run as its own OS process.

``python contention_worker.py ROLE OUT GO SECONDS``: load the settings from the LAKEHOUSE_*
environment, get ready (a Spark session for the Spark roles), touch ``OUT.ready``, wait for the
file ``GO`` (its text is the start time), then make its ``ATTEMPTS`` commits as fast as it can
(giving up after ``SECONDS``) and write what it did to ``OUT`` as JSON: the sequence numbers it
reported committed and every failure (exception type, Java cause chain, message). Committing is
the product's own code path: pyiceberg roles append data files with
:func:`lakehouse.catalog.append_data_files` (as Bronze and Silver do), Spark roles run Iceberg SQL
through :func:`lakehouse.spark.session` (as Gold and maintenance do).

Roles (tables ``SHARED``, ``SIDE``, ``BARS``):
``bronze``  pyiceberg appends to the shared table, like a Bronze run;
``silver``  pyiceberg appends alternately to the shared and the side table, like Silver + DLQ;
``replay``  pyiceberg appends to the side table, like a Silver replay;
``gold``    Spark INSERT and insert-only MERGE into the shared table, upsert MERGE into the bars table;
``maintenance``  Spark table-property change, then ``rewrite_data_files``, ``rewrite_manifests`` and
            ``expire_snapshots`` on the shared table.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lakehouse.settings import Settings, load_settings

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

NAMESPACE = "market_data"
SHARED = f"{NAMESPACE}.contention_shared"
SIDE = f"{NAMESPACE}.contention_side"
BARS = f"{NAMESPACE}.contention_bars"
ROWS_PER_COMMIT = 3
BAR_KEYS = 4
# Commits each role attempts, as fast as it can: the pyiceberg roles commit in a few milliseconds each,
# so an unbounded loop of theirs would starve the slower Spark commits of every retry (a contention
# no production writer creates: each commits a table about once a minute).
ATTEMPTS = {"bronze": 40, "silver": 40, "replay": 40, "gold": 15, "maintenance": 10}
WRITER_PROPERTY = "contention.writer"
SEQ_PROPERTY = "contention.seq"


def rows(writer: str, seq: int) -> pa.Table:
    """The rows one commit adds: ``ROWS_PER_COMMIT`` rows tagged (writer, seq, part)."""
    return pa.table({"writer": pa.array([writer] * ROWS_PER_COMMIT, pa.string()),
                     "seq": pa.array([seq] * ROWS_PER_COMMIT, pa.int32()),
                     "part": pa.array(range(ROWS_PER_COMMIT), pa.int32()),
                     "payload": pa.array([uuid.uuid4().hex for _ in range(ROWS_PER_COMMIT)], pa.string())})


def write_files(table: Table, writer: str, seq: int) -> list[DataFile]:
    """The data files of one commit, written the way Bronze and Silver tasks write theirs."""
    from pyiceberg.io.pyarrow import write_file
    from pyiceberg.table import WriteTask

    task = WriteTask(write_uuid=uuid.uuid4(), task_id=0, schema=table.schema(),
                     record_batches=rows(writer, seq).to_batches())
    return list(write_file(table.io, table.metadata, iter([task])))


def describe_failure(err: BaseException) -> dict[str, Any]:
    """Type, Java cause chain (for Spark errors) and message of a failed commit, for the test to judge."""
    chain: list[str] = []
    java = getattr(err, "java_exception", None) or getattr(err, "_origin", None)
    while java is not None and len(chain) < 10:
        chain.append(f"{java.getClass().getName()}: {java.getMessage()}")
        java = java.getCause()
    return {"type": f"{type(err).__module__}.{type(err).__qualname__}", "message": str(err),
            "java_chain": chain, "traceback": traceback.format_exc()[-4000:]}


class Worker:
    """Counts what one process committed and what failed."""

    def __init__(self, role: str, settings: Settings) -> None:
        self.role = role
        self.settings = settings
        self.committed: dict[str, list[int]] = {}  # writer tag -> sequence numbers reported committed
        self.failed: list[dict[str, Any]] = []
        self.first_commit: tuple[float, float] | None = None  # (start, end) of the first attempt

    def more(self, deadline: float) -> bool:
        """Whether to attempt another commit: attempts left and time left."""
        return len(self.failed) + sum(map(len, self.committed.values())) < ATTEMPTS[self.role] \
            and time.time() < deadline

    def attempt(self, writer: str, seq: int, commit: Callable[[], object]) -> None:
        started = time.time()
        try:
            commit()
        # Any failure is recorded with its type and message for the test to judge: that is the finding.
        except Exception as err:  # noqa: BLE001
            self.failed.append({"writer": writer, "seq": seq, **describe_failure(err)})
            return
        finally:
            if self.first_commit is None:
                self.first_commit = (started, time.time())
        self.committed.setdefault(writer, []).append(seq)

    def result(self, started: float, finished: float) -> dict[str, Any]:
        return {"role": self.role, "committed": self.committed, "failed": self.failed,
                "first_commit": self.first_commit, "started": started, "finished": finished}


def pyiceberg_loop(worker: Worker, gate: Gate) -> None:
    """Append data files written here with the product's commit helper, one snapshot per commit."""
    from lakehouse.catalog import append_data_files, load_catalog

    catalog = load_catalog(worker.settings)
    catalog.load_table(SHARED)  # imports and catalog ready before GO
    deadline = gate.ready_then_go()
    targets = {"bronze": (SHARED,), "silver": (SHARED, SIDE), "replay": (SIDE,)}[worker.role]
    seq = 0
    while worker.more(deadline):
        name = targets[seq % len(targets)]
        writer = f"{worker.role}@{name.rsplit('.', 1)[1]}"

        def commit(name: str = name, writer: str = writer, seq: int = seq) -> None:
            table = catalog.load_table(name)
            append_data_files(table, write_files(table, writer, seq), {WRITER_PROPERTY: writer, SEQ_PROPERTY: str(seq)})

        worker.attempt(writer, seq, commit)
        seq += 1


def gold_loop(worker: Worker, gate: Gate) -> None:
    """INSERT and insert-only MERGE into the shared table (Gold's trades), upsert MERGE into the bars."""
    from lakehouse.spark import session

    spark = session(worker.settings, f"contention-{worker.role}")
    cat = worker.settings.catalog_name
    shared, bars = f"{cat}.{SHARED}", f"{cat}.{BARS}"
    spark.sql(f"SELECT count(*) FROM {shared}").collect()  # catalog and planner warm before GO
    deadline = gate.ready_then_go()
    seq = 0
    while worker.more(deadline):
        kind = ("insert", "merge", "bars")[seq % 3]
        values = ", ".join(f"('gold-{kind}', {seq}, {part}, '{uuid.uuid4().hex}')" for part in range(ROWS_PER_COMMIT))
        if kind == "insert":
            statement = f"INSERT INTO {shared} VALUES {values}"
        elif kind == "merge":
            statement = (f"MERGE INTO {shared} t USING (SELECT * FROM VALUES {values} AS s(writer, seq, part, payload)) s "
                         "ON t.writer = s.writer AND t.seq = s.seq AND t.part = s.part WHEN NOT MATCHED THEN INSERT *")
        else:
            statement = (f"MERGE INTO {bars} t USING (SELECT {seq % BAR_KEYS} AS key, {seq} AS value) s "
                         "ON t.key = s.key WHEN MATCHED THEN UPDATE SET t.value = s.value "
                         "WHEN NOT MATCHED THEN INSERT (key, value) VALUES (s.key, s.value)")
        worker.attempt(f"gold-{kind}", seq, lambda statement=statement: spark.sql(statement).collect())
        seq += 1
    spark.stop()


def maintenance_loop(worker: Worker, gate: Gate) -> None:
    """Maintenance procedures (compaction, manifest rewrite, snapshot expiry) on the shared table while the
    others append to it."""
    from lakehouse.spark import session

    spark = session(worker.settings, f"contention-{worker.role}")
    cat = worker.settings.catalog_name
    spark.sql(f"SELECT count(*) FROM {cat}.{SHARED}").collect()
    deadline = gate.ready_then_go()
    seq = 0
    while worker.more(deadline):
        # First a table-property commit: maintenance's first commit certainly meets the held lock.
        procedure = "set_property" if seq == 0 else ("rewrite_data_files", "rewrite_manifests", "expire_snapshots")[seq % 3]
        if procedure == "set_property":
            call = f"ALTER TABLE {cat}.{SHARED} SET TBLPROPERTIES ('contention.maintenance' = '{uuid.uuid4().hex}')"
        elif procedure == "rewrite_data_files":
            call = (f"CALL {cat}.system.rewrite_data_files(table => '{SHARED}', "
                    "options => map('min-input-files', '2'))")
        elif procedure == "rewrite_manifests":
            call = f"CALL {cat}.system.rewrite_manifests('{SHARED}')"
        else:
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            call = (f"CALL {cat}.system.expire_snapshots(table => '{SHARED}', "
                    f"older_than => TIMESTAMP '{now}', retain_last => 5)")
        worker.attempt(f"maintenance-{procedure}", seq, lambda call=call: spark.sql(call).collect())
        seq += 1
    spark.stop()


@dataclass
class Gate:
    """The start line: every worker signals ready, then all start at the time the test writes to GO."""

    out: Path
    go: Path
    seconds: float
    started: float = 0.0

    def ready_then_go(self) -> float:
        """Touch ``OUT.ready``, block until GO holds a start time; return the deadline."""
        self.out.with_suffix(".ready").touch()
        while not self.go.exists():  # the test renames GO into place with the start time in it
            time.sleep(0.05)
        self.started = float(self.go.read_text())
        while time.time() < self.started:
            time.sleep(0.01)
        return self.started + self.seconds


LOOPS: dict[str, Callable[[Worker, Gate], None]] = {
    "bronze": pyiceberg_loop, "silver": pyiceberg_loop, "replay": pyiceberg_loop,
    "gold": gold_loop, "maintenance": maintenance_loop}


def main(argv: list[str]) -> int:
    role, out, go, seconds = argv[0], Path(argv[1]), Path(argv[2]), float(argv[3])
    if role not in LOOPS:
        print(f"unknown role {role!r}; expected one of {', '.join(LOOPS)}", file=sys.stderr)
        return 2
    worker = Worker(role, load_settings())
    gate = Gate(out, go, seconds)
    LOOPS[role](worker, gate)
    out.write_text(json.dumps(worker.result(gate.started, time.time())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
