"""Pure transforms of the Gold layer: Silver rows -> Gold rows, in-batch dedupe, minute bars.

Nothing here reads or writes a table; the functions take and return DataFrames (or build SQL
predicates from plain Python values), so they are tested on tiny inline data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakehouse import tables

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

MICROS_PER_MINUTE = 60_000_000
MICROS_PER_HOUR = 3_600_000_000
MICROS_PER_DAY = 86_400_000_000

# Separators some venues write between base and quote (BTC/USD, BTC-USD, BTC_USD, BTC:USD).
SEPARATORS = "/-_:"
# Quote assets tried when a concatenated symbol (Binance BTCUSDT) comes without a usable currency.
# The lazy base makes the longest matching quote win (BTCFDUSD -> BTC/FDUSD, not BTCFD/USD).
KNOWN_QUOTES: tuple[str, ...] = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "DAI", "USD", "EUR", "GBP", "JPY",
                                 "TRY", "BRL", "BTC", "ETH", "BNB")
_KNOWN_QUOTE = r"^(.+?)(" + "|".join(KNOWN_QUOTES) + r")$"
# Legacy asset codes some venues still send (Kraken's XBT and XDG).
ASSET_ALIASES: dict[str, str] = {"XBT": "BTC", "XDG": "DOGE"}

# Up to this many (exchange, hour partition) slices a MERGE target filter names each slice and its
# time range; above it, a superset (dates, hours, exchanges, overall range) keeps the filter small.
MAX_PARTITION_TERMS = 64


def _alias(asset: Column) -> Column:
    from pyspark.sql import functions as F

    (legacy, canonical), *rest = ASSET_ALIASES.items()
    out = F.when(asset == legacy, F.lit(canonical))
    for legacy, canonical in rest:
        out = out.when(asset == legacy, F.lit(canonical))
    return out.otherwise(asset)


def with_instrument(df: DataFrame, symbol: str = "symbol", currency: str = "currency",
                    output: str = "instrument") -> DataFrame:
    """Add the canonical ``BASE/QUOTE`` of each row's exchange symbol and quote currency.

    ``BTCUSDT`` + ``USDT`` -> ``BTC/USDT``; ``BTC/USD`` stays ``BTC/USD``; ``XBT/USD`` ->
    ``BTC/USD``. A symbol that cannot be split is kept as it is (upper case), never dropped.
    Runs on every Gold row, so the usual paths are plain string functions computed in stages
    (each intermediate once, not re-inlined); the known-quote regex only sees symbols that have
    neither a separator nor a matching currency.
    """
    from pyspark.sql import functions as F

    sym, cur, base, quote = (f"_instrument_{part}" for part in ("symbol", "currency", "base", "quote"))
    staged = df.withColumns({
        sym: F.translate(F.upper(F.trim(F.col(symbol))), SEPARATORS[1:], SEPARATORS[0] * (len(SEPARATORS) - 1)),
        cur: F.upper(F.trim(F.col(currency))),
    })
    s, c = F.col(sym), F.col(cur)
    separated = F.instr(s, "/") > 0
    by_currency = (F.length(c) > 0) & (F.length(s) > F.length(c)) & s.endswith(c)
    known = s.rlike(_KNOWN_QUOTE)
    staged = staged.withColumns({
        base: (F.when(separated, F.substring_index(s, "/", 1))
               .when(by_currency, s.substr(F.lit(1), F.length(s) - F.length(c)))
               .when(known, F.regexp_extract(s, _KNOWN_QUOTE, 1))),
        quote: (F.when(separated, F.substring_index(s, "/", -1))
                .when(by_currency, c)
                .when(known, F.regexp_extract(s, _KNOWN_QUOTE, 2))),
    })
    b, q = F.col(base), F.col(quote)
    return (staged.withColumn(output, F.when(b.isNull(), s).otherwise(F.concat(_alias(b), F.lit("/"), _alias(q))))
            .drop(sym, cur, base, quote))


def minute_of(timestamp_micros: Column) -> Column:
    """Start of the UTC minute of a trade time in microseconds, as a timestamp."""
    from pyspark.sql import functions as F

    return F.timestamp_micros(timestamp_micros - F.pmod(timestamp_micros, F.lit(MICROS_PER_MINUTE)))


def to_gold(silver: DataFrame) -> DataFrame:
    """Silver rows -> Gold rows: the 15 V2 fields (vendor_data as JSON) plus derived columns.

    exchange_date/exchange_hour are computed from the trade time with integer arithmetic, so
    they are UTC whatever the session time zone. Silver-only columns (lineage) are dropped.
    """
    from pyspark.sql import functions as F

    derived = {
        "vendor_data": F.to_json(F.col("vendor_data")),
        "instrument": F.col("instrument"),
        "gold_ingestion_timestamp": F.current_timestamp(),
        "exchange_date": F.expr(f"date_from_unix_date(CAST(`timestamp` DIV {MICROS_PER_DAY} AS INT))"),
        "exchange_hour": F.expr(f"CAST(pmod(`timestamp` DIV {MICROS_PER_HOUR}, 24) AS INT)"),
    }
    schema = tables.spark_schema(tables.GOLD_DEF)
    return with_instrument(silver).select([derived.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name)
                                           for f in schema])


def dedupe(gold_rows: DataFrame) -> DataFrame:
    """One row per message_id: the first-seen copy (earliest ingestion, then platform sequence).

    Copies of one trade differ only in producer metadata, so keeping the first-seen one makes
    the in-batch choice agree with the cross-batch rule (the copy already in Gold wins).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first_seen = Window.partitionBy("message_id").orderBy(
        F.col("ingestion_timestamp").asc_nulls_last(), F.col("platform_sequence").asc_nulls_last())
    return gold_rows.withColumn("_copy", F.row_number().over(first_seen)).where("_copy = 1").drop("_copy")


