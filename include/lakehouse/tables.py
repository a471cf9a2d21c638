"""Every Iceberg table of the product, declared once, created idempotently.

Schemas are declared as Iceberg schemas (the table's own type system); the Spark
``StructType`` of each table is derived from them by :func:`spark_schema`, so the two can
never drift apart. Tables are created through pyiceberg (no JVM needed for ``lakehouse up``)
in the same JDBC catalog database Spark uses, so both engines see them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform, MonthTransform, Transform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

from lakehouse import names
from lakehouse.catalog import load_catalog
from lakehouse.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyspark.sql import types as T

log = logging.getLogger(__name__)

PRICE = DecimalType(18, 8)
# Sums of quantities (bar volume) need more integer digits than one trade's quantity.
VOLUME = DecimalType(28, 8)

COMMON_PROPERTIES = {
    "format-version": "2",
    "write.format.default": "parquet",
    "write.parquet.compression-codec": "zstd",
    # Columns with few values (symbol, side, error_type, ...) fit a 64 KiB dictionary; unique ones
    # (ids, offsets, prices) give it up early instead of filling 2 MiB first: measured, half the
    # Parquet write CPU of a Silver row and 30% smaller files.
    "write.parquet.dict-size-bytes": str(64 * 1024),
    "write.target-file-size-bytes": str(128 * 1024 * 1024),
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
    "commit.retry.num-retries": "10",
    "commit.retry.min-wait-ms": "100",
    "commit.retry.max-wait-ms": "10000",
    # A commit that waits on a busy catalog (SQLite's 30 s lock timeout counts as a retryable
    # failure) gives up after two minutes in all, and the job fails in one line for Airflow to retry.
    "commit.retry.total-timeout-ms": "120000",
    "history.expire.max-snapshot-age-ms": str(24 * 3600 * 1000),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: IcebergType
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class TableDef:
    name: str
    columns: tuple[Column, ...]
    partition_by: tuple[tuple[str, Transform], ...]  # (source column, transform)
    doc: str
    properties: dict[str, str] = field(default_factory=dict)

    def schema(self) -> Schema:
        """Iceberg schema with field ids assigned in declaration order (nested ids after)."""
        next_id = len(self.columns) + 1
        fields = []
        for i, col in enumerate(self.columns, start=1):
            col_type, next_id = _assign_nested_ids(col.type, next_id)
            fields.append(NestedField(i, col.name, col_type, required=col.required, doc=col.doc or None))
        return Schema(*fields)

    def partition_spec(self, schema: Schema) -> PartitionSpec:
        parts = []
        for i, (column, transform) in enumerate(self.partition_by):
            source = schema.find_field(column)
            suffix = "" if isinstance(transform, IdentityTransform) else f"_{str(transform).lower()}"
            parts.append(PartitionField(source_id=source.field_id, field_id=1000 + i, transform=transform,
                                        name=f"{column}{suffix}"))
        return PartitionSpec(*parts)


def _assign_nested_ids(t: IcebergType, next_id: int) -> tuple[IcebergType, int]:
    if isinstance(t, ListType):
        element, nid = _assign_nested_ids(t.element_type, next_id + 1)
        return ListType(next_id, element, element_required=t.element_required), nid
    if isinstance(t, MapType):
        key, nid = _assign_nested_ids(t.key_type, next_id + 2)
        value, nid = _assign_nested_ids(t.value_type, nid)
        return MapType(next_id, key, next_id + 1, value, value_required=t.value_required), nid
    if isinstance(t, StructType):
        fields = []
        base = next_id
        nid = next_id + len(t.fields)
        for i, f in enumerate(t.fields):
            ftype, nid = _assign_nested_ids(f.field_type, nid)
            fields.append(NestedField(base + i, f.name, ftype, required=f.required, doc=f.doc))
        return StructType(*fields), nid
    return t, next_id


def _list(element: IcebergType) -> ListType:
    return ListType(0, element, element_required=False)


STRING_MAP = MapType(0, StringType(), 0, StringType(), value_required=False)

# The 15 fields of the unified V2 trade, in Avro order.
V2_COLUMNS: tuple[Column, ...] = (
    Column("message_id", StringType(), doc="Deterministic UUIDv5 of exchange, symbol and trade id"),
    Column("trade_id", StringType()),
    Column("symbol", StringType()),
    Column("exchange", StringType()),
    Column("asset_class", StringType()),
    Column("timestamp", LongType(), doc="Exchange trade time, microseconds since epoch"),
    Column("price", PRICE),
    Column("quantity", PRICE),
    Column("currency", StringType(), doc="Quote currency"),
    Column("side", StringType(), doc="Taker side: BUY or SELL"),
    Column("trade_conditions", _list(StringType())),
    Column("source_sequence", LongType()),
    Column("ingestion_timestamp", LongType(), doc="Producer receipt time, microseconds since epoch"),
    Column("platform_sequence", LongType()),
    Column("vendor_data", STRING_MAP),
)

HEADER = StructType(NestedField(0, "key", StringType(), required=False),
                    NestedField(0, "value", BinaryType(), required=False))


def bronze_def(exchange: str) -> TableDef:
    return TableDef(
        name=names.bronze_table(exchange),
        doc=f"Bronze: raw Kafka records of {exchange}, exactly once, value never decoded",
        columns=(
            Column("key", BinaryType()),
            Column("value", BinaryType()),
            Column("topic", StringType(), required=True),
            Column("partition", IntegerType(), required=True),
            Column("offset", LongType(), required=True),
            Column("timestamp", TimestamptzType(), doc="Kafka record timestamp"),
            Column("timestampType", IntegerType()),
            Column("headers", _list(HEADER)),
            Column("ingestion_timestamp", TimestamptzType(), required=True),
        ),
        partition_by=(("ingestion_timestamp", DayTransform()),),
        properties={"write.distribution-mode": "none"},
    )


SILVER_EXTRA: tuple[Column, ...] = (
    Column("validation_timestamp", TimestamptzType()),
    Column("exchange_date", DateType(), doc="UTC date of the trade time: the partition"),
    Column("bronze_topic", StringType()),
    Column("bronze_partition", IntegerType()),
    Column("bronze_offset", LongType()),
    Column("schema_id", IntegerType()),
)


def silver_def(exchange: str) -> TableDef:
    return TableDef(
        name=names.silver_table(exchange),
        doc=f"Silver: decoded and validated V2 trades of {exchange} with Bronze lineage",
        columns=V2_COLUMNS + SILVER_EXTRA,
        partition_by=(("exchange_date", IdentityTransform()),),
    )


DLQ_DEF = TableDef(
    name=names.DLQ_TABLE,
    doc="Dead-letter rows of Silver: raw bytes plus why they failed",
    columns=(
        Column("raw_bytes", BinaryType()),
        Column("error_type", StringType(), required=True),
        Column("error_reason", StringType(), required=True),
        Column("bronze_source", StringType(), required=True, doc="Bronze table the row came from"),
        Column("bronze_topic", StringType()),
        Column("bronze_partition", IntegerType()),
        Column("bronze_offset", LongType()),
        Column("schema_id", IntegerType()),
        Column("message_id", StringType()),
        Column("dlq_timestamp", TimestamptzType(), required=True),
        Column("dlq_date", DateType(), required=True),
        Column("replayed", BooleanType()),
        Column("replayed_at", TimestamptzType()),
    ),
    partition_by=(("dlq_date", IdentityTransform()), ("bronze_source", IdentityTransform()),
                  ("error_type", IdentityTransform())),
)

DLQ_ARCHIVE_DEF = TableDef(
    name=names.DLQ_ARCHIVE_TABLE,
    doc="Dead-letter rows past their hot retention (lakehouse.silver.retention), kept until purged",
    columns=DLQ_DEF.columns + (
        Column("archived_at", TimestamptzType(), required=True, doc="When the row left silver_dlq_trades"),
    ),
    # Month partitions: the archive is read rarely and purged by whole months (metadata-only deletes).
    partition_by=(("dlq_date", MonthTransform()),),
    properties={
        # Written once a day, read almost never: spend CPU on smaller files (the default level is 3).
        "write.parquet.compression-level": "12",
        # Purged rows must leave the files, never linger behind delete files.
        "write.delete.mode": "copy-on-write",
        "write.update.mode": "copy-on-write",
        "write.merge.mode": "copy-on-write",
    },
)

GOLD_DEF = TableDef(
    name=names.GOLD_TABLE,
    doc="Gold: every valid trade of every exchange once, hourly partitions",
    columns=tuple(Column(c.name, StringType(), doc="JSON object") if c.name == "vendor_data" else c
                  for c in V2_COLUMNS) + (
        Column("instrument", StringType(), doc="Canonical BASE/QUOTE, the same across exchanges"),
        Column("gold_ingestion_timestamp", TimestamptzType()),
        Column("exchange_date", DateType()),
        Column("exchange_hour", IntegerType()),
    ),
    partition_by=(("exchange_date", IdentityTransform()), ("exchange_hour", IdentityTransform())),
    properties={
        "write.distribution-mode": "hash",
        # Gold's insert MERGE is row-level and validated against concurrent inserts in its scope
        # (see lakehouse.gold.writer.merge_trades); merge-on-read so it never rewrites data files.
        "write.merge.mode": "merge-on-read",
        "write.merge.isolation-level": "serializable",
    },
)

OHLCV_DEF = TableDef(
    name=names.OHLCV_TABLE,
    doc="Gold analytics: one-minute OHLCV bars per exchange and instrument",
    columns=(
        Column("exchange", StringType(), required=True),
        Column("instrument", StringType(), required=True),
        Column("minute", TimestamptzType(), required=True),
        Column("open", PRICE),
        Column("high", PRICE),
        Column("low", PRICE),
        Column("close", PRICE),
        Column("volume", VOLUME),
        Column("vwap", PRICE),
        Column("trade_count", LongType()),
        Column("buy_volume", VOLUME),
        Column("sell_volume", VOLUME),
        Column("updated_at", TimestamptzType()),
    ),
    partition_by=(("minute", DayTransform()),),
)

AUDIT_DEF = TableDef(
    name=names.AUDIT_TABLE,
    doc="Audit trail of operational events: data loss detected or accepted, replays",
    columns=(
        Column("event_time", TimestamptzType(), required=True),
        Column("layer", StringType(), required=True),
        Column("source", StringType()),
        Column("event", StringType(), required=True),
        Column("detail", StringType(), doc="JSON object"),
    ),
    partition_by=(("event_time", DayTransform()),),
)


def table_defs(settings: Settings) -> list[TableDef]:
    defs: list[TableDef] = []
    for exchange in settings.exchanges:
        defs += [bronze_def(exchange), silver_def(exchange)]
    return defs + [DLQ_DEF, DLQ_ARCHIVE_DEF, GOLD_DEF, OHLCV_DEF, AUDIT_DEF]


def table_def(settings: Settings, name: str) -> TableDef:
    for d in table_defs(settings):
        if d.name == name:
            return d
    raise KeyError(f"unknown table {name!r}")


# Properties only a table's creation sets (the format is upgraded by a migration, never here).
CREATE_ONLY_PROPERTIES = frozenset({"format-version"})


def table_properties(d: TableDef) -> dict[str, str]:
    """Every property ``d`` declares, common ones included."""
    return {**COMMON_PROPERTIES, **d.properties, "comment": d.doc}


def ensure_tables(settings: Settings, catalog: Catalog | None = None) -> list[str]:
    """Create the namespace and every missing table; return the names created.

    An existing table gets every declared property it lacks or holds with another value (a new
    release's settings reach tables an older one created); other properties are left alone.
    """
    catalog = catalog or load_catalog(settings)
    try:
        catalog.create_namespace(names.NAMESPACE)
    except NamespaceAlreadyExistsError:
        pass
    created = []
    for d in table_defs(settings):
        if catalog.table_exists(d.name):
            update_properties(catalog, d)
            continue
        schema = d.schema()
        try:
            catalog.create_table(d.name, schema, partition_spec=d.partition_spec(schema),
                                 properties=table_properties(d))
            created.append(d.name)
        except TableAlreadyExistsError:
            update_properties(catalog, d)
    if created:
        log.info("tables created", extra={"tables": created})
    return created


def update_properties(catalog: Catalog, d: TableDef) -> dict[str, str]:
    """Set the declared properties that ``d``'s existing table lacks or holds otherwise; return them."""
    table = catalog.load_table(d.name)
    changed = {k: v for k, v in table_properties(d).items()
               if k not in CREATE_ONLY_PROPERTIES and table.properties.get(k) != v}
    if changed:
        with table.transaction() as tx:
            tx.set_properties(changed)
        log.info("table properties updated: %s", d.name, extra={"table": d.name, "properties": changed})
    return changed


def spark_type(t: IcebergType) -> T.DataType:
    """Map an Iceberg type to the Spark type Spark's Iceberg reader produces."""
    from pyspark.sql import types as T

    simple = {StringType: T.StringType(), LongType: T.LongType(), IntegerType: T.IntegerType(),
              BinaryType: T.BinaryType(), BooleanType: T.BooleanType(), DateType: T.DateType(),
              TimestamptzType: T.TimestampType()}
    for k, v in simple.items():
        if isinstance(t, k):
            return v
    if isinstance(t, DecimalType):
        return T.DecimalType(t.precision, t.scale)
    if isinstance(t, ListType):
        return T.ArrayType(spark_type(t.element_type), containsNull=not t.element_required)
    if isinstance(t, MapType):
        return T.MapType(spark_type(t.key_type), spark_type(t.value_type), valueContainsNull=not t.value_required)
    if isinstance(t, StructType):
        return T.StructType([T.StructField(f.name, spark_type(f.field_type), not f.required) for f in t.fields])
    raise TypeError(f"no Spark type for Iceberg type {t}")


def spark_schema(d: TableDef) -> T.StructType:
    from pyspark.sql import types as T

    return T.StructType([T.StructField(c.name, spark_type(c.type), not c.required) for c in d.columns])
