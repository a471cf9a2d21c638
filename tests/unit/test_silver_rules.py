"""Silver's validation rules on tiny inline DataFrames: each rule's category and reason, precedence, NULLs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pyspark.sql import SparkSession

from lakehouse.silver.decode import decoded_spark_fields
from lakehouse.silver.rules import CATEGORIES, MAX_AGE_US, REFERENCE_TIME_US, RULES, apply_rules
from lakehouse.silver.synthetic import trade

REF_US = 1_767_225_600_000_000  # the record reached Bronze at 2026-01-01T00:00:00Z
V2 = decoded_spark_fields()[:15]


def check(spark: SparkSession, *records: dict[str, Any]) -> list[dict[str, Any]]:
    from pyspark.sql import types as T

    schema = T.StructType([*V2, T.StructField(REFERENCE_TIME_US, T.LongType(), False)])
    rows = [tuple(r.get(f.name) for f in V2) + (REF_US,) for r in records]
    out = apply_rules(spark.createDataFrame(rows, schema)).collect()
    return [row.asDict() for row in out]


def test_a_valid_trade_breaks_no_rule(spark: SparkSession) -> None:
    (row,) = check(spark, trade(1, REF_US - 5_000_000))
    assert row["rule_error_type"] is None and row["rule_error_reason"] is None


@pytest.mark.parametrize(("overrides", "rule", "category", "shown"), [
    ({"price": Decimal("0")}, "price_positive", "invalid_price", "got 0.00000000"),
    ({"price": Decimal("-1.5")}, "price_positive", "invalid_price", "got -1.50000000"),
    ({"price": None}, "price_positive", "invalid_price", "got NULL"),
    ({"quantity": Decimal("0")}, "quantity_positive", "invalid_quantity", "got 0.00000000"),
    ({"quantity": Decimal("-0.1")}, "quantity_positive", "invalid_quantity", "got -0.10000000"),
    ({"symbol": ""}, "symbol_present", "missing_symbol", "got ''"),
    ({"symbol": "  "}, "symbol_present", "missing_symbol", "got   "),
    ({"symbol": None}, "symbol_present", "missing_symbol", "got NULL"),
    ({"side": "HOLD"}, "side_valid", "invalid_side", "got HOLD"),
    ({"side": "buy"}, "side_valid", "invalid_side", "got buy"),
    ({"timestamp": REF_US + 1}, "timestamp_not_future", "invalid_timestamp", f"got {REF_US + 1}"),
    ({"timestamp": REF_US - MAX_AGE_US - 1}, "timestamp_within_year", "invalid_timestamp",
     f"got {REF_US - MAX_AGE_US - 1}"),
    ({"timestamp": None}, "timestamp_not_future", "invalid_timestamp", "got NULL"),
    ({"message_id": ""}, "message_id_present", "missing_message_id", "got ''"),
    ({"message_id": None}, "message_id_present", "missing_message_id", "got NULL"),
    ({"asset_class": "equity"}, "asset_class_crypto", "invalid_asset_class", "got equity"),
    ({"asset_class": None}, "asset_class_crypto", "invalid_asset_class", "got NULL"),
])
def test_each_rule_sets_its_category_and_names_itself_in_the_reason(
        spark: SparkSession, overrides: dict[str, Any], rule: str, category: str, shown: str) -> None:
    (row,) = check(spark, trade(1, REF_US - 5_000_000, **overrides))
    by_name = {r.name: r for r in RULES}
    assert row["rule_error_type"] == category
    assert row["rule_error_reason"].startswith(f"{rule}: {by_name[rule].reason} (")
    assert f"({shown})" in row["rule_error_reason"]


def test_time_rules_are_inclusive_at_their_bounds(spark: SparkSession) -> None:
    rows = check(spark, trade(1, REF_US), trade(2, REF_US - MAX_AGE_US))
    assert [r["rule_error_type"] for r in rows] == [None, None]


def test_first_broken_rule_sets_the_type_and_the_reason_lists_every_broken_rule(spark: SparkSession) -> None:
    (row,) = check(spark, trade(1, REF_US + 10, price=Decimal("-1"), side="HOLD", asset_class="fx"))
    assert row["rule_error_type"] == "invalid_price"
    parts = row["rule_error_reason"].split("; ")
    assert [p.split(":")[0] for p in parts] == ["price_positive", "side_valid", "timestamp_not_future",
                                                "asset_class_crypto"]


def test_rules_are_data_with_unique_names() -> None:
    assert len({r.name for r in RULES}) == len(RULES)
    assert set(CATEGORIES) == {"invalid_price", "invalid_quantity", "missing_symbol", "invalid_side",
                               "invalid_timestamp", "missing_message_id", "invalid_asset_class"}
