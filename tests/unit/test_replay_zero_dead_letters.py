"""Replaying the shipped recordings in a loop gives Silver zero dead letters.

Each recording is replayed in-process as ``make run`` replays it (``loop``, so re-stamped, through
the real normalizer, Avro encoder and local schema registry) into a sink that keeps every encoded
value with the moment it was produced. The values are then decoded and validated by Silver's own
code (:func:`~lakehouse.silver.validate.validate_batch` with the rules of
:func:`~lakehouse.silver.rules.for_settings`) against a reference time taken from that moment.
Two things keep the dead-letter count at zero, and each scenario needs one of them:

* the producer never stamps a trade after the moment it produces it: checked with the tolerance
  set to 0 and the produce moment itself as the reference time (the strictest case), on a
  recording whose trade times run ahead of its event times too (the exchange's clocks disagree);
* the clock-skew tolerance absorbs a reference time that trails the produce moment: the clocks
  of the producer's machine and the lakehouse's disagree (and a Bronze run that took its
  ingestion time before reading the end offsets stamped records produced just after it).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from support import make_env

from lakehouse import names
from lakehouse.producer import replay as replay_module
from lakehouse.producer.generator import SAMPLES, write_recording
from lakehouse.producer.normalize import now_us
from lakehouse.producer.pipeline import build_publisher
from lakehouse.producer.replay import read_frames, replay, sample_path
from lakehouse.settings import Settings, load_settings
from lakehouse.silver import rules
from lakehouse.silver.decode import decoder_for
from lakehouse.silver.rules import REFERENCE_TIME_US
from lakehouse.silver.validate import ERROR_REASON, ERROR_TYPE, validate_batch

START_US = 1_767_225_600_000_000  # the fake clocks start at 2026-01-01T00:00:00Z
PRODUCE_COST_US = 20  # what producing one record takes on the fake clock (about the real cost)


class Clock:
    """The producer's wall and monotonic clock, faked: pacing waits advance it instead of sleeping."""

    def __init__(self, start_us: int) -> None:
        self.us = start_us

    def now_us(self) -> int:
        return self.us

    def monotonic(self) -> float:
        return self.us / 1_000_000

    def advance(self, seconds: float) -> None:
        self.us += max(1, round(seconds * 1_000_000))


class CapturingSink:
    """Keeps each trade value with the moment it was produced (``clock``, else the wall clock)."""

    def __init__(self, topic: str, clock: Clock | None) -> None:
        self.topic = topic
        self.clock = clock
        self.values: list[bytes] = []
        self.produced_at: list[int] = []
        self.rejects: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        if topic != self.topic:
            self.rejects.append(value)
            return
        self.values.append(value)
        self.produced_at.append(now_us() if self.clock is None else self.clock.now_us())
        if self.clock is not None:
            self.clock.advance(PRODUCE_COST_US / 1_000_000)

    def poll(self, timeout: float = 0.0) -> int:
        if self.clock is not None and timeout > 0:
            self.clock.advance(timeout)
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Scenario:
    rate: float | None  # trades per second; None: as fast as the producer goes
    fake_clock: bool  # False: the real wall clock
    bronze_behind_s: float  # how far the reference time trails the produce moment
    max_clock_skew_s: str | None  # LAKEHOUSE_MAX_CLOCK_SKEW_S; None: the default


SCENARIOS = {
    # The producer alone: no tolerance, the produce moment itself is the reference.
    "unpaced-real-clock-no-tolerance": Scenario(None, False, 0.0, "0"),
    "paced-200-per-s-no-tolerance": Scenario(200, True, 0.0, "0"),  # make run's LAKEHOUSE_PRODUCER_RATE
    "paced-5000-per-s-no-tolerance": Scenario(5000, True, 0.0, "0"),
    # The reference time trails the produce moment by 0.8 s (a Bronze run stamping its records with
    # its start time, before it read the end offsets: what make run dead-lettered 1% of trades for).
    "unpaced-bronze-0.8s-behind-default-tolerance": Scenario(None, True, 0.8, None),
    # Bronze's clock trails the producer's by almost the whole default tolerance (5 s).
    "paced-200-per-s-bronze-4.9s-behind-default-tolerance": Scenario(200, True, 4.9, None),
}


