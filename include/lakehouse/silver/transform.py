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
from lakehouse.silver import rules
from lakehouse.silver.decode import DECODE_ERROR_REASON, DECODE_ERROR_TYPE, decoded_spark_fields
from lakehouse.silver.rules import REFERENCE_TIME_US
from lakehouse.silver.validate import ERROR_REASON, ERROR_TYPE, arrow_validator

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql import types as T

VALUE = "value"
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


def validated_spark_fields() -> list[T.StructField]:
    """Spark fields of the validated columns (V2, schema id, error type and reason)."""
    from pyspark.sql import types as T

    decoded = [f for f in decoded_spark_fields() if f.name not in (DECODE_ERROR_TYPE, DECODE_ERROR_REASON)]
    return decoded + [T.StructField(ERROR_TYPE, T.StringType(), True),
                      T.StructField(ERROR_REASON, T.StringType(), True)]


def transform(source: DataFrame, settings: Settings, keep_value: bool = True,
              exchange: str | None = None) -> DataFrame:
    """Decode and validate (``mapInArrow``): V2 columns, schema id, ``error_type``/``error_reason``
    (NULL when valid), then the source columns (``value`` only if ``keep_value``).

    The rules are :func:`lakehouse.silver.rules.for_settings` as the driver has them when it builds
    the plan (the clock-skew tolerance of ``settings`` applied, and the exchange rule when the rows
    come from ``exchange``'s Bronze table, as the Silver tasks check it); they travel to the
    executors with the function.
    """
    from pyspark.sql import types as T

    source = source.select(*SOURCE_COLUMNS)
    passed = [f for f in source.schema.fields if keep_value or f.name != VALUE]
    schema = T.StructType(validated_spark_fields() + passed)
    checks = rules.for_settings(settings, exchange)
    return source.mapInArrow(arrow_validator(settings, checks, VALUE, keep_value), schema)


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


__all__ = ["ERROR_REASON", "ERROR_TYPE", "LINEAGE", "SOURCE_COLUMNS", "dlq_rows", "from_bronze", "from_dlq",
           "silver_columns", "silver_rows", "transform", "validated_spark_fields"]
