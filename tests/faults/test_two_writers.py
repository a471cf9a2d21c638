"""Two writers at once: a scheduled and a manual run of the same layer overlap on the same input.

Two long-lived worker processes (``two_writers_worker.py``, one SparkSession each) race Silver,
then Gold, on the same input for :data:`ROUNDS` rounds; between rounds new Bronze rows arrive.
The second writer of a batch must commit nothing of it and fail with a ConcurrentWriterError:
afterwards every Bronze row is in Silver or the dead-letter table exactly once, and every trade
is in Gold exactly once. The rounds stagger the writers' starts (0 to 1.4 s) so that both the
"both plan the same batch" and the "one retries the batch the other is running" interleavings
occur, and the test checks that some rounds did overlap, so it cannot pass vacuously.

Also: a pyiceberg-level check of the tagged compare-and-set commit, and the real job entry point
(``lakehouse run silver`` -> spark-submit) exiting 75 with one error line when it loses.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from pyiceberg.expressions import EqualTo

from support import make_env
from lakehouse import avro, names, stack, tables
from lakehouse.catalog import load_catalog
from lakehouse.jobs import EXIT_CONCURRENT
from lakehouse.orchestration.pending import batch_ids, local_dir
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings
from lakehouse.silver.synthetic import bronze_arrow, trade

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

WORKER = Path(__file__).with_name("two_writers_worker.py")
EX = "binance"
ROUNDS = 20
VALID_PER_COMMIT = 12
BAD_PER_COMMIT = 3
COMMITS_PER_ROUND = 2  # with one Bronze file per Silver batch: two batches per Silver run
STAGGER_S = (0.0, 0.0, 0.2, 0.4, 0.7, 1.0, 1.4)  # the second writer's start delay, by round
READY_TIMEOUT_S = 180.0
ROUND_TIMEOUT_S = 180.0
WORKER_ENV = {"LAKEHOUSE_EXCHANGES": EX, "LAKEHOUSE_SILVER_MAX_FILES_PER_BATCH": "1",
              "LAKEHOUSE_SPARK_DRIVER_MEMORY": "1g", "LAKEHOUSE_SPARK_SHUFFLE_PARTITIONS": "2",
              "LAKEHOUSE_LOG_LEVEL": "WARNING"}


def register(settings: Settings) -> int:
    return registry_from_settings(settings).register(names.value_subject(names.topic(settings, EX)),
                                                     avro.load_schema())


def append_bronze(settings: Settings, sid: int, first_offset: int, rnd: random.Random) -> None:
    """One Bronze commit: valid trades and undecodable rows (dead letters) at consecutive offsets."""
    now = dt.datetime.now(dt.timezone.utc)
    at_us = int(now.timestamp() * 1_000_000) - 30_000_000
    parsed = avro.parsed_trade_schema()
    values = [avro.encode(sid, parsed, trade(first_offset + i, at_us + i)) for i in range(VALID_PER_COMMIT)]
    values += [b"\x9f" + bytes(rnd.getrandbits(8) for _ in range(20)) for _ in range(BAD_PER_COMMIT)]
    table = load_catalog(settings).load_table(names.bronze_table(EX))
    table.append(bronze_arrow(values, names.topic(settings, EX), now, first_offset))


class Writers:
    """The two worker processes: commands on their stdin, results read back from their files."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.results = [workdir / f"writer{i}.jsonl" for i in range(2)]
        self.logs: list[IO[bytes]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(2):
            log = (workdir / f"writer{i}.log").open("wb")
            self.logs.append(log)
            self.procs.append(subprocess.Popen([sys.executable, str(WORKER), str(self.results[i])], env=env,
                                               stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT))

    def _records(self, i: int) -> list[dict[str, Any]]:
        path = self.results[i]
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def _wait(self, done: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    pytest.fail(f"writer{i} exited {proc.returncode} while waiting for {what}; "
                                f"log: {self.logs[i].name}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout_s:.0f}s; logs: {', '.join(log.name for log in self.logs)}")
            time.sleep(0.05)

    def wait_ready(self) -> None:
        self._wait(lambda: all(self._records(i) for i in range(2)), READY_TIMEOUT_S, "ready writers")

    def race(self, layer: str, round_no: int) -> list[dict[str, Any]]:
        """Both writers run ``layer`` now, one of them delayed by this round's stagger; their results."""
        delays = [0.0, 0.0]
        delays[round_no % 2] = STAGGER_S[round_no % len(STAGGER_S)]
        for proc, delay in zip(self.procs, delays):
            assert proc.stdin is not None
            proc.stdin.write(f"{layer} {round_no} {delay}\n".encode())
            proc.stdin.flush()

        def result(i: int) -> dict[str, Any] | None:
            return next((r for r in self._records(i) if r.get("layer") == layer and r.get("round") == round_no), None)

        self._wait(lambda: all(result(i) is not None for i in range(2)), ROUND_TIMEOUT_S, f"{layer} round {round_no}")
        return [r for i in range(2) if (r := result(i)) is not None]

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


@dataclasses.dataclass
class Race:
    settings: Settings
    rounds: dict[str, list[list[dict[str, Any]]]]  # layer -> per round: both writers' results
    seconds: float
    first_gap: str | None = None  # the first round after which Silver lacked Bronze rows, and what was seen


@dataclasses.dataclass
class Landed:
    """Where the Bronze rows went: Bronze's offsets, and per offset how often Silver or the dead-letter table has it."""

    bronze_rows: int
    offsets: set[int]
    silver_rows: int
    dlq_rows: int
    counts: collections.Counter[int]

    @property
    def missing(self) -> list[int]:
        return sorted(self.offsets - set(self.counts))


def landed(settings: Settings) -> Landed:
    catalog = load_catalog(settings)
    bronze = catalog.load_table(names.bronze_table(EX)).scan(selected_fields=("offset",)).to_arrow()
    silver = catalog.load_table(names.silver_table(EX)).scan(selected_fields=("bronze_offset",)).to_arrow()
    dlq = catalog.load_table(names.DLQ_TABLE).scan(row_filter=EqualTo("bronze_source", names.bronze_table(EX)),
                                                   selected_fields=("bronze_offset",)).to_arrow()
    return Landed(bronze.num_rows, set(bronze["offset"].to_pylist()), silver.num_rows, dlq.num_rows,
                  collections.Counter(silver["bronze_offset"].to_pylist() + dlq["bronze_offset"].to_pylist()))


def checkpoint_logs(settings: Settings) -> str:
    """The Silver checkpoint's offset and commit log entries (batch ids), for a failure message."""
    root = local_dir(names.checkpoint(settings, "silver", EX))
    return "; ".join(f"{log}: {batch_ids(root / log)}" for log in ("offsets", "commits")) if root else "remote"


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Race]:
    """The stack after :data:`ROUNDS` rounds of two writers racing Silver, then Gold."""
    workdir = tmp_path_factory.mktemp("two-writers")
    settings = load_settings(make_env(workdir / "home", LAKEHOUSE_CATALOG_NAME="two_writers", **WORKER_ENV))
    stack.up(settings)
    started = time.monotonic()
    writers = Writers(workdir, {**os.environ, **settings.env()})
    try:
        sid = register(settings)
        rnd = random.Random(12)
        rounds: dict[str, list[list[dict[str, Any]]]] = {"silver": [], "gold": []}
        writers.wait_ready()
        first_gap = None
        for round_no in range(ROUNDS):
            for commit in range(COMMITS_PER_ROUND):
                append_bronze(settings, sid, (round_no * COMMITS_PER_ROUND + commit) * 100, rnd)
            for layer in ("silver", "gold"):
                rounds[layer].append(writers.race(layer, round_no))
            gap = landed(settings).missing if first_gap is None else []  # after a round, there must be none
            if gap:  # every round adds Bronze rows that one of the two runs must land
                first_gap = (f"after round {round_no}, {len(gap)} Bronze rows in neither Silver nor the dead-letter "
                             f"table (offsets {gap[0]}..{gap[-1]}); this round's Silver runs: "
                             f"{rounds['silver'][-1]}; checkpoint {checkpoint_logs(settings)}")
        writers.close()
        yield Race(settings, rounds, time.monotonic() - started, first_gap)
    finally:
        writers.close()
        stack.down(settings)


def outcome_summary(rounds: list[list[dict[str, Any]]]) -> dict[str, int]:
    statuses = collections.Counter(r["status"] for results in rounds for r in results)
    return {"rounds": len(rounds), "rounds_with_loser": sum(any(r["status"] == "lost" for r in rs) for rs in rounds),
            "rounds_both_wrote": sum(all(r["status"] == "committed" and r["written"] for r in rs) for rs in rounds),
            **statuses}


def round_outcomes(rounds: list[list[dict[str, Any]]]) -> list[str]:
    """Per round, both writers' status and rows read, e.g. ``3: committed/30 lost/0``."""
    return [f"{n}: " + " ".join(f"{r['status']}/{r['read']}" for r in results) for n, results in enumerate(rounds)]


def check_outcomes(layer: str, rounds: list[list[dict[str, Any]]], error_class: str) -> None:
    """No unexpected error, losers are one-line ConcurrentWriterErrors, and some rounds overlapped."""
    errors = [r for results in rounds for r in results if r["status"] == "error"]
    assert not errors, f"{layer}: {len(errors)} writer errors, first: {errors[0]['message']}\n{errors[0]['traceback']}"
    losers = [r for results in rounds for r in results if r["status"] == "lost"]
    assert all(r["error_type"] == error_class and "\n" not in r["message"] for r in losers), losers
    summary = outcome_summary(rounds)
    print(f"{layer}: {summary}; loser messages: {sorted({r['message'][:160] for r in losers})}")
    assert summary["rounds_with_loser"] + summary["rounds_both_wrote"] > 0, \
        f"{layer}: no round overlapped, the race proves nothing: {summary}"


def test_two_silver_writers_land_every_bronze_row_exactly_once(race: Race) -> None:
    rows = landed(race.settings)
    duplicated = {o: n for o, n in rows.counts.items() if n > 1}

    check_outcomes("silver", race.rounds["silver"], "SilverConcurrentWriterError")  # first: a writer error says why
    assert race.first_gap is None, race.first_gap
    assert len(rows.offsets) == ROUNDS * COMMITS_PER_ROUND * (VALID_PER_COMMIT + BAD_PER_COMMIT) == rows.bronze_rows
    assert not duplicated, f"{len(duplicated)} Bronze rows landed more than once ({sum(duplicated.values())} rows)"
    missing = rows.missing
    assert not missing, (f"{len(missing)} Bronze rows never landed (offsets {missing[0]}..{missing[-1]}); "
                         f"Silver runs by round: {round_outcomes(race.rounds['silver'])}")
    assert rows.silver_rows == ROUNDS * COMMITS_PER_ROUND * VALID_PER_COMMIT
    assert rows.silver_rows + rows.dlq_rows == rows.bronze_rows


def test_two_gold_writers_insert_every_trade_exactly_once(race: Race) -> None:
    catalog = load_catalog(race.settings)
    silver_ids = catalog.load_table(names.silver_table(EX)).scan(selected_fields=("message_id",)).to_arrow()
    gold_ids = catalog.load_table(names.GOLD_TABLE).scan(selected_fields=("message_id",)).to_arrow()
    bars = catalog.load_table(names.OHLCV_TABLE).scan(selected_fields=("trade_count",)).to_arrow()
    ids = gold_ids["message_id"].to_pylist()
    copies = {i: n for i, n in collections.Counter(ids).items() if n > 1}

    check_outcomes("gold", race.rounds["gold"], "GoldConcurrentWriterError")
    assert not copies, f"{len(copies)} trades are in Gold more than once ({sum(copies.values())} rows)"
    assert set(ids) == set(silver_ids["message_id"].to_pylist()), \
        f"Gold runs by round: {round_outcomes(race.rounds['gold'])}"
    assert sum(bars["trade_count"].to_pylist()) == len(ids)  # every bar recomputed after its last insert
    print(f"race of {ROUNDS} rounds (Silver and Gold) took {race.seconds:.0f}s")


def test_a_tagged_commit_lands_once_however_stale_the_table_it_was_built_from(tmp_path: Path) -> None:
    """The compare-and-set under the race: a writer holding metadata from before another writer's
    commit of the same tag commits nothing; a commit of another tag in between is no conflict."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyiceberg.io.pyarrow import parquet_file_to_data_file
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField

    from lakehouse.catalog import TagCommittedError, append_data_files

    settings = load_settings(make_env(tmp_path / "home"))
    catalog = load_catalog(settings)
    catalog.create_namespace_if_not_exists(names.NAMESPACE)
    table = catalog.create_table(f"{names.NAMESPACE}.tagged", Schema(NestedField(1, "id", LongType())),
                                 properties=tables.COMMON_PROPERTIES)

    def data_file(first: int) -> Any:
        path = f"{table.location()}/data/{first}.parquet"
        with table.io.new_output(path).create() as out:
            pq.write_table(pa.Table.from_pylist([{"id": first + i} for i in range(3)], table.schema().as_arrow()), out)
        return parquet_file_to_data_file(table.io, table.metadata, path)

    key = names.SILVER_BATCH_PROPERTY
    stale_a, stale_b = catalog.load_table(table.name()), catalog.load_table(table.name())
    append_data_files(catalog.load_table(table.name()), [data_file(0)], {key: "q:1"}, unique=key)
    append_data_files(stale_a, [data_file(10)], {key: "q:2"}, unique=key)  # another batch: rebuilt on the new head
    with pytest.raises(TagCommittedError, match="q:1"):
        append_data_files(stale_b, [data_file(20)], {key: "q:1"}, unique=key)  # the same batch: refused

    assert sorted(catalog.load_table(table.name()).scan().to_arrow()["id"].to_pylist()) == [0, 1, 2, 10, 11, 12]


def test_the_losing_spark_submit_job_exits_75_with_one_error_line(isolated: Settings) -> None:
    """Two ``lakehouse run silver`` at once (spark-submit, as Airflow runs it) on the same backlog."""
    env = {**os.environ, **isolated.env(), **WORKER_ENV}
    sid = register(isolated)
    rnd = random.Random(7)
    attempts = []
    for attempt in range(3):  # rarely, one run finishes before the other starts: new backlog, again
        for commit in range(6):  # six bounded batches: a window of several seconds for the other run
            append_bronze(isolated, sid, (attempt * 10 + commit) * 100, rnd)
        procs = [subprocess.Popen([sys.executable, "-m", "lakehouse", "run", "silver", "--exchange", EX], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        done = [(proc.wait(timeout=600), *proc.communicate()) for proc in procs]
        attempts.append(sorted(code for code, _, _ in done))
        assert all(code in (0, EXIT_CONCURRENT) for code, _, _ in done), [err[-3000:] for _, _, err in done]
        losers = [(out, err) for code, out, err in done if code == EXIT_CONCURRENT]
        if losers:
            break
    else:
        pytest.fail(f"no run lost in {len(attempts)} attempts (exit codes {attempts})")
    # spark-submit forwards the Python driver's stderr on its stdout; the JVM logs on its stderr.
    output = "\n".join(losers[0])
    errors = [line for line in output.splitlines() if line.startswith("silver: error:")]
    assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
    assert errors[0].startswith(f"silver: error: {EX}: another Silver run of {EX} "), errors[0]
    print(f"exit codes {attempts}; the loser's error: {errors[0]}")

    catalog = load_catalog(isolated)
    bronze = catalog.load_table(names.bronze_table(EX)).scan(selected_fields=("offset",)).to_arrow().num_rows
    silver = catalog.load_table(names.silver_table(EX)).scan(selected_fields=("bronze_offset",)).to_arrow()
    dlq = catalog.load_table(names.DLQ_TABLE).scan(selected_fields=("bronze_offset",)).to_arrow()
    landed = silver["bronze_offset"].to_pylist() + dlq["bronze_offset"].to_pylist()
    assert len(landed) == len(set(landed)) <= bronze  # nothing twice; what the loser left, the next run takes