def repeated_ids(gold_rows: DataFrame) -> DataFrame:
    """``message_id`` seen more than once, with ``copies`` = how many rows beyond the first.

    A hash aggregate over the ids alone: far cheaper than sorting whole rows when, as usual,
    few or no ids repeat.
    """
    from pyspark.sql import functions as F

    return (gold_rows.groupBy("message_id").agg((F.count(F.lit(1)) - 1).alias("copies"))
            .where("copies > 0"))


def drop_copies(gold_rows: DataFrame, repeated: DataFrame, broadcast: bool = True) -> DataFrame:
    """``gold_rows`` without in-batch copies, given their :func:`repeated_ids`: rows of ids seen once
    pass untouched, rows of repeated ids keep their first-seen copy (:func:`dedupe`)."""
    from pyspark.sql import functions as F

    ids = repeated.select("message_id")
    ids = F.broadcast(ids) if broadcast else ids
    singles = gold_rows.join(ids, "message_id", "left_anti")
    return singles.unionByName(dedupe(gold_rows.join(ids, "message_id", "left_semi")))


def trade_order() -> Column:
    """Total order of trades within a minute: time, exchange sequence, trade id (numeric-aware), message id.

    Trade ids are strings of digits on both exchanges, so ordering by (length, text) orders them
    numerically; the message id breaks any remaining tie, so open/close never depend on file order.
    """
    from pyspark.sql import functions as F

    return F.struct(F.col("timestamp"), F.col("source_sequence"), F.length("trade_id").alias("trade_id_length"),
                    F.col("trade_id"), F.col("message_id"))


def ohlcv_1m(trades: DataFrame) -> DataFrame:
    """One-minute bars per (exchange, instrument, minute) from Gold rows.

    open/close are the first/last trade by :func:`trade_order`; volume sums are exact decimals;
    vwap = sum(price*qty)/sum(qty) rounded half-up to 8 places.
    """
    from pyspark.sql import functions as F

    order = trade_order()
    price, qty, side = F.col("price"), F.col("quantity"), F.col("side")
    zero = F.lit(0).cast(tables.spark_type(tables.PRICE))
    bars = (trades.withColumn("minute", minute_of(F.col("timestamp")))
            .groupBy("exchange", "instrument", "minute")
            .agg(F.min_by(price, order).alias("open"), F.max(price).alias("high"), F.min(price).alias("low"),
                 F.max_by(price, order).alias("close"), F.sum(qty).alias("volume"),
                 F.sum(price * qty).alias("notional"), F.count(F.lit(1)).alias("trade_count"),
                 F.sum(F.when(side == "BUY", qty).otherwise(zero)).alias("buy_volume"),
                 F.sum(F.when(side == "SELL", qty).otherwise(zero)).alias("sell_volume")))
    derived = {
        "vwap": F.round(F.col("notional").cast("decimal(38,16)") / F.col("volume").cast("decimal(28,8)"), 8),
        "updated_at": F.current_timestamp(),
    }
    schema = tables.spark_schema(tables.OHLCV_DEF)
    return bars.select([derived.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in schema])


# --- SQL predicates restricting a MERGE target ------------------------------------------------

