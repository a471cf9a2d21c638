"""Live mode: websocket clients for Binance and Kraken feeding a :class:`Publisher`.

One :class:`LiveRunner` follows one exchange until it is cancelled:

* subscribe on every connection (Binance: the streams are in the URL; Kraken: a ``subscribe``
  request with ``snapshot: true``);
* keepalive: websocket pings every ``ping_interval_s``; a missing pong closes the connection.
  Server pings are answered by the websockets library while frames are processed;
* reconnect after a drop: at once if the connection had delivered trades, otherwise with
  exponential backoff and jitter between the configured bounds;
* proactive rollover before the server's connection limit (Binance closes after 24 h): the new
  connection is opened first and the old one keeps reading for ``overlap_s``, so no trade falls
  into a gap; trades seen on both are dropped by the publisher's recent-id window.

Kraken re-sends its last trades as a snapshot after each (re)subscription, which recovers the
trades of a short disconnection; Binance does not, so a drop loses the trades of the gap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.uri import parse_uri

from lakehouse.producer.normalize import now_us
from lakehouse.producer.pipeline import Publisher
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

# Failures of one connection attempt: refused, timed out, rejected handshake (e.g. HTTP 429/503),
# or closed while subscribing. They lead to a retry, never to a crash.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, websockets.exceptions.InvalidHandshake, websockets.exceptions.ConnectionClosed)

_MAX_FRAME_BYTES = 8 * 1024 * 1024  # Kraken snapshots of busy symbols are tens of KB; leave headroom


@dataclass(frozen=True)
class Feed:
    """Where and how to subscribe: the URL and the messages sent after connecting."""

    exchange: str
    url: str
    subscriptions: tuple[str, ...] = ()
    max_connection_s: float | None = None

    def __post_init__(self) -> None:
        try:
            parse_uri(self.url)
        except websockets.exceptions.InvalidURI as err:
            raise ValueError(f"{self.exchange} websocket URL {self.url!r} is invalid: {err}") from err


def binance_feed(base_url: str, symbols: Sequence[str], *, time_unit: str = "MICROSECOND",
                 max_connection_s: float | None = 84600.0) -> Feed:
    """Combined ``<symbol>@trade`` streams on one connection, subscribed through the URL."""
    if not symbols:
        raise ValueError("binance live mode needs at least one symbol")
    streams = "/".join(f"{s.strip().lower()}@trade" for s in symbols)
    url = f"{base_url.rstrip('/')}/stream?streams={streams}"
    if time_unit == "MICROSECOND":
        url += "&timeUnit=MICROSECOND"
    return Feed("binance", url, (), max_connection_s)


def kraken_feed(url: str, symbols: Sequence[str]) -> Feed:
    """The v2 ``trade`` channel with a snapshot (Kraken's recovery after a reconnect)."""
    if not symbols:
        raise ValueError("kraken live mode needs at least one symbol")
    request = {"method": "subscribe",
               "params": {"channel": "trade", "symbol": [s.strip() for s in symbols], "snapshot": True}}
    return Feed("kraken", url, (json.dumps(request),), None)


def feed_from_settings(settings: Settings, exchange: str, symbols: Sequence[str] | None = None) -> Feed:
    if exchange == "binance":
        return binance_feed(settings.producer_binance_ws_url, symbols or settings.producer_binance_symbols,
                            time_unit=settings.producer_binance_time_unit,
                            max_connection_s=settings.producer_binance_max_connection_s)
    if exchange == "kraken":
        return kraken_feed(settings.producer_kraken_ws_url, symbols or settings.producer_kraken_symbols)
    raise ValueError(f"no live feed for exchange {exchange!r}")


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (0 = right after a healthy connection).

    Attempt 0 retries at once (every second away from Binance is lost trades); attempt k >= 1
    waits between half and all of ``min(max_s, min_s * 2**(k-1))`` so that many clients
    dropped together do not reconnect in lockstep.
    """
    if attempt <= 0:
        return 0.0
    ceiling = min(max_s, min_s * 2.0 ** min(attempt - 1, 62))
    return rng.uniform(ceiling / 2, ceiling)


class LiveRunner:
    """Follows one feed, publishing every frame, until the task running :meth:`run` is cancelled."""

    def __init__(self, feed: Feed, publisher: Publisher, *, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0, ping_interval_s: float = 20.0, ping_timeout_s: float = 20.0,
                 open_timeout_s: float = 10.0, overlap_s: float = 5.0, rng: random.Random | None = None) -> None:
        self.feed = feed
        self.publisher = publisher
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.open_timeout_s = open_timeout_s
        self.overlap_s = overlap_s
        self.rng = rng or random.Random()
        self.connections = 0  # successful connects, for logs and tests
        self.connect_failures = 0
        self._current: ClientConnection | None = None
        self._drains: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, feed: Feed, publisher: Publisher) -> LiveRunner:
        return cls(feed, publisher, reconnect_min_s=settings.producer_reconnect_min_s,
                   reconnect_max_s=settings.producer_reconnect_max_s,
                   ping_interval_s=settings.producer_ping_interval_s,
                   ping_timeout_s=settings.producer_ping_timeout_s,
                   open_timeout_s=settings.producer_open_timeout_s,
                   overlap_s=settings.producer_rollover_overlap_s)

    async def run(self) -> None:
        """Connect, publish, reconnect; returns only by cancellation (which closes the connections)."""
        stats = self.publisher.stats
        attempt = 0
        try:
            while True:
                try:
                    ws = await self._open()
                except CONNECT_ERRORS as err:
                    attempt += 1
                    self.connect_failures += 1
                    delay = backoff_delay(attempt, self.reconnect_min_s, self.reconnect_max_s, self.rng)
                    log.warning("connect failed", extra={"exchange": self.feed.exchange, "error": repr(err),
                                                         "attempt": attempt, "retry_in_s": round(delay, 3)})
                    await asyncio.sleep(delay)
                    continue
                trade_frames_before = stats.trade_frames
                deadline = self._deadline()
                while await self._serve(ws, deadline):
                    ws, deadline = await self._rollover(ws)
                stats.reconnects += 1
                attempt = 0 if stats.trade_frames > trade_frames_before else attempt + 1
                delay = backoff_delay(attempt, self.reconnect_min_s, self.reconnect_max_s, self.rng)
                log.warning("connection lost, reconnecting", extra={
                    "exchange": self.feed.exchange, "reconnects": stats.reconnects, "retry_in_s": round(delay, 3)})
                self.publisher.report_metrics()
                if delay:
                    await asyncio.sleep(delay)
        finally:
            for task in list(self._drains):
                task.cancel()
            await asyncio.gather(*self._drains, return_exceptions=True)
            if self._current is not None:
                await self._current.close()

    def _deadline(self) -> float | None:
        if self.feed.max_connection_s is None:
            return None
        return asyncio.get_running_loop().time() + self.feed.max_connection_s

    async def _open(self) -> ClientConnection:
        ws = await connect(self.feed.url, open_timeout=self.open_timeout_s, ping_interval=self.ping_interval_s,
                           ping_timeout=self.ping_timeout_s, close_timeout=5, max_size=_MAX_FRAME_BYTES)
        try:
            for message in self.feed.subscriptions:
                await ws.send(message)
        except BaseException:
            await ws.close()
            raise
        self.connections += 1
        self._current = ws
        log.info("connected", extra={"exchange": self.feed.exchange, "url": self.feed.url,
                                     "connection": self.connections})
        return ws

    def _handle(self, message: str | bytes) -> None:
        self.publisher.handle(message, now_us())
        self.publisher.sink.poll(0)
        self.publisher.maybe_report()

    async def _serve(self, ws: ClientConnection, deadline: float | None) -> bool:
        """Publish frames until the connection ends (False) or its rollover deadline passes (True)."""
        try:
            async with asyncio.timeout_at(deadline):
                async for message in ws:
                    self._handle(message)
        except TimeoutError:
            return True
        except websockets.exceptions.ConnectionClosedError as err:
            log.warning("connection closed abnormally", extra={"exchange": self.feed.exchange, "error": str(err)})
        return False

    async def _rollover(self, old: ClientConnection) -> tuple[ClientConnection, float | None]:
        """Replace an aging connection without a gap: open the new one, drain the old one alongside."""
        try:
            new = await self._open()
        except CONNECT_ERRORS as err:
            retry_s = self.reconnect_max_s
            log.warning("rollover connect failed, keeping the current connection",
                        extra={"exchange": self.feed.exchange, "error": repr(err), "retry_in_s": retry_s})
            return old, asyncio.get_running_loop().time() + retry_s
        self.publisher.stats.rollovers += 1
        task = asyncio.create_task(self._drain(old))
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return new, self._deadline()

    async def _drain(self, old: ClientConnection) -> None:
        try:
            async with asyncio.timeout(self.overlap_s):
                async for message in old:
                    self._handle(message)
        except (TimeoutError, websockets.exceptions.ConnectionClosed):
            pass
        finally:
            await old.close()
