"""Silver's validation rules, defined once as data and applied as Spark SQL expressions.

Each :class:`Rule` has a name, a dead-letter category, a Spark SQL condition that holds for a
valid row, and a reason. A row's ``error_type`` is the category of the first rule it breaks (in
the order of :data:`RULES`); its ``error_reason`` names every rule it breaks, with the value.

Time rules compare the trade time with the row's *reference time*, the moment the record reached
Bronze (:data:`REFERENCE_TIME_US`), not the wall clock. Validation is then a pure function of the
Bronze row: a retried batch, a replay months later and a DLQ re-validation all give the same
answer for the same code and schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Microseconds since the epoch at which the row reached the lakehouse; transforms provide it.
REFERENCE_TIME_US = "reference_time_us"
RULE_ERROR_TYPE = "rule_error_type"
RULE_ERROR_REASON = "rule_error_reason"
MAX_AGE_US = 365 * 24 * 3600 * 1_000_000
REASON_SEPARATOR = "; "


@dataclass(frozen=True)
class Rule:
    """One validation rule: ``condition`` (Spark SQL) is true for a valid row; NULL counts as broken."""

    name: str
    category: str
    condition: str
    reason: str
    shows: str  # column whose value is quoted in the reason
    decimals: int | None = None  # show that value with this many decimal places (not as 0E-8)

    def broken(self) -> Column:
        from pyspark.sql import functions as F

        return ~F.coalesce(F.expr(self.condition), F.lit(False))

    def message(self) -> Column:
        from pyspark.sql import functions as F

        raw = F.col(self.shows)
        text = (F.regexp_replace(F.format_number(raw, self.decimals), ",", "") if self.decimals is not None
                else raw.cast("string"))
        value = F.when(raw.isNull(), F.lit("NULL")).when(text == "", F.lit("''")).otherwise(text)
        return F.concat(F.lit(f"{self.name}: {self.reason} (got "), value, F.lit(")"))


RULES: tuple[Rule, ...] = (
    Rule("price_positive", "invalid_price", "price > 0", "price must be greater than 0", "price", 8),
    Rule("quantity_positive", "invalid_quantity", "quantity > 0", "quantity must be greater than 0", "quantity", 8),
    Rule("symbol_present", "missing_symbol",
         "symbol IS NOT NULL AND trim(symbol) <> ''", "symbol must be present", "symbol"),
    Rule("side_valid", "invalid_side", "side IN ('BUY', 'SELL')", "side must be BUY or SELL", "side"),
    Rule("timestamp_not_future", "invalid_timestamp", f"`timestamp` <= {REFERENCE_TIME_US}",
         "timestamp must not be later than the time the record reached Bronze", "timestamp"),
    Rule("timestamp_within_year", "invalid_timestamp", f"`timestamp` >= {REFERENCE_TIME_US} - {MAX_AGE_US}",
         "timestamp must not be more than 365 days before the record reached Bronze", "timestamp"),
    Rule("message_id_present", "missing_message_id",
         "message_id IS NOT NULL AND trim(message_id) <> ''", "message_id must be present", "message_id"),
    Rule("asset_class_crypto", "invalid_asset_class", "asset_class = 'crypto'",
         "asset_class must be 'crypto'", "asset_class"),
)

CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(r.category for r in RULES))


def apply_rules(df: DataFrame, rules: tuple[Rule, ...] | None = None) -> DataFrame:
    """Add ``rule_error_type`` (first broken rule's category, NULL if valid) and ``rule_error_reason``."""
    from pyspark.sql import functions as F

    rules = RULES if rules is None else rules
    broken = [(rule, rule.broken()) for rule in rules]
    error_type = F.coalesce(*[F.when(b, F.lit(rule.category)) for rule, b in broken], F.lit(None).cast("string"))
    reasons = F.concat_ws(REASON_SEPARATOR, *[F.when(b, rule.message()) for rule, b in broken])
    return (df.withColumn(RULE_ERROR_TYPE, error_type)
              .withColumn(RULE_ERROR_REASON, F.when(F.col(RULE_ERROR_TYPE).isNotNull(), reasons)))


__all__ = ["CATEGORIES", "MAX_AGE_US", "REFERENCE_TIME_US", "RULES", "Rule", "apply_rules"]
