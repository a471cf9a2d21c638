"""Live clients against a local websocket server that replays recorded frames and drops connections."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support import free_port
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from lakehouse.producer.generator import generate_frames, sample_frames
from lakehouse.producer.live import LiveRunner, backoff_delay, binance_feed, kraken_feed
from lakehouse.producer.normalize import normalizer_for
from lakehouse.producer.pipeline import MemorySink, Publisher
from lakehouse.settings import load_settings

pytestmark = pytest.mark.timeout(120)

QUOTES = load_settings({}).producer_binance_quotes
BINANCE_SYMBOLS = ["btcusdt", "ethusdt", "solusdt", "ethbtc"]
KRAKEN_SYMBOLS = ["BTC/USD", "ETH/USD", "SOL/USD", "ETH/BTC"]


class IdEncoder:
    """Stands in for the Avro encoder: the produced value is the record's message_id."""

    def encode(self, record: dict[str, Any]) -> bytes:
        return str(record["message_id"]).encode()


class Produced(MemorySink):
    def ids(self) -> list[str]:
        return [value.decode() for value in self.values("t")]


def live_publisher(exchange: str) -> tuple[Publisher, Produced]:
    sink = Produced()
    publisher = Publisher(normalizer_for(exchange, QUOTES), IdEncoder(), sink,  # type: ignore[arg-type]
                          topic="t", rejects_topic="t.rejects", dedupe_window=10_000)
    return publisher, sink


def trade_ids(exchange: str, frames: list[str]) -> list[str]:
    """message_ids of the trades carried by ``frames`` (what a correct client must produce)."""
    normalizer = normalizer_for(exchange, QUOTES)
    out: list[str] = []
    for frame in frames:
        out += [r["message_id"] for r in normalizer.normalize(frame, 0) or []]
    return out


