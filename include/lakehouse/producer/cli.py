"""``lakehouse produce`` (replay or live, into Kafka) and ``lakehouse generate`` (recordings).

``produce`` prints one summary line at exit (frames, trades produced, skipped, rejected,
delivery errors). SIGINT/SIGTERM stop reading, flush what Kafka accepted, print the summary
and exit 0; the exit code is 1 when records failed delivery or stayed unacknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lakehouse.producer.normalize import SUPPORTED_EXCHANGES
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than zero, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than zero, got {text}")
    return value


def _symbols(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def add_commands(sub: Any) -> None:
    p = sub.add_parser("produce", help="produce exchange trades into Kafka (replay a recording, or live)",
                       description="Replay a recording (default: the shipped sample) or follow the live "
                                   "websocket feed, producing V2 Avro records to the exchange's topic.")
    p.add_argument("--exchange", required=True, choices=SUPPORTED_EXCHANGES)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--replay", metavar="PATH", type=Path,
                        help="JSON-lines recording of raw frames, optionally gzipped (default: the shipped sample)")
    source.add_argument("--live", action="store_true", help="follow the exchange's websocket feed")
    p.add_argument("--symbols", type=_symbols, help="live: comma-separated symbols (btcusdt,ethusdt / BTC/USD,ETH/USD)")
    p.add_argument("--rate", type=_positive_float, help="replay: at most N trades per second (default: as fast as possible)")
    p.add_argument("--loop", action="store_true",
                   help="replay: repeat forever, re-stamping times to now and shifting trade ids per iteration")
    p.add_argument("--restamp", action="store_true", help="replay: re-stamp trade times to now (implied by --loop)")
    p.add_argument("--max-trades", type=_positive_int, help="replay: stop after producing N trades")
    p.add_argument("--dry-run", action="store_true", help="normalize and encode, but send nothing to Kafka")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_produce)

    g = sub.add_parser("generate", help="write a realistic, deterministic recording of raw exchange frames")
    g.add_argument("--exchange", required=True, choices=SUPPORTED_EXCHANGES)
    g.add_argument("--trades", required=True, type=_positive_int, help="number of trades in the recording")
    g.add_argument("--out", required=True, type=Path, help="output file (.jsonl, or .jsonl.gz to gzip)")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--start", help="ISO time of the first trade, or 'now' (default 2024-03-01T00:00:00Z)")
    g.add_argument("--time-unit", choices=("ms", "us"), default="ms", help="binance: trade time unit")
    g.add_argument("--plain", action="store_true", help="binance: single-stream frames instead of combined")
    g.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse.cli import CliError
    from lakehouse.producer.generator import DEFAULT_START_US, generate_frames, write_recording

    start_us = DEFAULT_START_US
    if args.start == "now":
        start_us = time.time_ns() // 1000
    elif args.start:
        try:
            start = dt.datetime.fromisoformat(args.start)
        except ValueError as err:
            raise CliError(f"--start {args.start!r} is not an ISO time") from err
        start = start if start.tzinfo else start.replace(tzinfo=dt.timezone.utc)
        start_us = (start - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
    frames = generate_frames(args.exchange, args.trades, seed=args.seed, start_us=start_us,
                             time_unit=args.time_unit, combined=not args.plain)
    try:
        count = write_recording(args.out, frames)
    except OSError as err:
        raise CliError(f"cannot write {args.out}: {err}") from err
    print(f"wrote {count} frames ({args.trades} trades) to {args.out}")
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (the replay loop checks it per frame) instead of killing the process."""
    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set()) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _run_live(runner: Any) -> None:
    """Run the live client until SIGINT/SIGTERM cancels it."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(runner.run())
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse import broker, names
    from lakehouse.cli import CliError
    from lakehouse.metrics import StatsD
    from lakehouse.producer.pipeline import MemorySink, Sink, Stats, build_publisher
    from lakehouse.producer.replay import ReplayError, replay, sample_path

    exchange = args.exchange
    if exchange not in settings.exchanges:
        raise CliError(f"exchange {exchange!r} is not configured (LAKEHOUSE_EXCHANGES={','.join(settings.exchanges)})")
    replay_only = [flag for flag, value in (("--rate", args.rate), ("--loop", args.loop), ("--restamp", args.restamp),
                                            ("--max-trades", args.max_trades)) if value]
    if args.live and replay_only:
        raise CliError(f"{', '.join(replay_only)} apply to replay, not to --live")
    if args.symbols and not args.live:
        raise CliError("--symbols applies to --live")
    try:
        path = None if args.live else (args.replay or sample_path(exchange))
    except ReplayError as err:
        raise CliError(str(err)) from err
    if path is not None and not path.is_file():
        raise CliError(f"recording {path} does not exist")

    stats = Stats()
    sink: Sink
    if args.dry_run:
        sink = MemorySink(keep=False)
    else:
        from lakehouse.producer.kafka import KafkaSink

        broker.ensure_topics(settings)
        sink = KafkaSink(settings, stats, client_id=f"lakehouse-producer-{exchange}")
    statsd = StatsD.from_settings(settings)
    publisher = build_publisher(settings, exchange, sink, stats=stats, live=args.live, statsd=statsd)
    log.info("producer started", extra={"exchange": exchange, "topic": names.topic(settings, exchange),
                                        "source": "live" if args.live else str(path), "dry_run": args.dry_run})
    started = time.monotonic()
    try:
        if args.live:
            from lakehouse.producer.live import LiveRunner, feed_from_settings

            try:
                feed = feed_from_settings(settings, exchange, args.symbols)
            except ValueError as err:
                raise CliError(str(err)) from err
            asyncio.run(_run_live(LiveRunner.from_settings(settings, feed, publisher)))
        else:
            stop = threading.Event()
            with _stop_on_signals(stop):
                try:
                    replay(publisher, path, rate=args.rate, loop=args.loop, restamp=args.restamp,
                           max_trades=args.max_trades, stop=stop)
                except ReplayError as err:
                    raise CliError(str(err)) from err
    finally:
        # Whatever ended the run (end of file, signal, error), deliver what was accepted.
        stats.undelivered = sink.flush(settings.producer_flush_timeout_s)
        sink.close()
        publisher.report_metrics()
        statsd.close()
    elapsed = time.monotonic() - started
    summary = stats.summary(exchange, elapsed)
    print(json.dumps({"exchange": exchange, "elapsed_s": round(elapsed, 3), **stats.as_dict()})
          if args.json else f"produce {summary}", flush=True)
    log.info("producer finished", extra={"exchange": exchange, **stats.as_dict()})
    return 1 if stats.delivery_errors or stats.undelivered else 0
