"""Decode and validate one Arrow batch of Bronze values: every row comes out once, valid or not.

A row's ``error_type`` is NULL when it is valid; otherwise it is its dead-letter category and
``error_reason`` says why. Decode errors take precedence over rule failures (a row that cannot
be decoded has no fields to check). Used by the Silver tasks (:mod:`lakehouse.silver.tasks`)
and, through ``mapInArrow``, by the Spark transform of the replays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.settings import Settings
from lakehouse.silver import rules as rules_module
from lakehouse.silver.decode import (
    DECODE_ERROR_REASON,
    DECODE_ERROR_TYPE,
    DECODED_ARROW_FIELDS,
    Decoder,
    decode_batch,
    decoder_for,
)
from lakehouse.silver.rules import Rule

ERROR_TYPE = "error_type"
ERROR_REASON = "error_reason"
_DECODE_ERRORS = (DECODE_ERROR_TYPE, DECODE_ERROR_REASON)

# The validated columns: the 15 V2 columns, the schema id, then the error columns.
VALIDATED_ARROW_FIELDS: tuple[pa.Field, ...] = tuple(
    f for f in DECODED_ARROW_FIELDS if f.name not in _DECODE_ERRORS) + (
    pa.field(ERROR_TYPE, pa.string()),
    pa.field(ERROR_REASON, pa.string()),
)


def validate_batch(batch: pa.RecordBatch, decoder: Decoder, rules: tuple[Rule, ...] | None = None,
                   value_column: str = "value", keep_value: bool = True) -> pa.RecordBatch:
    """The validated columns followed by the input columns (``value_column`` only if ``keep_value``).

    ``batch`` must carry :data:`~lakehouse.silver.rules.REFERENCE_TIME_US` for the time rules.
    """
    decoded = decode_batch(batch, decoder, value_column, keep_value)
    decode_type = decoded.column(DECODE_ERROR_TYPE)
    rule_type, rule_reason = rules_module.evaluate(decoded, rules, skip=pc.is_valid(decode_type))
    error_type = pc.coalesce(decode_type, rule_type)
    error_reason = pc.coalesce(decoded.column(DECODE_ERROR_REASON), rule_reason)
    names = [n for n in decoded.schema.names if n not in _DECODE_ERRORS]
    head = len(VALIDATED_ARROW_FIELDS) - 2
    arrays = ([decoded.column(n) for n in names[:head]] + [error_type, error_reason]
              + [decoded.column(n) for n in names[head:]])
    fields = list(VALIDATED_ARROW_FIELDS) + [decoded.schema.field(n) for n in names[head:]]
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def arrow_validator(settings: Settings, rules: tuple[Rule, ...], value_column: str = "value",
                    keep_value: bool = True) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function given to ``mapInArrow``: validates every batch with the executor's cached decoder.

    ``rules`` travel with the function, so the executors check exactly the rules the driver had.
    """

    def validate_frames(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        decoder = decoder_for(settings)
        decoder.forget_failures()
        for batch in batches:
            yield validate_batch(batch, decoder, rules, value_column, keep_value)

    return validate_frames


__all__ = ["ERROR_REASON", "ERROR_TYPE", "VALIDATED_ARROW_FIELDS", "arrow_validator", "validate_batch"]
