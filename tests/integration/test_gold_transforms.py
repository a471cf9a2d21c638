"""Gold's pure transforms on tiny inline DataFrames: instrument, Gold rows, dedupe, bars, predicates.

Integration tier: every test runs on the session's SparkSession (a JVM and the embedded stack).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from lakehouse import tables
from lakehouse.gold.synthetic import silver_frame, silver_record
from lakehouse.gold.transforms import (
    BatchScope,
    Slice,
    dedupe,
    drop_copies,
    ohlcv_1m,
    partition_predicate,
    repeated_ids,
    sql_string,
    to_gold,
    with_instrument,
)

pytestmark = pytest.mark.integration

BASE_US = int(dt.datetime(2026, 3, 1, 22, 59, 0, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)


def silver_row(exchange: str = "binance", trade_id: int = 1, ts: int = BASE_US, **fields: Any) -> dict[str, Any]:
    return silver_record(exchange, trade_id, ts, **fields)


silver_df = silver_frame


@pytest.mark.parametrize(("symbol", "currency", "expected"), [
    ("BTCUSDT", "USDT", "BTC/USDT"),          # Binance: concatenated, quote from currency
    ("BTC/USDT", "USDT", "BTC/USDT"),         # Kraken: the same instrument
    ("BTC/USD", "USD", "BTC/USD"),
    ("ETHBTC", "BTC", "ETH/BTC"),
    ("XBT/USD", "USD", "BTC/USD"),            # Kraken's legacy code
    ("btcusdt", "usdt", "BTC/USDT"),
    ("BTC-USD", None, "BTC/USD"),
    ("BTCFDUSD", None, "BTC/FDUSD"),          # no currency: the longest known quote wins
    ("SOLEUR", "", "SOL/EUR"),
    ("MYSTERY", None, "MYSTERY"),             # cannot be split: kept, never dropped
])
def test_instrument_is_canonical_base_quote(spark, symbol: str, currency: str | None, expected: str) -> None:
    df = spark.createDataFrame([(symbol, currency)], "symbol string, currency string")
    assert with_instrument(df).columns == ["symbol", "currency", "instrument"]
    assert with_instrument(df).first().instrument == expected


def test_to_gold_derives_partitions_in_utc_and_vendor_json(spark) -> None:
    times = [BASE_US, BASE_US + 60_000_000, BASE_US + 3_600_000_000 * 25 + 7]
    rows = [silver_row(trade_id=i, ts=ts, vendor={"m": "true"} if i == 0 else None) for i, ts in enumerate(times)]
    saved = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")  # must not change UTC partitions
    try:
        out = {r.trade_id: r for r in to_gold(silver_df(spark, rows)).collect()}
    finally:
        spark.conf.set("spark.sql.session.timeZone", saved)
    assert to_gold(silver_df(spark, rows)).schema.simpleString() == tables.spark_schema(tables.GOLD_DEF).simpleString()
    for i, ts in enumerate(times):
        when = dt.datetime.fromtimestamp(ts / 1e6, dt.timezone.utc)
        got = out[str(i)]
        assert (got.exchange_date, got.exchange_hour) == (when.date(), when.hour)
        assert got.instrument == "BTC/USDT"
        assert got.gold_ingestion_timestamp is not None
    assert json.loads(out["0"].vendor_data) == {"m": "true"}
    assert out["1"].vendor_data is None


def test_dedupe_keeps_first_seen_copy_of_each_message(spark) -> None:
    rows = [silver_row(trade_id=1, ingested=BASE_US + 900), silver_row(trade_id=1, ingested=BASE_US + 100),
            silver_row(trade_id=1, ingested=BASE_US + 500), silver_row(trade_id=2),
            silver_row(exchange="kraken", trade_id=1, symbol="BTC/USD", currency="USD")]
    out = dedupe(to_gold(silver_df(spark, rows))).collect()
    by_id = {}
    for r in out:
        assert r.message_id not in by_id
        by_id[r.message_id] = r
    assert len(by_id) == len({r["message_id"] for r in rows}) == 3
    assert by_id[rows[0]["message_id"]].ingestion_timestamp == BASE_US + 100


def test_drop_copies_ranks_only_repeated_ids_and_agrees_with_dedupe(spark) -> None:
    rows = [silver_row(trade_id=i) for i in range(6)] + [
        silver_row(trade_id=1, ingested=BASE_US - 5), silver_row(trade_id=1, ingested=BASE_US + 50),
        silver_row(trade_id=4, ingested=BASE_US + 70)]
    gold = to_gold(silver_df(spark, rows))
    repeated = {r.message_id: r.copies for r in repeated_ids(gold).collect()}
    assert repeated == {rows[1]["message_id"]: 2, rows[4]["message_id"]: 1}
    for broadcast in (True, False):
        kept = drop_copies(gold, repeated_ids(gold), broadcast=broadcast)
        assert sorted((r.message_id, r.ingestion_timestamp) for r in kept.collect()) == sorted(
            (r.message_id, r.ingestion_timestamp) for r in dedupe(gold).collect())
    assert {r.trade_id: r.ingestion_timestamp for r in dedupe(gold).collect()}["1"] == BASE_US - 5


def _expected_bars(rows: list[dict[str, Any]]) -> dict[tuple[str, dt.datetime], dict[str, Any]]:
    """Bars computed in plain Python, independently of Spark."""
    groups: dict[tuple[str, dt.datetime], list[dict[str, Any]]] = {}
    for r in rows:
        # PySpark returns timestamps as naive local datetimes.
        minute = dt.datetime.fromtimestamp(r["timestamp"] // 60_000_000 * 60)
        groups.setdefault((r["exchange"], minute), []).append(r)
    out = {}
    for key, trades in groups.items():
        trades.sort(key=lambda r: (r["timestamp"], -1 if r["source_sequence"] is None else r["source_sequence"],
                                   len(r["trade_id"]), r["trade_id"], r["message_id"]))
        qty = sum(t["quantity"] for t in trades)
        notional = sum(t["price"] * t["quantity"] for t in trades)
        out[key] = {
            "open": trades[0]["price"], "close": trades[-1]["price"],
            "high": max(t["price"] for t in trades), "low": min(t["price"] for t in trades),
            "volume": qty, "trade_count": len(trades),
            "vwap": (notional / qty).quantize(Decimal("1e-8"), rounding=ROUND_HALF_UP),
            "buy_volume": sum((t["quantity"] for t in trades if t["side"] == "BUY"), Decimal(0)),
            "sell_volume": sum((t["quantity"] for t in trades if t["side"] == "SELL"), Decimal(0)),
        }
    return out


def test_ohlcv_1m_matches_independent_computation_with_ties(spark) -> None:
    t = BASE_US
    rows = [
        # Same timestamp: source_sequence decides; then trade ids "9" < "10" numerically.
        silver_row(trade_id=10, ts=t + 5, price="101.5", qty="0.3", seq=7),
        silver_row(trade_id=9, ts=t + 5, price="100.25", qty="0.1", seq=7, side="SELL"),
        silver_row(trade_id=11, ts=t + 5, price="99.75", qty="0.2", seq=None),
        silver_row(trade_id=12, ts=t + 59_999_999, price="102.00000001", qty="0.00000003", seq=20, side="SELL"),
        silver_row(trade_id=13, ts=t + 59_999_999, price="98.12345678", qty="3.33333333", seq=19),
        # Last trades of the minute tie on time and sequence: "100" is after "99" numerically.
        silver_row(trade_id=100, ts=t + 59_999_999, price="97.5", qty="0.5", seq=20),
        silver_row(trade_id=99, ts=t + 59_999_999, price="96.5", qty="0.5", seq=20, side="SELL"),
        silver_row(trade_id=14, ts=t + 60_000_000, price="105", qty="1", seq=21),  # next minute (next hour too)
        silver_row(exchange="kraken", trade_id=1, ts=t + 10, price="100.1", qty="0.7", symbol="BTC/USDT", seq=1),
    ]
    got = {(r.exchange, r.minute): r for r in ohlcv_1m(to_gold(silver_df(spark, rows))).collect()}
    expected = _expected_bars(rows)
    assert set(got) == set(expected)
    for key, exp in expected.items():
        bar = got[key]
        assert bar.instrument == "BTC/USDT"
        assert {k: getattr(bar, k) for k in exp} == exp, key
        assert bar.updated_at is not None
    assert (ohlcv_1m(to_gold(silver_df(spark, rows))).schema.simpleString()
            == tables.spark_schema(tables.OHLCV_DEF).simpleString())


def test_partition_predicate_selects_exactly_the_touched_pairs(spark) -> None:
    day = dt.date(2026, 3, 1)
    grid = [(day + dt.timedelta(days=d), h) for d in range(3) for h in range(24)]
    df = spark.createDataFrame(grid, "exchange_date date, exchange_hour int")
    touched = [(day, 23), (day + dt.timedelta(days=1), 0), (day + dt.timedelta(days=2), 5)]
    exact = {(r.exchange_date, r.exchange_hour) for r in df.where(partition_predicate(touched)).collect()}
    assert exact == set(touched)
    # Above max_terms the filter is a superset built from dates and hours, never missing a pair.
    wide = {(r.exchange_date, r.exchange_hour) for r in df.where(partition_predicate(touched, max_terms=2)).collect()}
    assert set(touched) <= wide < set(grid)
    assert df.where(partition_predicate([])).count() == 0


def _scope_of(rows: list[dict[str, Any]], max_terms: int = 64) -> BatchScope:
    """The scope of a batch computed in plain Python, as the writer computes it with Spark."""
    groups: dict[tuple[str, dt.date, int], list[int]] = {}
    for r in rows:
        when = dt.datetime.fromtimestamp(r["timestamp"] / 1e6, dt.timezone.utc)
        groups.setdefault((r["exchange"], when.date(), when.hour), []).append(r["timestamp"])
    return BatchScope(tuple(Slice(ex, d, h, min(ts), max(ts)) for (ex, d, h), ts in sorted(groups.items())),
                      max_terms=max_terms)


def test_batch_scope_selects_the_batch_slices_of_gold(spark) -> None:
    hour = 3_600_000_000
    batch = [silver_row(trade_id=1, ts=BASE_US + 10), silver_row(trade_id=2, ts=BASE_US + 20),
             silver_row(trade_id=3, ts=BASE_US + 5 * hour + 7),
             silver_row(exchange="kraken", trade_id=1, ts=BASE_US + 30, symbol="BTC/USD", currency="USD")]
    # Other Gold rows: same hour but outside the batch's time range (other minute), another hour, another exchange.
    others = [silver_row(trade_id=10, ts=BASE_US - 120_000_000), silver_row(trade_id=11, ts=BASE_US + 2 * hour),
              silver_row(exchange="kraken", trade_id=2, ts=BASE_US + 5 * hour + 7, symbol="BTC/USD", currency="USD")]
    same_minute = silver_row(trade_id=12, ts=BASE_US + 40)
    gold = to_gold(silver_df(spark, batch + others + [same_minute]))
    exact = _scope_of(batch)
    assert exact.partitions == tuple(sorted({(r.exchange_date, r.exchange_hour)
                                             for r in to_gold(silver_df(spark, batch)).collect()}))
    picked = {(r.exchange, r.trade_id) for r in gold.where(exact.gold_predicate()).collect()}
    assert picked == {(r["exchange"], r["trade_id"]) for r in batch}
    in_minutes = {(r.exchange, r.trade_id) for r in gold.where(exact.gold_predicate(whole_minutes=True)).collect()}
    assert in_minutes == picked | {("BINANCE", "12")}
    # Beyond max_terms: a superset that still holds every batch row and leaves other partitions out.
    wide = {(r.exchange, r.trade_id) for r in gold.where(_scope_of(batch, max_terms=1).gold_predicate()).collect()}
    assert picked <= wide and ("BINANCE", "11") not in wide
    bars = ohlcv_1m(gold)
    batch_minutes = {(r.exchange, r.minute) for r in ohlcv_1m(to_gold(silver_df(spark, batch))).collect()}
    assert {(r.exchange, r.minute) for r in bars.where(exact.bars_predicate()).collect()} == batch_minutes
    assert BatchScope(()).gold_predicate() == "FALSE"


def test_sql_string_round_trips_quotes_and_backslashes(spark) -> None:
    tricky = "O'Brien \\ 'x' \\'"
    assert spark.sql(f"SELECT {sql_string(tricky)} AS v").first().v == tricky
