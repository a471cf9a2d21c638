"""The Iceberg catalog for Python code (pyiceberg), sharing Spark's JDBC catalog database.

Spark uses Iceberg's JDBC catalog (``jdbc.schema-version=V1``); pyiceberg's ``SqlCatalog``
reads and writes the same ``iceberg_tables`` rows, so either engine sees the other's commits.
SQLite runs in WAL mode with a busy timeout because Spark jobs, the CLI and Airflow tasks
commit concurrently.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import random
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyiceberg.exceptions import CommitFailedException

from lakehouse.errors import ConcurrentWriterError
from lakehouse.settings import Settings, SettingsError

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import CommitTableResponse, Table, Transaction
    from pyiceberg.table.metadata import TableMetadata
    from pyiceberg.table.snapshots import Snapshot
    from pyiceberg.table.update import TableRequirement, TableUpdate

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# SQLite's primary result codes for "another connection holds the lock" (extended codes add high bits).
_SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class CatalogUnavailableError(RuntimeError):
    """The catalog database cannot be reached; the message names the setting to check."""


class CatalogBusyError(CommitFailedException):
    """A commit found the catalog database locked by other writers for the whole busy timeout
    (SQLite's "database is locked"): the commit did not land.

    A :class:`~pyiceberg.exceptions.CommitFailedException`, so pyiceberg retries it like a lost race
    (``commit.retry.*`` table properties) and Bronze reports it as its commit failure; once the retries
    run out the job fails with this one line, naming catalog and table, and Airflow retries the task.
    """


class CatalogConflictError(CommitFailedException):
    """Another writer committed to the table between this commit's read and its compare-and-set, on
    every try the commit retries made: the commit did not land (retry the job).

    Raised in place of pyiceberg's own conflict errors, which name neither the catalog nor the table.
    """


class TagCommittedError(ConcurrentWriterError):
    """A commit carrying the same tag is already on the branch: another writer committed this input."""

    def __init__(self, message: str, snapshot_id: int) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id


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
        settings.private_home()
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
    prepare_catalog_db(settings)
    props = {"uri": sqlalchemy_uri(settings), "warehouse": settings.warehouse_uri}
    if settings.s3_endpoint:
        props.update({"s3.endpoint": settings.s3_endpoint, "s3.access-key-id": settings.s3_access_key,
                      "s3.secret-access-key": settings.s3_secret_key, "s3.path-style-access": "true"})
    return _catalog_class()(settings.catalog_name, settings.catalog_jdbc_uri, **props)


def _is_busy(error: BaseException | None) -> bool:
    """Whether a DB-API error is SQLite's "database is locked" (its busy timeout ran out)."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_BUSY_CODES


def _first_line(error: BaseException | None) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class MetadataCache:
    """Parsed table metadata by metadata file location, the most recently used few, for this process.

    A table's metadata file is never rewritten: every commit writes a new file under a new name and
    swaps the catalog row's pointer. So a parse can be reused for as long as the row points at the
    same file. That matters once a table keeps a day of minute snapshots (1,440 with the default
    24 h retention): its metadata.json is over 1 MB, and parsing it into pyiceberg's models costs
    about 0.05 s. One layer run loads each table several times (its target, each batch's progress,
    the commit's own compare-and-set reload), and a commit's result is what the next load reads.
    The models are frozen (pydantic ``frozen=True``), so tables may share them.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: collections.OrderedDict[str, TableMetadata] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, location: str) -> TableMetadata | None:
        with self._lock:
            metadata = self._entries.get(location)
            if metadata is not None:
                self._entries.move_to_end(location)
            return metadata

    def put(self, location: str | None, metadata: TableMetadata) -> None:
        if not location:
            return
        with self._lock:
            self._entries[location] = metadata
            self._entries.move_to_end(location)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# Each layer job touches at most three tables (upstream, its own, the dead-letter table), the
# maintenance pass one at a time: a few entries keep each table's current metadata.
METADATA_CACHE = MetadataCache(size=8)


@functools.cache
def _catalog_class() -> Callable[..., SqlCatalog]:
    """pyiceberg's ``SqlCatalog`` whose commits fail with this module's one-line errors.

    Built on first use: pyiceberg's catalog imports SQLAlchemy, which callers that only need this
    module's errors or URIs should not pay for.
    """
    import sqlalchemy.exc
    from pyiceberg.catalog import Catalog
    from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
    from pyiceberg.table import StagedTable, Table
    from pyiceberg.table.locations import load_location_provider

    class LakehouseSqlCatalog(SqlCatalog):
        """Commits raise :class:`CatalogConflictError`, :class:`CatalogBusyError` or
        :class:`CatalogUnavailableError`: never a raw database error, never a conflict without names."""

        def __init__(self, name: str, jdbc_uri: str, **properties: str) -> None:
            super().__init__(name, **properties)
            self.jdbc_uri = jdbc_uri  # for error messages: the setting to check

        def _convert_orm_to_iceberg(self, orm_table: IcebergTables) -> Table:
            """The table of a catalog row, its metadata parsed once per metadata file and process."""
            location = orm_table.metadata_location
            metadata = METADATA_CACHE.get(location) if location else None
            if metadata is None:
                table = super()._convert_orm_to_iceberg(orm_table)
                METADATA_CACHE.put(table.metadata_location, table.metadata)
                return table
            namespace = Catalog.identifier_to_tuple(orm_table.table_namespace)
            return Table(identifier=namespace + (orm_table.table_name,), metadata=metadata,
                         metadata_location=location, io=self._load_file_io(metadata.properties, location),
                         catalog=self)

        def _update_and_stage_table(self, current_table: Table | None, table_identifier: tuple[str, ...],
                                    requirements: tuple[TableRequirement, ...],
                                    updates: tuple[TableUpdate, ...]) -> StagedTable:
            """A commit's new metadata, staged with :func:`staged_metadata` (no copy of the whole
            result) for an existing table; a new table's goes through pyiceberg's validation."""
            if current_table is None:
                return super()._update_and_stage_table(current_table, table_identifier, requirements, updates)
            for requirement in requirements:
                requirement.validate(current_table.metadata)
            metadata = staged_metadata(current_table.metadata, updates, current_table.metadata_location)
            version = self._parse_metadata_version(current_table.metadata_location) + 1
            location = load_location_provider(metadata.location, metadata.properties) \
                .new_table_metadata_file_location(version)
            return StagedTable(identifier=table_identifier, metadata=metadata, metadata_location=location,
                               io=self._load_file_io(properties=metadata.properties, location=location),
                               catalog=self)

        def commit_table(self, table: Table, requirements: tuple[TableRequirement, ...],
                         updates: tuple[TableUpdate, ...]) -> CommitTableResponse:
            name = ".".join(table.name())
            try:
                response = super().commit_table(table, requirements, updates)
                METADATA_CACHE.put(response.metadata_location, response.metadata)  # what the next load reads
                return response
            except (CatalogBusyError, CatalogConflictError):
                raise
            except CommitFailedException as err:
                raise CatalogConflictError(f"catalog {self.name}: {name} was changed by another writer during this "
                                           f"commit, which did not land: {_first_line(err)}") from err
            except sqlalchemy.exc.OperationalError as err:
                if _is_busy(err.orig):
                    raise CatalogBusyError(f"catalog {self.name}: commit to {name} did not land: the catalog database "
                                           f"stayed locked by other writers for {SQLITE_BUSY_TIMEOUT_MS // 1000}s "
                                           f"({_first_line(err.orig)})") from err
                raise CatalogUnavailableError(f"LAKEHOUSE_CATALOG_URI={self.jdbc_uri!r}: catalog {self.name} failed "
                                              f"while committing {name}: {_first_line(err.orig)}") from err

    return LakehouseSqlCatalog


def append_data_files(table: Table, data_files: Sequence[DataFile], properties: Mapping[str, str],
                      branch: str = "main", unique: str | None = None) -> None:
    """One snapshot on ``branch`` adding ``data_files`` (written by tasks), ``properties`` in its summary.

    Without ``unique``, pyiceberg retries the commit when another writer committed in between
    (appends never conflict). With ``unique`` (a key of ``properties``), the commit is a
    compare-and-set: it lands only on a branch head none of whose ancestors carries the same
    ``unique`` value, else :class:`TagCommittedError` (see :func:`_append_once`).
    """
    if unique is None:
        with transaction(table) as tx:
            _stage_append(tx, data_files, properties, branch)
        return
    _append_once(table, data_files, properties, branch, unique)


@functools.cache
def _memo_transaction_class() -> type[Transaction]:
    from pyiceberg.table import Transaction

    class MemoTransaction(Transaction):
        """pyiceberg 0.12 computes ``Transaction.table_metadata`` afresh on every read: it applies the
        staged updates to the table's metadata and deep-copies the result, O(snapshots) each time,
        and one fast append reads it about 19 times. A table keeping a day of minute commits (1,440
        snapshots) then spends over a second per commit copying metadata. This computes it once per
        (table metadata, staged updates) pair, without the copy (:func:`staged_metadata`); both are
        immutable and replaced, never changed, when the transaction stages an update or refreshes
        the table for a retry."""

        _memo: tuple[object, object, TableMetadata] | None = None

        @property
        def table_metadata(self) -> TableMetadata:
            base, updates = self._table.metadata, self._updates
            memo = self._memo
            if memo is None or memo[0] is not base or memo[1] is not updates:
                memo = (base, updates, staged_metadata(base, updates))
                self._memo = memo
            return memo[2]

    return MemoTransaction


def staged_metadata(base: TableMetadata, updates: tuple[TableUpdate, ...],
                    metadata_location: str | None = None) -> TableMetadata:
    """``base`` with ``updates`` applied: pyiceberg's ``update_table_metadata`` for an existing table,
    without the deep copy of the whole result it ends with.

    That copy is O(snapshots) (about 0.06 s at a day of minute snapshots) and guards nothing: the
    metadata models are frozen, and every update builds new lists and dicts instead of changing the
    base's (checked in ``tests/unit/test_catalog_transaction.py`` against pyiceberg's own result).
    """
    from pyiceberg.utils.datetime import datetime_to_millis

    from lakehouse.adapters.pyiceberg import apply_table_updates

    metadata, changed = apply_table_updates(base, updates, metadata_location)
    if changed:
        if base.last_updated_ms == metadata.last_updated_ms:
            now = datetime_to_millis(dt.datetime.now().astimezone())
            metadata = metadata.model_copy(update={"last_updated_ms": now})
    metadata.spec().check_compatible(metadata.schema())
    metadata.sort_order().check_compatible(metadata.schema())
    return metadata


def transaction(table: Table) -> Transaction:
    """``table.transaction()``, with the staged metadata computed once per change instead of on every read."""
    return _memo_transaction_class()(table)


def _stage_append(tx: Transaction, data_files: Sequence[DataFile], properties: Mapping[str, str],
                  branch: str) -> None:
    with tx.update_snapshot(snapshot_properties=dict(properties), branch=branch).fast_append() as append:
        for data_file in data_files:
            append.append_data_file(data_file)


def tagged_ancestor(table: Table, key: str, value: str, branch: str = "main") -> Snapshot | None:
    """The snapshot in ``branch``'s (unexpired) history whose summary carries ``key`` = ``value``."""
    metadata = table.metadata
    by_id = {snap.snapshot_id: snap for snap in metadata.snapshots}
    snap = metadata.snapshot_by_name(branch)
    while snap is not None:
        if snap.summary is not None and snap.summary.get(key) == value:
            return snap
        snap = by_id.get(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return None


def _append_once(table: Table, data_files: Sequence[DataFile], properties: Mapping[str, str], branch: str,
                 key: str) -> None:
    """Commit the append only on top of a branch head whose history lacks ``properties[key]``.

    pyiceberg's own retry would rebuild a failed append on the new head without asking us, so a
    second writer of the same tagged input would land too. Each attempt therefore commits once
    (retries off on a copy of the table, so the setting never reaches the catalog): the commit
    asserts the branch head it was built on, which makes check-then-append atomic. When another
    commit moved the head, the table is reloaded and the tag checked again: present, the other
    writer committed this input (:class:`TagCommittedError`); absent (another exchange's commit to
    a shared table, a maintenance commit), the append is rebuilt on the new head after a backoff.
    Attempts and waits follow the table's ``commit.retry.*`` properties, like any other commit.
    """
    from pyiceberg.table import TableProperties

    value = properties[key]
    props = table.metadata.properties
    retries = max(0, int(props.get(TableProperties.COMMIT_NUM_RETRIES, TableProperties.COMMIT_NUM_RETRIES_DEFAULT)))
    min_wait_ms = max(0, int(props.get(TableProperties.COMMIT_MIN_RETRY_WAIT_MS,
                                       TableProperties.COMMIT_MIN_RETRY_WAIT_MS_DEFAULT)))
    max_wait_ms = max(0, int(props.get(TableProperties.COMMIT_MAX_RETRY_WAIT_MS,
                                       TableProperties.COMMIT_MAX_RETRY_WAIT_MS_DEFAULT)))
    for attempt in range(retries + 1):
        found = tagged_ancestor(table, key, value, branch)
        if found is not None:
            raise TagCommittedError(f"{'.'.join(table.name())} branch {branch} already holds snapshot "
                                    f"{found.snapshot_id} with {key}={value}", found.snapshot_id)
        try:
            with transaction(_without_commit_retries(table)) as tx:
                _stage_append(tx, data_files, properties, branch)
            return
        except CommitFailedException:
            if attempt == retries:
                raise
            wait_ms = min(min_wait_ms * 2 ** attempt, max_wait_ms)
            log.info("commit to %s lost a race (attempt %s of %s); checking %s=%s again in %s ms",
                     ".".join(table.name()), attempt + 1, retries + 1, key, value, wait_ms)
            time.sleep((wait_ms + random.uniform(0, 0.1 * wait_ms)) / 1000)
            table = table.refresh()


def _without_commit_retries(table: Table) -> Table:
    """The same table whose next commit is tried once (``commit.retry.num-retries`` = 0 on this object only).

    The catalog applies a commit's updates to the metadata it holds, so the local copy of the
    property is never written.
    """
    from pyiceberg.table import Table, TableProperties

    metadata = table.metadata.model_copy(
        update={"properties": {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}})
    return Table(table.name(), metadata, table.metadata_location, table.io, table.catalog, table.config)


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
