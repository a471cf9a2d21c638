"""Silver's validation rules, defined once as data and applied as vectorized Arrow expressions.

Each :class:`Rule` has a name, a dead-letter category, a condition (a ``pyarrow.compute``
expression over the decoded columns) that holds for a valid row, and a reason. A row's
``error_type`` is the category of the first rule it breaks (in the order of :data:`RULES`); its
``error_reason`` names every rule it breaks, with the value.

The rules run where the rows are decoded, on the Arrow batches inside the Spark tasks (Acero
evaluates every condition of a batch in one projection): the decoded rows never have to go back
through the JVM's row format just to be checked, which measured as costly as the decoding itself.
The Spark replays run the same code through ``mapInArrow``.

Time rules compare the trade time with the row's *reference time*, the moment the record reached
Bronze (:data:`REFERENCE_TIME_US`), not the wall clock. Validation is then a pure function of the
Bronze row: a retried batch, a replay months later and a DLQ re-validation all give the same
answer for the same code and schema.

The future-timestamp rule allows ``max_clock_skew_s`` (setting ``LAKEHOUSE_MAX_CLOCK_SKEW_S``): the
clocks of the exchange, the producers' machines and this one never agree exactly, so a trade
stamped a few seconds after its reference time is not wrong. :data:`RULES` is the rule set
without that tolerance; the jobs validate with :func:`for_settings`.

The exchange rule (:func:`exchange_matches`) depends on where the row came from: a Silver run
reads one exchange's Bronze table, which holds that exchange's topic only, so a record whose
``exchange`` field names another exchange was produced to the wrong topic and would land in the
wrong exchange's Silver table. Callers that know the exchange add it with :func:`for_exchange`
(the Silver tasks take it from their Bronze table, the replays from their argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.acero as acero
import pyarrow.compute as pc

from lakehouse import tables

if TYPE_CHECKING:
    from lakehouse.settings import Settings

# Microseconds since the epoch at which the row reached the lakehouse; the callers provide it.
REFERENCE_TIME_US = "reference_time_us"
MAX_AGE_US = 365 * 24 * 3600 * 1_000_000
TIMESTAMP_NOT_FUTURE = "timestamp_not_future"
REASON_SEPARATOR = "; "

_PRICE = pa.decimal128(tables.PRICE.precision, tables.PRICE.scale)
ZERO = pa.scalar(Decimal(0), _PRICE)  # a decimal literal: comparing with a plain 0 would widen the column


def col(name: str) -> pc.Expression:
    return pc.field(name)


def present(name: str) -> pc.Expression:
    """Not NULL and not blank."""
    return pc.utf8_trim_whitespace(col(name)) != ""


@dataclass(frozen=True)
class Rule:
    """One validation rule: ``condition`` is true for a valid row; NULL counts as broken."""

    name: str
    category: str
    condition: pc.Expression
    reason: str
    shows: str  # column whose value is quoted in the reason
    decimals: int | None = None  # show that value with this many decimal places (not as 0E-8)

    def message(self, value: Any) -> str:
        if value is None:
            shown = "NULL"
        elif self.decimals is not None:
            shown = f"{Decimal(value):.{self.decimals}f}"
        else:
            shown = str(value) if value != "" else "''"
        return f"{self.name}: {self.reason} (got {shown})"


def _seconds(micros: int) -> str:
    """``micros`` as plain seconds without trailing zeros (5, 2.5, 0.25): readable in a reason."""
    return format((Decimal(micros) / 1_000_000).normalize(), "f")


def timestamp_not_future(max_clock_skew_s: float) -> Rule:
    """The future-timestamp rule allowing a trade to be stamped up to ``max_clock_skew_s`` seconds
    after its reference time (clock skew); its reason names the tolerance, so a dead-lettered
    row says which limit it broke."""
    if not 0 <= max_clock_skew_s < float("inf"):  # also catches NaN
        raise ValueError(f"max_clock_skew_s must be a finite number of seconds >= 0, got {max_clock_skew_s}")
    skew_us = round(max_clock_skew_s * 1_000_000)
    if skew_us == 0:
        return Rule(TIMESTAMP_NOT_FUTURE, "invalid_timestamp", col("timestamp") <= col(REFERENCE_TIME_US),
                    "timestamp must not be later than the time the record reached Bronze", "timestamp")
    return Rule(TIMESTAMP_NOT_FUTURE, "invalid_timestamp", col("timestamp") <= col(REFERENCE_TIME_US) + skew_us,
                f"timestamp must not be more than {_seconds(skew_us)}s later than the time the record reached Bronze",
                "timestamp")


# Without clock-skew tolerance (the strictest form): the base :func:`build` derives the jobs' rules from.
RULES: tuple[Rule, ...] = (
    Rule("price_positive", "invalid_price", col("price") > ZERO, "price must be greater than 0", "price", 8),
    Rule("quantity_positive", "invalid_quantity", col("quantity") > ZERO, "quantity must be greater than 0",
         "quantity", 8),
    Rule("symbol_present", "missing_symbol", present("symbol"), "symbol must be present", "symbol"),
    Rule("side_valid", "invalid_side", col("side").isin(["BUY", "SELL"]), "side must be BUY or SELL", "side"),
    timestamp_not_future(0.0),
    Rule("timestamp_within_year", "invalid_timestamp", col("timestamp") >= col(REFERENCE_TIME_US) - MAX_AGE_US,
         "timestamp must not be more than 365 days before the record reached Bronze", "timestamp"),
    Rule("message_id_present", "missing_message_id", present("message_id"), "message_id must be present",
         "message_id"),
    Rule("asset_class_crypto", "invalid_asset_class", col("asset_class") == "crypto",
         "asset_class must be 'crypto'", "asset_class"),
    # Required strings of the schema, so never NULL in Avro, but an empty one is no trade either.
    Rule("exchange_present", "empty_exchange", present("exchange"), "exchange must not be empty", "exchange"),
    Rule("trade_id_present", "empty_trade_id", present("trade_id"), "trade_id must not be empty", "trade_id"),
    Rule("currency_present", "empty_currency", present("currency"), "currency must not be empty", "currency"),
)

EXCHANGE_MATCHES = "exchange_matches_topic"
EXCHANGE_MISMATCH = "exchange_mismatch"


def exchange_matches(exchange: str) -> Rule:
    """The rule that a record's ``exchange`` is ``exchange`` (the exchange of the topic it was read
    from), in the upper case the producers write (``BINANCE`` on topic ``<prefix>.binance``)."""
    expected = exchange.upper()
    return Rule(EXCHANGE_MATCHES, EXCHANGE_MISMATCH, col("exchange") == expected,
                f"exchange must be '{expected}', the exchange of the topic the record was read from", "exchange")


CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys([*(r.category for r in RULES), EXCHANGE_MISMATCH]))


def build(max_clock_skew_s: float = 0.0, base: tuple[Rule, ...] | None = None) -> tuple[Rule, ...]:
    """``base`` (default: :data:`RULES` as it is at call time) with the future-timestamp rule
    allowing ``max_clock_skew_s`` seconds; the other rules and their order are unchanged."""
    tolerant = timestamp_not_future(max_clock_skew_s)
    return tuple(tolerant if r.name == TIMESTAMP_NOT_FUTURE else r for r in (RULES if base is None else base))


def for_exchange(rules: tuple[Rule, ...], exchange: str) -> tuple[Rule, ...]:
    """``rules`` checking that each record belongs to ``exchange`` (the exchange rule of
    ``rules``, if any, is replaced): how a task or replay that reads one exchange validates."""
    return (*(r for r in rules if r.name != EXCHANGE_MATCHES), exchange_matches(exchange))


def for_settings(settings: Settings, exchange: str | None = None) -> tuple[Rule, ...]:
    """The rules Silver validates with: :func:`build` with ``settings.max_clock_skew_s``, and with
    the exchange rule when the rows come from ``exchange``'s Bronze table."""
    rules = build(settings.max_clock_skew_s)
    return rules if exchange is None else for_exchange(rules, exchange)


