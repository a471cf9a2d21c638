"""Silver's validation rules on tiny inline Arrow batches: each rule's category and reason, precedence, NULLs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakehouse.settings import load_settings
from lakehouse.silver.decode import V2_ARROW_FIELDS
from lakehouse.silver.rules import (
    CATEGORIES,
    EXCHANGE_MATCHES,
    MAX_AGE_US,
    REFERENCE_TIME_US,
    RULES,
    Rule,
    build,
    col,
    evaluate,
    for_exchange,
    for_settings,
    timestamp_not_future,
)
from lakehouse.silver.synthetic import trade

REF_US = 1_767_225_600_000_000  # the record reached Bronze at 2026-01-01T00:00:00Z
SCHEMA = pa.schema([*V2_ARROW_FIELDS, pa.field(REFERENCE_TIME_US, pa.int64())])


def batch(*records: dict[str, Any]) -> pa.RecordBatch:
    rows = [{**r, "vendor_data": list((r.get("vendor_data") or {}).items()) or None, REFERENCE_TIME_US: REF_US}
            for r in records]
    return pa.RecordBatch.from_pylist(rows, schema=SCHEMA)


def check(*records: dict[str, Any], rules: tuple[Rule, ...] | None = None,
          skip: list[bool] | None = None) -> list[dict[str, Any]]:
    types, reasons = evaluate(batch(*records), rules, None if skip is None else pa.array(skip))
    return [{"rule_error_type": t, "rule_error_reason": r} for t, r in zip(types.to_pylist(), reasons.to_pylist())]


def test_a_valid_trade_breaks_no_rule() -> None:
    (row,) = check(trade(1, REF_US - 5_000_000))
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
    ({"exchange": ""}, "exchange_present", "empty_exchange", "got ''"),
    ({"exchange": " \t"}, "exchange_present", "empty_exchange", "got  \t"),
    ({"trade_id": ""}, "trade_id_present", "empty_trade_id", "got ''"),
    ({"trade_id": "   "}, "trade_id_present", "empty_trade_id", "got    "),
    ({"currency": ""}, "currency_present", "empty_currency", "got ''"),
    ({"currency": " "}, "currency_present", "empty_currency", "got  "),
])
def test_each_rule_sets_its_category_and_names_itself_in_the_reason(
        overrides: dict[str, Any], rule: str, category: str, shown: str) -> None:
    (row,) = check(trade(1, REF_US - 5_000_000, **overrides))
    by_name = {r.name: r for r in RULES}
    assert row["rule_error_type"] == category
    assert row["rule_error_reason"].startswith(f"{rule}: {by_name[rule].reason} (")
    assert f"({shown})" in row["rule_error_reason"]


def test_time_rules_are_inclusive_at_their_bounds() -> None:
    rows = check(trade(1, REF_US), trade(2, REF_US - MAX_AGE_US))
    assert [r["rule_error_type"] for r in rows] == [None, None]


def test_first_broken_rule_sets_the_type_and_the_reason_lists_every_broken_rule() -> None:
    (row,) = check(trade(1, REF_US + 10, price=Decimal("-1"), side="HOLD", asset_class="fx"))
    assert row["rule_error_type"] == "invalid_price"
    parts = row["rule_error_reason"].split("; ")
    assert [p.split(":")[0] for p in parts] == ["price_positive", "side_valid", "timestamp_not_future",
                                                "asset_class_crypto"]


def test_rules_are_data_with_unique_names() -> None:
    assert len({r.name for r in RULES}) == len(RULES)
    assert set(CATEGORIES) == {"invalid_price", "invalid_quantity", "missing_symbol", "invalid_side",
                               "invalid_timestamp", "missing_message_id", "invalid_asset_class", "empty_exchange",
                               "empty_trade_id", "empty_currency", "exchange_mismatch"}


MISMATCH_REASON = "exchange must be 'BINANCE', the exchange of the topic the record was read from"


def test_a_record_of_another_exchange_is_an_exchange_mismatch() -> None:
    binance = for_exchange(RULES, "binance")
    lower_case = {**trade(3, REF_US - 1), "exchange": "binance"}
    rows = check(trade(1, REF_US - 1), trade(2, REF_US - 1, exchange="kraken"), lower_case,
                 trade(4, REF_US - 1, exchange=""), rules=binance)
    assert [r["rule_error_type"] for r in rows] == [None, "exchange_mismatch", "exchange_mismatch", "empty_exchange"]
    assert rows[1]["rule_error_reason"] == f"exchange_matches_topic: {MISMATCH_REASON} (got KRAKEN)"
    assert rows[2]["rule_error_reason"].endswith("(got binance)")  # the producers write upper case
    assert rows[3]["rule_error_reason"].startswith("exchange_present: ")  # and the mismatch is listed after it
    assert f"exchange_matches_topic: {MISMATCH_REASON} (got '')" in rows[3]["rule_error_reason"]


def test_the_exchange_rule_comes_with_the_exchange_and_is_replaced_not_doubled() -> None:
    settings = load_settings({})
    assert EXCHANGE_MATCHES not in {r.name for r in for_settings(settings)}
    kraken = for_settings(settings, "kraken")
    assert [r.name for r in kraken].count(EXCHANGE_MATCHES) == 1
    assert [r.name for r in for_exchange(kraken, "binance")].count(EXCHANGE_MATCHES) == 1
    rows = check(trade(1, REF_US - 1, exchange="kraken"), trade(2, REF_US - 1), rules=for_exchange(kraken, "binance"))
    assert [r["rule_error_type"] for r in rows] == ["exchange_mismatch", None]
    rows = check(trade(1, REF_US - 1, exchange="kraken"), trade(2, REF_US - 1), rules=kraken)
    assert [r["rule_error_type"] for r in rows] == [None, "exchange_mismatch"]


def test_skipped_rows_and_valid_rows_get_no_error_in_a_mixed_batch() -> None:
    rows = check(trade(1, REF_US - 1), trade(2, REF_US - 1, price=Decimal("0")), trade(3, REF_US - 1, side="X"),
                 skip=[False, False, True])
    assert [r["rule_error_type"] for r in rows] == [None, "invalid_price", None]
    assert rows[1]["rule_error_reason"] == "price_positive: price must be greater than 0 (got 0.00000000)"


def test_a_rule_is_an_arrow_expression_over_the_decoded_columns() -> None:
    even = Rule("platform_sequence_even", "odd_sequence", pc.bit_wise_and(col("platform_sequence"), 1) == 0,
                "platform_sequence must be even", "platform_sequence")
    rows = check(trade(1, REF_US - 1, platform_sequence=7), trade(2, REF_US - 1, platform_sequence=8),
                 rules=(*RULES, even))
    assert [r["rule_error_type"] for r in rows] == ["odd_sequence", None]
    assert rows[0]["rule_error_reason"] == "platform_sequence_even: platform_sequence must be even (got 7)"


FUTURE_REASON = "timestamp must not be later than the time the record reached Bronze"


def test_a_trade_within_the_clock_skew_tolerance_passes_and_one_beyond_is_dead_lettered() -> None:
    tolerant = build(max_clock_skew_s=5.0)
    rows = check(trade(1, REF_US + 1), trade(2, REF_US + 5_000_000), trade(3, REF_US + 5_000_001), rules=tolerant)
    assert [r["rule_error_type"] for r in rows] == [None, None, "invalid_timestamp"]
    assert rows[2]["rule_error_reason"] == (
        "timestamp_not_future: timestamp must not be more than 5s later than the time the record reached Bronze "
        f"(got {REF_US + 5_000_001})")


def test_the_tolerance_only_moves_the_future_bound() -> None:
    tolerant = build(max_clock_skew_s=5.0)
    assert [r.name for r in tolerant] == [r.name for r in RULES]
    assert [r for r in tolerant if r.name != "timestamp_not_future"] == [r for r in RULES
                                                                         if r.name != "timestamp_not_future"]
    rows = check(trade(1, REF_US - MAX_AGE_US), trade(2, REF_US - MAX_AGE_US - 1), rules=tolerant)
    assert [r["rule_error_type"] for r in rows] == [None, "invalid_timestamp"]
    assert rows[1]["rule_error_reason"].startswith("timestamp_within_year: ")


def test_tolerance_zero_is_the_strict_rule_of_before() -> None:
    strict = build(max_clock_skew_s=0.0)
    assert {r.name: r.reason for r in strict}["timestamp_not_future"] == FUTURE_REASON
    rows = check(trade(1, REF_US), trade(2, REF_US + 1), rules=strict)
    assert [r["rule_error_type"] for r in rows] == [None, "invalid_timestamp"]
    assert rows[1]["rule_error_reason"] == f"timestamp_not_future: {FUTURE_REASON} (got {REF_US + 1})"
    assert check(trade(1, REF_US + 1), rules=strict) == check(trade(1, REF_US + 1))  # RULES: no tolerance


def test_the_tolerance_comes_from_the_max_clock_skew_setting() -> None:
    configured = for_settings(load_settings({"LAKEHOUSE_MAX_CLOCK_SKEW_S": "2"}))
    rows = check(trade(1, REF_US + 2_000_000), trade(2, REF_US + 2_000_001), trade(3, REF_US + 4_000_000),
                 rules=configured)
    assert [r["rule_error_type"] for r in rows] == [None, "invalid_timestamp", "invalid_timestamp"]
    assert "not be more than 2s later than the time the record reached Bronze" in rows[1]["rule_error_reason"]
    default = for_settings(load_settings({}))
    assert [r["rule_error_type"] for r in check(trade(1, REF_US + 4_000_000), rules=default)] == [None]
    assert "more than 5s later" in {r.name: r.reason for r in default}["timestamp_not_future"]


@pytest.mark.parametrize(("seconds", "shown"), [(2.5, "2.5s"), (0.25, "0.25s"), (100, "100s"), (0.000001, "0.000001s")])
def test_the_reason_names_the_tolerance_in_plain_seconds(seconds: float, shown: str) -> None:
    assert timestamp_not_future(seconds).reason == (
        f"timestamp must not be more than {shown} later than the time the record reached Bronze")


@pytest.mark.parametrize("seconds", [-0.5, float("nan"), float("inf")])
def test_a_tolerance_that_is_not_a_finite_non_negative_number_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match="max_clock_skew_s"):
        build(max_clock_skew_s=seconds)


def test_build_keeps_rules_added_to_the_base() -> None:
    even = Rule("platform_sequence_even", "odd_sequence", pc.bit_wise_and(col("platform_sequence"), 1) == 0,
                "platform_sequence must be even", "platform_sequence")
    rows = check(trade(1, REF_US + 1_000_000, platform_sequence=7), rules=build(2.0, base=(*RULES, even)))
    assert [r["rule_error_type"] for r in rows] == ["odd_sequence"]
    assert rows[0]["rule_error_reason"].startswith("platform_sequence_even: ")  # not in the future within 2s