def sql_string(value: str) -> str:
    """A Spark SQL string literal (backslash escapes are on by default in Spark SQL)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _qualify(alias: str, column: str) -> str:
    return f"{alias}.`{column}`" if alias else f"`{column}`"


def partition_predicate(partitions: Iterable[tuple[dt.date, int]], alias: str = "",
                        max_terms: int = MAX_PARTITION_TERMS) -> str:
    """SQL predicate true for every row of the given (exchange_date, exchange_hour) partitions.

    Exactly those pairs when there are at most ``max_terms``; otherwise their dates (and their
    hours when not all 24), a superset that Iceberg still prunes on, with a short filter.
    """
    pairs = sorted(set(partitions))
    if not pairs:
        return "FALSE"
    date_col, hour_col = _qualify(alias, "exchange_date"), _qualify(alias, "exchange_hour")
    if len(pairs) <= max_terms:
        return "(" + " OR ".join(f"({date_col} = DATE'{d.isoformat()}' AND {hour_col} = {int(h)})"
                                 for d, h in pairs) + ")"
    dates = sorted({d for d, _ in pairs})
    hours = sorted({int(h) for _, h in pairs})
    pred = f"{date_col} IN (" + ", ".join(f"DATE'{d.isoformat()}'" for d in dates) + ")"
    if len(hours) < 24:
        pred += f" AND {hour_col} IN (" + ", ".join(str(h) for h in hours) + ")"
    return f"({pred})"


def _minute_floor(micros: int) -> int:
    return micros - micros % MICROS_PER_MINUTE


@dataclass(frozen=True)
class Slice:
    """The rows of one batch in one Gold hour partition of one exchange, and their time range."""

    exchange: str
    exchange_date: dt.date
    exchange_hour: int
    min_timestamp: int
    max_timestamp: int


@dataclass(frozen=True)
class BatchScope:
    """Where the rows of one batch live in Gold: the slice a MERGE and the bar recompute read.

    A copy of a trade has the same message_id, exchange and trade time, hence the same hour
    partition, as its twin: restricting Gold to each touched (exchange, hour partition) and the
    batch's time range within it finds every twin however old, while Iceberg prunes every other
    partition (manifest summaries) and every file whose time range misses (column stats). In
    steady state an hour partition holds one small file per run, so most files of a touched
    partition are skipped too.
    """

    slices: tuple[Slice, ...]
    max_terms: int = MAX_PARTITION_TERMS

    @property
    def partitions(self) -> tuple[tuple[dt.date, int], ...]:
        return tuple(sorted({(s.exchange_date, s.exchange_hour) for s in self.slices}))

    @property
    def exchanges(self) -> tuple[str, ...]:
        return tuple(sorted({s.exchange for s in self.slices}))

    @property
    def min_timestamp(self) -> int:
        return min(s.min_timestamp for s in self.slices)

    @property
    def max_timestamp(self) -> int:
        return max(s.max_timestamp for s in self.slices)

    def gold_predicate(self, alias: str = "", whole_minutes: bool = False) -> str:
        """Gold rows that can be a twin of a batch row (or, with ``whole_minutes``, share a minute with one).

        One term per slice while there are at most ``max_terms``; above that a superset (the
        partitions' dates and hours, the batch's exchanges and overall time range) keeps the
        filter short, still pruned by partition.
        """
        if not self.slices:
            return "FALSE"
        ex, ts = _qualify(alias, "exchange"), _qualify(alias, "timestamp")

        def window(lo: int, hi: int) -> str:
            lo, hi = (_minute_floor(lo), _minute_floor(hi) + MICROS_PER_MINUTE) if whole_minutes else (lo, hi + 1)
            return f"{ts} >= {lo} AND {ts} < {hi}"

        if len(self.slices) <= self.max_terms:
            return "(" + " OR ".join(
                f"({ex} = {sql_string(s.exchange)}"
                f" AND {partition_predicate([(s.exchange_date, s.exchange_hour)], alias)}"
                f" AND {window(s.min_timestamp, s.max_timestamp)})" for s in self.slices) + ")"
        exchanges = ", ".join(sql_string(e) for e in self.exchanges)
        return (f"({partition_predicate(self.partitions, alias, self.max_terms)} AND {ex} IN ({exchanges})"
                f" AND {window(self.min_timestamp, self.max_timestamp)})")

    def bars_predicate(self, alias: str = "") -> str:
        """Bars of the batch's exchanges in its touched minute ranges (prunes the bars' day partitions)."""
        if not self.slices:
            return "FALSE"
        ex, minute = _qualify(alias, "exchange"), _qualify(alias, "minute")

        def window(exchange_filter: str, lo: int, hi: int) -> str:
            return (f"({exchange_filter} AND {minute} >= timestamp_micros({_minute_floor(lo)})"
                    f" AND {minute} < timestamp_micros({_minute_floor(hi) + MICROS_PER_MINUTE}))")

        if len(self.slices) <= self.max_terms:
            return "(" + " OR ".join(window(f"{ex} = {sql_string(s.exchange)}", s.min_timestamp, s.max_timestamp)
                                     for s in self.slices) + ")"
        exchanges = ", ".join(sql_string(e) for e in self.exchanges)
        return window(f"{ex} IN ({exchanges})", self.min_timestamp, self.max_timestamp)