def broken(batch: pa.RecordBatch, rules: tuple[Rule, ...]) -> list[pa.BooleanArray]:
    """For each rule, which rows of ``batch`` break it (one Acero projection for all rules)."""
    if not rules or batch.num_rows == 0:
        return [pa.array([False] * batch.num_rows, pa.bool_()) for _ in rules]
    exprs = [~pc.coalesce(rule.condition, pc.scalar(False)) for rule in rules]
    plan = acero.Declaration.from_sequence([
        acero.Declaration("table_source", acero.TableSourceNodeOptions(pa.Table.from_batches([batch]))),
        acero.Declaration("project", acero.ProjectNodeOptions(exprs, [rule.name for rule in rules])),
    ])
    result = plan.to_table(use_threads=False)
    return [result.column(i).combine_chunks() for i in range(len(rules))]


def evaluate(batch: pa.RecordBatch, rules: tuple[Rule, ...] | None = None,
             skip: pa.BooleanArray | None = None) -> tuple[pa.Array, pa.Array]:
    """(error type, error reason) per row of ``batch``: NULL for a row that breaks no rule.

    ``skip`` marks rows not to check (they come out NULL): rows that failed to decode have no
    fields. Reasons are built only for the failing rows, which are few.
    """
    rules = RULES if rules is None else rules
    masks = broken(batch, rules)
    n = batch.num_rows
    if skip is not None:
        keep = pc.invert(skip)
        masks = [pc.and_(m, keep) for m in masks]
    error_type = pa.nulls(n, pa.string())
    for rule, mask in zip(reversed(rules), reversed(masks)):
        error_type = pc.if_else(mask, pa.scalar(rule.category, pa.string()), error_type)
    reasons: list[str | None] = [None] * n
    failing = pc.indices_nonzero(pc.is_valid(error_type)).to_pylist()
    if failing:
        index = pa.array(failing, pa.int64())
        shown = {name: batch.column(name).take(index).to_pylist() for name in {r.shows for r in rules}}
        broken_at = [m.take(index).to_pylist() for m in masks]
        for j, row in enumerate(failing):
            reasons[row] = REASON_SEPARATOR.join(
                rule.message(shown[rule.shows][j]) for rule, flags in zip(rules, broken_at) if flags[j])
    return error_type, pa.array(reasons, pa.string())


__all__ = ["CATEGORIES", "EXCHANGE_MATCHES", "EXCHANGE_MISMATCH", "MAX_AGE_US", "REFERENCE_TIME_US", "RULES",
           "TIMESTAMP_NOT_FUTURE", "Rule", "broken", "build", "col", "evaluate", "exchange_matches", "for_exchange",
           "for_settings", "present", "timestamp_not_future"]
