"""Deterministic, realistic exchange frames: the shipped samples and any volume for benchmarks.

The model is a small market: taker orders arrive as a Poisson process over a few symbols;
each order fills 1-6 resting orders on one side (same trade time, consecutive trade ids,
prices walking away by a tick); sizes are log-normal in whole lots; the price of each symbol
random-walks in ticks. Binance gets one ``@trade`` frame per fill (combined-stream wrapper
by default, ms or us times) after a subscription answer; Kraken gets a status frame,
subscription acknowledgements, one snapshot per symbol, then one ``update`` frame per order
(several trades), with heartbeats in quiet seconds. Same arguments and seed, same frames.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

DEFAULT_START_US = int(dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
# The shipped samples (include/lakehouse/data/<exchange>_trades.jsonl.gz) are exactly these runs.
SAMPLES: dict[str, dict[str, int]] = {"binance": {"trades": 4000, "seed": 301}, "kraken": {"trades": 4000, "seed": 302}}
_KRAKEN_SNAPSHOT_TRADES = 10  # on average per symbol (Kraken sends up to 50)


@dataclass(frozen=True)
class Instrument:
    symbol: str
    price: Decimal  # starting price
    tick: Decimal  # price increment
    lot: Decimal  # quantity increment
    median_qty: float
    weight: float  # share of the orders
    first_trade_id: int


BINANCE_INSTRUMENTS = (
    Instrument("BTCUSDT", Decimal("61250.00"), Decimal("0.01"), Decimal("0.00001"), 0.004, 0.40, 3_412_000_000),
    Instrument("ETHUSDT", Decimal("3380.00"), Decimal("0.01"), Decimal("0.0001"), 0.05, 0.30, 1_298_000_000),
    Instrument("SOLUSDT", Decimal("128.40"), Decimal("0.01"), Decimal("0.001"), 2.0, 0.20, 612_000_000),
    Instrument("ETHBTC", Decimal("0.05518"), Decimal("0.00001"), Decimal("0.0001"), 0.08, 0.10, 431_000_000),
)
KRAKEN_INSTRUMENTS = (
    Instrument("BTC/USD", Decimal("61240.0"), Decimal("0.1"), Decimal("0.00000001"), 0.01, 0.40, 68_000_000),
    Instrument("ETH/USD", Decimal("3379.50"), Decimal("0.01"), Decimal("0.00000001"), 0.2, 0.30, 51_000_000),
    Instrument("SOL/USD", Decimal("128.45"), Decimal("0.01"), Decimal("0.00000001"), 5.0, 0.20, 9_800_000),
    Instrument("ETH/BTC", Decimal("0.05519"), Decimal("0.00001"), Decimal("0.00000001"), 0.3, 0.10, 4_100_000),
)
# Mean seconds between taker orders (all symbols): Binance is the busier venue.
_ORDER_INTERVAL_S = {"binance": 0.03, "kraken": 0.2}


@dataclass
class _Book:
    instrument: Instrument
    ticks: int
    next_id: int


@dataclass(frozen=True)
class _Fill:
    instrument: Instrument
    trade_id: int
    price: Decimal
    qty: Decimal
    side: str  # taker side: BUY / SELL
    time_us: int
    limit: bool  # the taker order was a (marketable) limit order


class _Market:
    """The simulation shared by both output formats."""

    def __init__(self, instruments: tuple[Instrument, ...], rng: random.Random, interval_s: float, start_us: int) -> None:
        self.rng = rng
        self.interval_s = interval_s
        self.time_us = start_us
        self.books = [_Book(i, int(i.price / i.tick), i.first_trade_id) for i in instruments]
        self.weights = [i.weight for i in instruments]

    def order(self) -> list[_Fill]:
        """The fills of the next taker order."""
        rng = self.rng
        self.time_us += max(1, int(rng.expovariate(1.0 / self.interval_s) * 1_000_000))
        book = rng.choices(self.books, self.weights)[0]
        inst = book.instrument
        side = "BUY" if rng.random() < 0.5 else "SELL"
        direction = 1 if side == "BUY" else -1
        fills = min(6, 1 + int(rng.expovariate(1.2)))
        limit = rng.random() < 0.2
        out = []
        ticks = book.ticks
        for _ in range(fills):
            lots = max(1, round(rng.lognormvariate(math.log(inst.median_qty / float(inst.lot)), 1.1)))
            out.append(_Fill(inst, book.next_id, ticks * inst.tick, lots * inst.lot, side, self.time_us, limit))
            book.next_id += 1
            if rng.random() < 0.35:
                ticks += direction
        # The mid moves by a few ticks, scaled so every symbol moves ~0.1 bp per order.
        step = max(1, round(book.ticks * 0.00001))
        book.ticks = max(10, ticks + round(rng.gauss(0, 1) * step))
        return out


def _number(value: Decimal) -> str:
    """A JSON number as Kraken writes it: plain decimal notation, at least one fractional digit."""
    text = format(value.normalize(), "f")
    return text if "." in text else text + ".0"


def _rfc3339(time_us: int) -> str:
    stamp = dt.datetime.fromtimestamp(time_us // 1_000_000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{time_us % 1_000_000:06d}Z"


def _binance_frames(market: _Market, trades: int, time_unit: str, combined: bool) -> Iterator[str]:
    rng = market.rng
    yield '{"result":null,"id":1}'
    produced = 0
    while produced < trades:
        for fill in market.order()[: trades - produced]:
            produced += 1
            trade_time = fill.time_us if time_unit == "us" else fill.time_us // 1000
            lag = rng.randint(0, 2000 if time_unit == "us" else 2)
            data = {"e": "trade", "E": trade_time + lag, "s": fill.instrument.symbol, "t": fill.trade_id,
                    "p": format(fill.price, ".8f"), "q": format(fill.qty, ".8f"), "T": trade_time,
                    "m": fill.side == "SELL", "M": True}
            frame = {"stream": f"{fill.instrument.symbol.lower()}@trade", "data": data} if combined else data
            yield json.dumps(frame, separators=(",", ":"))


def _kraken_trade(fill: _Fill) -> str:
    return (f'{{"symbol":"{fill.instrument.symbol}","side":"{fill.side.lower()}","price":{_number(fill.price)},'
            f'"qty":{_number(fill.qty)},"ord_type":"{"limit" if fill.limit else "market"}",'
            f'"trade_id":{fill.trade_id},"timestamp":"{_rfc3339(fill.time_us)}"}}')


def _kraken_frame(kind: str, fills: Iterable[_Fill]) -> str:
    return f'{{"channel":"trade","type":"{kind}","data":[{",".join(_kraken_trade(f) for f in fills)}]}}'


def _kraken_frames(market: _Market, trades: int, start_us: int) -> Iterator[str]:
    rng = market.rng
    yield json.dumps({"channel": "status", "type": "update", "data": [{
        "version": "2.0.0", "system": "online", "api_version": "v2",
        "connection_id": rng.getrandbits(63), }]}, separators=(",", ":"))
    # History before the subscription: the snapshot trades, oldest first, per symbol.
    history: dict[str, list[_Fill]] = {b.instrument.symbol: [] for b in market.books}
    market.time_us = start_us - 600 * 1_000_000
    budget = min(trades, _KRAKEN_SNAPSHOT_TRADES * len(market.books))
    taken = 0
    while taken < budget:
        for fill in market.order()[: budget - taken]:
            history[fill.instrument.symbol].append(fill)
            taken += 1
    market.time_us = max(market.time_us, start_us)
    for book in market.books:
        symbol = book.instrument.symbol
        ack = {"method": "subscribe", "result": {"channel": "trade", "snapshot": True, "symbol": symbol},
               "success": True, "time_in": _rfc3339(market.time_us), "time_out": _rfc3339(market.time_us + 150)}
        yield json.dumps(ack, separators=(",", ":"))
        yield _kraken_frame("snapshot", history[symbol])
    produced = taken
    while produced < trades:
        before = market.time_us
        fills = market.order()[: trades - produced]
        for _ in range((market.time_us - before) // 1_000_000):  # quiet seconds
            yield '{"channel":"heartbeat"}'
        produced += len(fills)
        yield _kraken_frame("update", fills)


def generate_frames(exchange: str, trades: int, *, seed: int = 1, start_us: int = DEFAULT_START_US,
                    time_unit: str = "ms", combined: bool = True) -> Iterator[str]:
    """Raw frames (JSON text) carrying exactly ``trades`` trades, starting at ``start_us``.

    ``time_unit`` (``ms``/``us``) and ``combined`` apply to Binance.
    """
    if trades < 0:
        raise ValueError("trades must not be negative")
    if time_unit not in ("ms", "us"):
        raise ValueError("time_unit must be 'ms' or 'us'")
    rng = random.Random(seed)
    if exchange == "binance":
        return _binance_frames(_Market(BINANCE_INSTRUMENTS, rng, _ORDER_INTERVAL_S[exchange], start_us),
                               trades, time_unit, combined)
    if exchange == "kraken":
        return _kraken_frames(_Market(KRAKEN_INSTRUMENTS, rng, _ORDER_INTERVAL_S[exchange], start_us),
                              trades, start_us)
    raise ValueError(f"no generator for exchange {exchange!r}")


def write_recording(path: Path, frames: Iterable[str]) -> int:
    """Write frames as JSON lines (gzipped when the name ends in .gz, reproducibly); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "wb") as raw:
        out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.suffix == ".gz" else raw
        try:
            for frame in frames:
                out.write(frame.encode() + b"\n")
                count += 1
        finally:
            if out is not raw:
                out.close()
    return count


def sample_frames(exchange: str) -> Iterator[str]:
    """The frames of the shipped sample recording of ``exchange``."""
    return generate_frames(exchange, **SAMPLES[exchange])