def runner(feed: Any, publisher: Publisher, **options: Any) -> LiveRunner:
    defaults = {"reconnect_min_s": 0.01, "reconnect_max_s": 0.05, "ping_interval_s": 5.0, "ping_timeout_s": 5.0,
                "open_timeout_s": 5.0, "overlap_s": 0.5, "rng": random.Random(1)}
    return LiveRunner(feed, publisher, **{**defaults, **options})


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def with_runner(live: LiveRunner, scenario: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(live.run())
    try:
        await scenario()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_binance_drop_is_resumed_and_no_trade_sent_after_the_reconnect_is_missed() -> None:
    frames = list(sample_frames("binance"))[:200]
    before, gap, after = frames[:80], frames[80:100], frames[100:]
    publisher, produced_to = live_publisher("binance")
    paths: list[str] = []
    caught_up = asyncio.Event()

    async def exchange(ws: ServerConnection) -> None:
        paths.append(ws.request.path)
        if len(paths) == 1:
            for frame in before:
                await ws.send(frame)
            await caught_up.wait()
            ws.transport.abort()  # a network failure: no close frame
            return
        for frame in after:  # the trades of the gap happened while the client was away
            await ws.send(frame)
        await ws.wait_closed()

    async def main() -> None:
        async with serve(exchange, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            live = runner(binance_feed(f"ws://127.0.0.1:{port}", BINANCE_SYMBOLS), publisher)

            async def scenario() -> None:
                await until(lambda: publisher.stats.produced == len(trade_ids("binance", before)))
                caught_up.set()
                await until(lambda: publisher.stats.produced == len(trade_ids("binance", before + after)))

            await with_runner(live, scenario)
            assert live.connections == 2

    asyncio.run(main())
    produced = produced_to.ids()
    assert produced == trade_ids("binance", before + after)  # every trade after the reconnect, once, in order
    assert not set(produced) & set(trade_ids("binance", gap))
    assert publisher.stats.reconnects == 1
    query = parse_qs(urlsplit(paths[0]).query)
    assert paths[0].startswith("/stream?") and query["timeUnit"] == ["MICROSECOND"]
    assert query["streams"] == ["btcusdt@trade/ethusdt@trade/solusdt@trade/ethbtc@trade"]


def kraken_snapshots(updates: list[str]) -> list[str]:
    """Snapshot frames (one per symbol) carrying the trades of ``updates``, as Kraken sends after subscribing."""
    by_symbol: dict[str, list[Any]] = defaultdict(list)
    for frame in updates:
        for trade in json.loads(frame)["data"]:
            by_symbol[trade["symbol"]].append(frame_trade_text(trade))
    return ['{"channel":"trade","type":"snapshot","data":[%s]}' % ",".join(trades) for trades in by_symbol.values()]


def frame_trade_text(trade: dict[str, Any]) -> str:
    return json.dumps(trade, separators=(",", ":"))


def test_kraken_reconnect_recovers_the_gap_from_the_snapshot_without_duplicates() -> None:
    recorded = list(sample_frames("kraken"))
    updates = [f for f in recorded if '"type":"update"' in f and '"channel":"trade"' in f][:150]
    before, gap, after = updates[:60], updates[60:75], updates[75:]
    publisher, produced_to = live_publisher("kraken")
    requests: list[Any] = []
    caught_up = asyncio.Event()

    async def exchange(ws: ServerConnection) -> None:
        requests.append(json.loads(await ws.recv()))
        await ws.send('{"channel":"status","type":"update","data":[{"system":"online","api_version":"v2"}]}')
        await ws.send('{"method":"subscribe","result":{"channel":"trade","snapshot":true},"success":true}')
        if len(requests) == 1:
            for frame in before:
                await ws.send(frame)
            await caught_up.wait()
            ws.transport.abort()
            return
        for frame in kraken_snapshots(before[-10:] + gap):  # the last trades, including the gap
            await ws.send(frame)
        for frame in after:
            await ws.send(frame)
            await ws.send('{"channel":"heartbeat"}')
        await ws.wait_closed()

    everything = trade_ids("kraken", before + gap + after)

    async def main() -> None:
        async with serve(exchange, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            live = runner(kraken_feed(f"ws://127.0.0.1:{port}", KRAKEN_SYMBOLS), publisher)

            async def scenario() -> None:
                await until(lambda: publisher.stats.produced == len(trade_ids("kraken", before)))
                caught_up.set()
                await until(lambda: publisher.stats.produced == len(everything))

            await with_runner(live, scenario)

    asyncio.run(main())
    produced = produced_to.ids()
    assert sorted(produced) == sorted(everything)  # the gap came back through the snapshot, nothing twice
    assert publisher.stats.duplicates == len(trade_ids("kraken", before[-10:]))
    assert publisher.stats.reconnects == 1
    assert requests[0] == requests[1] == {
        "method": "subscribe", "params": {"channel": "trade", "symbol": KRAKEN_SYMBOLS, "snapshot": True}}


def test_binance_proactive_rollover_overlaps_connections_so_no_trade_is_lost() -> None:
    frames = list(generate_frames("binance", 1500, seed=9, time_unit="us"))[1:]
    publisher, produced_to = live_publisher("binance")
    subscribers: set[ServerConnection] = set()
    first_client = asyncio.Event()
    done = asyncio.Event()

    async def exchange(ws: ServerConnection) -> None:
        subscribers.add(ws)
        first_client.set()
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)

    async def market() -> None:
        """Trades happen at the exchange whoever listens; each open connection gets every frame."""
        await first_client.wait()
        for frame in frames:
            for ws in list(subscribers):
                try:
                    await ws.send(frame)
                except ConnectionClosed:  # the client closed it (rollover) during the broadcast
                    subscribers.discard(ws)
            await asyncio.sleep(0.002)
        done.set()

    async def main() -> None:
        async with serve(exchange, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            feed = binance_feed(f"ws://127.0.0.1:{port}", BINANCE_SYMBOLS, max_connection_s=0.6)
            live = runner(feed, publisher, overlap_s=0.4)
            trading = asyncio.create_task(market())

            async def scenario() -> None:
                await done.wait()
                await until(lambda: publisher.stats.produced == len(trade_ids("binance", frames)))

            try:
                await with_runner(live, scenario)
            finally:
                trading.cancel()
            assert live.connections >= 3

    asyncio.run(main())
    assert publisher.stats.rollovers >= 2
    assert sorted(produced_to.ids()) == sorted(trade_ids("binance", frames))
    assert publisher.stats.duplicates > 0  # the overlap really delivered trades twice, and they were dropped
    assert publisher.stats.reconnects == 0


def test_client_keeps_retrying_with_backoff_until_the_exchange_is_up() -> None:
    port = free_port()
    publisher, produced_to = live_publisher("binance")
    frames = list(sample_frames("binance"))[:20]

    async def exchange(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async def main() -> None:
        live = runner(binance_feed(f"ws://127.0.0.1:{port}", BINANCE_SYMBOLS), publisher)

        async def scenario() -> None:
            await until(lambda: live.connect_failures >= 3)
            async with serve(exchange, "127.0.0.1", port):
                await until(lambda: publisher.stats.produced == len(trade_ids("binance", frames)))
            assert live.connections == 1

        await with_runner(live, scenario)

    asyncio.run(main())
    assert produced_to.ids() == trade_ids("binance", frames)


def test_client_answers_server_pings_while_trades_flow() -> None:
    frames = list(sample_frames("binance"))[:300]
    publisher, _ = live_publisher("binance")

    async def exchange(ws: ServerConnection) -> None:
        for frame in frames:
            await ws.send(frame)
            await asyncio.sleep(0.003)  # ~1 s of trades: the server pings ~20 times meanwhile
        await ws.wait_closed()

    async def main() -> None:
        async with serve(exchange, "127.0.0.1", 0, ping_interval=0.05, ping_timeout=0.5) as server:
            port = server.sockets[0].getsockname()[1]
            live = runner(binance_feed(f"ws://127.0.0.1:{port}", BINANCE_SYMBOLS), publisher,
                          ping_interval_s=0.05, ping_timeout_s=0.5)

            async def scenario() -> None:
                await until(lambda: publisher.stats.produced == len(trade_ids("binance", frames)))

            await with_runner(live, scenario)
            assert live.connections == 1  # never dropped for a missing pong

    asyncio.run(main())
    assert publisher.stats.reconnects == 0


def test_backoff_grows_exponentially_with_jitter_within_bounds() -> None:
    rng = random.Random(4)
    assert backoff_delay(0, 0.5, 30.0, rng) == 0.0  # right after a healthy connection: reconnect at once
    for attempt in range(1, 30):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered, not lockstep
    assert backoff_delay(10_000, 0.5, 30.0, rng) <= 30.0


def test_feeds_subscribe_as_the_exchanges_document() -> None:
    feed = binance_feed("wss://stream.binance.com:9443/", ["BTCUSDT"], time_unit="MILLISECOND")
    assert feed.url == "wss://stream.binance.com:9443/stream?streams=btcusdt@trade"
    assert feed.subscriptions == () and feed.max_connection_s == 84600.0
    kraken = kraken_feed("wss://ws.kraken.com/v2", ["BTC/USD"])
    assert [json.loads(m) for m in kraken.subscriptions] == [
        {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True}}]
    assert kraken.max_connection_s is None
    with pytest.raises(ValueError):
        binance_feed("wss://x", [])
    with pytest.raises(ValueError, match="invalid"):
        kraken_feed("ws//no-scheme", ["BTC/USD"])
