"""Pure transforms: Bronze rows -> decoded, validated rows -> Silver rows and dead-letter rows.

Every input row comes out exactly once: with ``error_type`` NULL it is a Silver row, otherwise
a dead-letter row (decode errors take precedence over rule failures, since a row that cannot be
decoded has no fields to check).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from lakehouse import names, tables
from lakehouse.settings import Settings
from lakehouse.silver.decode import DECODE_ERROR_REASON, DECODE_ERROR_TYPE, arrow_decoder, decoded_spark_fields
from lakehouse.silver.rules import REFERENCE_TIME_US, RULE_ERROR_REASON, RULE_ERROR_TYPE, apply_rules

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

VALUE = "value"
ERROR_TYPE = "error_type"
ERROR_REASON = "error_reason"
LINEAGE = ("bronze_topic", "bronze_partition", "bronze_offset")
# What transform() needs: raw value, Bronze lineage and the reference time of the time rules.
SOURCE_COLUMNS = (VALUE, *LINEAGE, REFERENCE_TIME_US)


def from_bronze(bronze: DataFrame) -> DataFrame:
    """Bronze table rows -> the source columns of :func:`transform`."""
    from pyspark.sql import functions as F

    return bronze.select(
        F.col("value").alias(VALUE),
        F.col("topic").alias("bronze_topic"),
        F.col("partition").alias("bronze_partition"),
        F.col("offset").alias("bronze_offset"),
        F.unix_micros(F.col("ingestion_timestamp")).alias(REFERENCE_TIME_US),
    )


def from_dlq(dlq: DataFrame) -> DataFrame:
    """Dead-letter rows -> source columns; the time rules use the dead-letter time as reference."""
    from pyspark.sql import functions as F

    return dlq.select(F.col("raw_bytes").alias(VALUE), *LINEAGE,
                      F.unix_micros(F.col("dlq_timestamp")).alias(REFERENCE_TIME_US))


def decode(source: DataFrame, settings: Settings, keep_value: bool = True) -> DataFrame:
    """Decode ``value`` vectorized (``mapInArrow``): decoded columns first, then the input columns
    (``value`` only if ``keep_value``)."""
    from pyspark.sql import types as T

    passed = [f for f in source.schema.fields if keep_value or f.name != VALUE]
    schema = T.StructType(decoded_spark_fields() + passed)
    return source.mapInArrow(arrow_decoder(settings, VALUE, keep_value), schema)


def transform(source: DataFrame, settings: Settings, keep_value: bool = True) -> DataFrame:
    """Decode and validate: V2 columns, schema id, lineage, ``error_type``/``error_reason`` (NULL when valid).

    ``keep_value=False`` leaves the raw bytes out of the result: the Silver write needs none of
    them, and carrying them back from the Python workers is a copy of every value.
    """
    from pyspark.sql import functions as F

    checked = apply_rules(decode(source.select(*SOURCE_COLUMNS), settings, keep_value))
    decode_failed = F.col(DECODE_ERROR_TYPE).isNotNull()
    error_type = F.when(decode_failed, F.col(DECODE_ERROR_TYPE)).otherwise(F.col(RULE_ERROR_TYPE))
    error_reason = F.when(decode_failed, F.col(DECODE_ERROR_REASON)).otherwise(F.col(RULE_ERROR_REASON))
    return (checked
            .withColumn(ERROR_TYPE, error_type)
            .withColumn(ERROR_REASON, error_reason)
            .drop(DECODE_ERROR_TYPE, DECODE_ERROR_REASON, RULE_ERROR_TYPE, RULE_ERROR_REASON))


def silver_columns(validated: DataFrame, validated_at: dt.datetime) -> list[Column]:
    """The Silver table's columns, in order and with its types, computed from validated rows."""
    from pyspark.sql import functions as F

    extra = {
        "validation_timestamp": F.lit(validated_at).cast("timestamp"),
        "exchange_date": F.to_date(F.timestamp_micros(F.col("timestamp"))),
    }
    return [extra.get(c.name, F.col(c.name)).cast(tables.spark_type(c.type)).alias(c.name)
            for c in tables.V2_COLUMNS + tables.SILVER_EXTRA]


def silver_rows(validated: DataFrame, validated_at: dt.datetime) -> DataFrame:
    """Valid rows in the Silver table's column order and types."""
    from pyspark.sql import functions as F

    return validated.where(F.col(ERROR_TYPE).isNull()).select(*silver_columns(validated, validated_at))


def dlq_rows(validated: DataFrame, exchange: str, dead_lettered_at: dt.datetime) -> DataFrame:
    """Failed rows in the dead-letter table's column order and types."""
    from pyspark.sql import functions as F

    at = F.lit(dead_lettered_at).cast("timestamp")
    values = {
        "raw_bytes": F.col(VALUE),
        "bronze_source": F.lit(names.bronze_table(exchange)),
        "dlq_timestamp": at,
        "dlq_date": F.to_date(at),
        "replayed": F.lit(False),
        "replayed_at": F.lit(None),
    }
    columns = []
    for c in tables.DLQ_DEF.columns:
        column = values.get(c.name, F.col(c.name)).cast(tables.spark_type(c.type))
        if c.required and c.name in (ERROR_TYPE, ERROR_REASON):
            column = F.coalesce(column, F.lit(""))  # never empty after the filter; tells Spark it is NOT NULL
        columns.append(column.alias(c.name))
    return validated.where(F.col(ERROR_TYPE).isNotNull()).select(*columns)


__all__ = ["ERROR_REASON", "ERROR_TYPE", "LINEAGE", "SOURCE_COLUMNS", "decode", "dlq_rows", "from_bronze",
           "from_dlq", "silver_columns", "silver_rows", "transform"]
