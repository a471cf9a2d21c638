"""The Iceberg catalog for Python code (pyiceberg), sharing Spark's JDBC catalog database.

Spark uses Iceberg's JDBC catalog (``jdbc.schema-version=V1``); pyiceberg's ``SqlCatalog``
reads and writes the same ``iceberg_tables`` rows, so either engine sees the other's commits.
SQLite runs in WAL mode with a busy timeout because Spark jobs, the CLI and Airflow tasks
commit concurrently.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lakehouse.settings import Settings, SettingsError

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

SQLITE_BUSY_TIMEOUT_MS = 30_000


class CatalogUnavailableError(RuntimeError):
    """The catalog database cannot be reached; the message names the setting to check."""


def sqlalchemy_uri(settings: Settings) -> str:
    """Translate the catalog's JDBC URI into the SQLAlchemy URI pyiceberg needs."""
    jdbc = settings.catalog_jdbc_uri
    if settings.catalog_is_sqlite:
        path = jdbc[len("jdbc:sqlite:"):].split("?", 1)[0]
        return f"sqlite:///{path}?timeout={SQLITE_BUSY_TIMEOUT_MS // 1000}"
    if jdbc.startswith("jdbc:postgresql://"):
        rest = jdbc[len("jdbc:postgresql://"):]
        hostpart, _, query = rest.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        user = settings.catalog_user or params.get("user", "")
        password = settings.catalog_password or params.get("password", "")
        auth = ""
        if user:
            auth = urllib.parse.quote(user) + (":" + urllib.parse.quote(password) if password else "") + "@"
        return f"postgresql+psycopg2://{auth}{hostpart}"
    raise SettingsError(f"LAKEHOUSE_CATALOG_URI={jdbc!r}: only jdbc:sqlite: and jdbc:postgresql: are supported")


# Iceberg's JDBC catalog tables, schema version V1 (as Iceberg 1.10 creates them).
_CATALOG_DDL = (
    "CREATE TABLE IF NOT EXISTS iceberg_tables(catalog_name VARCHAR(255) NOT NULL,"
    "table_namespace VARCHAR(255) NOT NULL,table_name VARCHAR(255) NOT NULL,metadata_location VARCHAR(1000),"
    "previous_metadata_location VARCHAR(1000), iceberg_type VARCHAR(5),"
    "PRIMARY KEY (catalog_name, table_namespace, table_name))",
    "CREATE TABLE IF NOT EXISTS iceberg_namespace_properties(catalog_name VARCHAR(255) NOT NULL,"
    "namespace VARCHAR(255) NOT NULL,property_key VARCHAR(255),property_value VARCHAR(1000),"
    "PRIMARY KEY (catalog_name, namespace, property_key))",
)


def prepare_catalog_db(settings: Settings) -> None:
    """Create Iceberg's V1 catalog tables (and, for SQLite, the database file in WAL mode).

    Spark is told not to initialize the catalog tables itself (``jdbc.init-catalog-tables=false``
    for SQLite): Iceberg's initialization leaves a metadata query open on a pooled connection,
    which in SQLite pins that connection to an old read snapshot, so the Spark driver would never
    see commits by other processes (and in rollback-journal mode would block their writes).
    Creating the tables here also gives pyiceberg and Spark the same schema on PostgreSQL.
    """
    if settings.catalog_is_sqlite:
        settings.catalog_db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(settings.catalog_db_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            for ddl in _CATALOG_DDL:
                con.execute(ddl)
            con.commit()
        finally:
            con.close()
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(sqlalchemy_uri(settings))
    try:
        with engine.begin() as conn:
            for ddl in _CATALOG_DDL:
                conn.execute(sqlalchemy.text(ddl))
    except sqlalchemy.exc.OperationalError as err:
        raise CatalogUnavailableError(f"LAKEHOUSE_CATALOG_URI={settings.catalog_jdbc_uri!r}: catalog database unreachable: "
                            f"{str(err.orig).strip().splitlines()[0]}") from err
    finally:
        engine.dispose()


def load_catalog(settings: Settings) -> SqlCatalog:
    from pyiceberg.catalog.sql import SqlCatalog

    prepare_catalog_db(settings)
    props = {"uri": sqlalchemy_uri(settings), "warehouse": settings.warehouse_uri}
    if settings.s3_endpoint:
        props.update({"s3.endpoint": settings.s3_endpoint, "s3.access-key-id": settings.s3_access_key,
                      "s3.secret-access-key": settings.s3_secret_key, "s3.path-style-access": "true"})
    return SqlCatalog(settings.catalog_name, **props)


def append_data_files(table: Table, data_files: Sequence[DataFile], properties: Mapping[str, str],
                      branch: str = "main") -> None:
    """One snapshot on ``branch`` adding ``data_files`` (written by tasks), ``properties`` in its summary.

    pyiceberg retries the commit when another writer committed in between (appends never conflict).
    """
    with table.transaction() as tx:
        with tx.update_snapshot(snapshot_properties=dict(properties), branch=branch).fast_append() as append:
            for data_file in data_files:
                append.append_data_file(data_file)


@dataclass(frozen=True)
class NewestAppend:
    """The newest append snapshot of a table: where a stream of it has to get to."""

    snapshot_id: int
    sequence_number: int
    added_files: int


def newest_append(table: Table) -> NewestAppend | None:
    """The newest append in the table's current history (Iceberg streams skip replace/delete snapshots)."""
    metadata = table.metadata
    snap = metadata.snapshot_by_id(metadata.current_snapshot_id) if metadata.current_snapshot_id else None
    while snap is not None and snap.summary is not None and snap.summary.operation.value != "append":
        snap = metadata.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id else None
    if snap is None or snap.summary is None:
        return None
    return NewestAppend(snap.snapshot_id, snap.sequence_number or 0, int(snap.summary.get("added-data-files") or 0))
