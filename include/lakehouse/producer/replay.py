"""Replay mode: recorded raw frames (JSON lines, optionally gzipped) through a :class:`Publisher`.

A recording holds one frame per line exactly as the exchange sent it, so replaying it goes
through the same normalizer as live data. ``rate`` paces the replay in trades per second;
``loop`` replays forever, re-stamping trade times to the moment each frame is replayed (never
later: each frame's latest time becomes its produce time, see
:class:`~lakehouse.producer.normalize.Normalizer`) and shifting trade ids by the recording's id
span per iteration, so the stream looks live and each iteration's trades get their own
message_ids.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from lakehouse.producer.normalize import now_us
from lakehouse.producer.pipeline import Publisher

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_POLL_EVERY = 1024  # frames between producer polls / metric checks when not rate-limited


class ReplayError(RuntimeError):
    """The recording cannot be replayed as asked (missing, unreadable, or nothing to loop over)."""


def sample_path(exchange: str) -> Path:
    """The small recording shipped with the package for ``exchange`` (made by the generator)."""
    path = Path(str(resources.files("lakehouse").joinpath("data", f"{exchange}_trades.jsonl.gz")))
    if not path.is_file():
        raise ReplayError(f"no shipped sample recording for exchange {exchange!r} ({path})")
    return path


def read_frames(path: Path) -> Iterator[bytes]:
    """The frames of a recording, one per non-blank line; gzip is detected from the content."""
    try:
        with open(path, "rb") as probe:
            gzipped = probe.read(2) == _GZIP_MAGIC
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as lines:
            for line in lines:
                frame = line.rstrip(b"\r\n")
                if frame.strip():
                    yield frame
    except (OSError, EOFError) as err:  # EOFError: a truncated gzip file
        raise ReplayError(f"cannot read recording {path}: {err}") from err


def replay(publisher: Publisher, path: Path, *, rate: float | None = None, loop: bool = False,
           restamp: bool = False, max_trades: int | None = None, stop: threading.Event | None = None) -> None:
    """Publish the recording's frames; returns at the end (or never with ``loop``), on ``stop`` or ``max_trades``.

    ``rate`` limits produced trades per second; ``restamp`` (implied by ``loop``) re-stamps times
    to now without looping.
    """
    if rate is not None and rate <= 0:
        raise ReplayError(f"rate must be positive, got {rate}")
    stop = stop or threading.Event()
    stats = publisher.stats
    normalizer = publisher.normalizer
    normalizer.restamp = restamp or loop
    started = time.monotonic()
    base_produced = stats.produced
    iteration = 0
    while True:
        normalizer.begin_iteration(iteration)
        produced_before = stats.produced
        for count, raw in enumerate(read_frames(path), 1):
            if stop.is_set():
                return
            publisher.handle(raw, now_us())
            if max_trades is not None and stats.produced - base_produced >= max_trades:
                return
            if rate is not None:
                _pace(publisher, started + (stats.produced - base_produced) / rate, stop)
            if count % _POLL_EVERY == 0:  # delivery callbacks and metrics also when never ahead of schedule
                publisher.sink.poll(0)
                publisher.maybe_report()
        if not loop:
            return
        if stats.produced == produced_before:
            raise ReplayError(f"recording {path} has no trades to loop over")
        iteration += 1
        log.info("replay loop", extra={"exchange": publisher.exchange, "iteration": iteration})


# How far ahead of its schedule a paced replay may run before it waits. librdkafka's poll() takes
# whole milliseconds: waiting for the sub-millisecond gap between two trades at 1,000/s rounds to
# poll(0) and spins a core (measured: half a core per producer at 1,000 trades/s). Running up to
# 10 ms ahead and then waiting the whole gap keeps the rate exact on average and costs nothing.
PACE_SLACK_S = 0.010


def _pace(publisher: Publisher, due: float, stop: threading.Event) -> None:
    """Wait until the monotonic time ``due`` unless it is within :data:`PACE_SLACK_S`, serving
    producer callbacks and metrics meanwhile."""
    publisher.maybe_report()
    if due - time.monotonic() <= PACE_SLACK_S:
        return
    while not stop.is_set():
        remaining = due - time.monotonic()
        if remaining <= 0:
            return
        publisher.sink.poll(min(max(remaining, 0.001), 0.1))