def trade_after_event(source: Path, target: Path) -> Path:
    """The Binance sample with each frame's trade time and event time swapped: the trade time is
    then up to 2 ms after the event time, as when the exchange's matching engine clock runs ahead
    of its gateway's."""

    def swapped(raw: bytes) -> str:
        frame = json.loads(raw)
        data = frame.get("data", frame)
        if data.get("e") == "trade":
            data["T"], data["E"] = data["E"], data["T"]
        return json.dumps(frame, separators=(",", ":"))

    write_recording(target, (swapped(raw) for raw in read_frames(source)))
    return target


RECORDINGS = {"binance": "binance", "kraken": "kraken", "binance-trade-after-event": "binance"}


def recording(name: str, tmp_path: Path) -> Path:
    if name == "binance-trade-after-event":
        return trade_after_event(sample_path("binance"), tmp_path / "binance_trade_after_event.jsonl")
    return sample_path(name)


def settings_for(scenario: Scenario, tmp_path: Path) -> Settings:
    extra = {} if scenario.max_clock_skew_s is None else {"LAKEHOUSE_MAX_CLOCK_SKEW_S": scenario.max_clock_skew_s}
    return load_settings(make_env(tmp_path / "home", **extra))


@pytest.mark.parametrize("scenario_name", list(SCENARIOS))
@pytest.mark.parametrize("recording_name", list(RECORDINGS))
def test_looped_replay_of_a_recording_gives_silver_zero_dead_letters(
        recording_name: str, scenario_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = SCENARIOS[scenario_name]
    exchange = RECORDINGS[recording_name]
    path = recording(recording_name, tmp_path)
    settings = settings_for(scenario, tmp_path)
    clock = Clock(START_US) if scenario.fake_clock else None
    if clock is not None:  # the replay reads receipt times and paces on this clock
        monkeypatch.setattr(replay_module, "now_us", clock.now_us)
        monkeypatch.setattr(replay_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    sink = CapturingSink(names.topic(settings, exchange), clock)
    publisher = build_publisher(settings, exchange, sink)
    per_iteration = SAMPLES[exchange]["trades"]
    wanted = 2 * per_iteration + per_iteration // 2  # into the third iteration: two whole loops

    replay(publisher, path, rate=scenario.rate, loop=True, max_trades=wanted)

    produced = len(sink.values)  # a Kraken frame carries several trades: its last one may pass ``wanted``
    assert publisher.stats.produced == produced >= wanted and not sink.rejects
    if clock is not None and scenario.rate is not None:  # the pacing really ran on the fake clock
        assert (clock.us - START_US) / 1_000_000 >= 0.9 * wanted / scenario.rate  # the last frame is not waited for
    behind_us = round(scenario.bronze_behind_s * 1_000_000)
    batch = pa.RecordBatch.from_arrays(
        [pa.array(sink.values, pa.binary()), pa.array([at - behind_us for at in sink.produced_at], pa.int64())],
        names=["value", REFERENCE_TIME_US])
    validated = validate_batch(batch, decoder_for(settings), rules.for_settings(settings))

    errors = validated.column(ERROR_TYPE).to_pylist()
    dead = Counter(e for e in errors if e is not None)
    examples = [r for r in validated.column(ERROR_REASON).to_pylist() if r is not None][:3]
    assert not dead, f"{sum(dead.values())} of {len(errors)} replayed trades dead-lettered: {dict(dead)}; {examples}"
    message_ids = validated.column("message_id").to_pylist()
    assert len(set(message_ids)) == produced  # every iteration's trades are trades of their own
    # The producer's own promise, independent of any tolerance: stamped no later than produced.
    stamps = zip(validated.column("timestamp").to_pylist(), validated.column("ingestion_timestamp").to_pylist(),
                 sink.produced_at)
    late = [(ts, ingested, at) for ts, ingested, at in stamps if not ts <= ingested <= at]
    assert not late, f"{len(late)} trades stamped after they were produced, e.g. {late[:3]}"
