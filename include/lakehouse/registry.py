"""Schema registry behind one interface, with two backends.

* :class:`LocalSchemaRegistry`: a persistent SQLite store under ``LAKEHOUSE_HOME`` (embedded
  default). Ids are global and stable, the same schema text gets the same id in any subject,
  as in Confluent Schema Registry.
* :class:`HttpSchemaRegistry`: Confluent Schema Registry's REST API (production).

Errors are split so callers can act on them: :class:`UnknownSchemaError` is a property of the
record (Silver dead-letters it); :class:`RegistryUnavailableError` is an outage (the run fails
and is retried, nothing is dead-lettered).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

import requests

from lakehouse.settings import Settings

Schema = dict[str, Any]


class RegistryError(RuntimeError):
    """Base class of schema registry failures."""


class RegistryUnavailableError(RegistryError):
    """The registry cannot be reached or answered with a server error: retry later."""


class UnknownSchemaError(RegistryError):
    """No schema is registered under that id or subject."""


class SchemaRegistry(Protocol):
    def register(self, subject: str, schema: Schema) -> int: ...

    def get_schema(self, schema_id: int) -> Schema: ...

    def latest(self, subject: str) -> tuple[int, Schema]: ...

    def subjects(self) -> list[str]: ...


def canonical(schema: Schema) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class LocalSchemaRegistry:
    """Persistent local store (SQLite, WAL) with Confluent's id/subject/version semantics."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "registry.db"
        self._lock = threading.Lock()
        self._cache: dict[int, Schema] = {}
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schemas (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                        " fingerprint TEXT UNIQUE NOT NULL, schema TEXT NOT NULL)")
            con.execute("CREATE TABLE IF NOT EXISTS subject_versions (subject TEXT NOT NULL, version INTEGER NOT NULL,"
                        " schema_id INTEGER NOT NULL REFERENCES schemas(id), PRIMARY KEY (subject, version))")

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def register(self, subject: str, schema: Schema) -> int:
        text = canonical(schema)
        fingerprint = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            con = self._connect()
            try:
                con.execute("BEGIN IMMEDIATE")
                con.execute("INSERT OR IGNORE INTO schemas (fingerprint, schema) VALUES (?, ?)", (fingerprint, text))
                (schema_id,) = con.execute("SELECT id FROM schemas WHERE fingerprint = ?", (fingerprint,)).fetchone()
                known = con.execute("SELECT 1 FROM subject_versions WHERE subject = ? AND schema_id = ?",
                                    (subject, schema_id)).fetchone()
                if not known:
                    (last,) = con.execute("SELECT COALESCE(MAX(version), 0) FROM subject_versions WHERE subject = ?",
                                          (subject,)).fetchone()
                    con.execute("INSERT INTO subject_versions VALUES (?, ?, ?)", (subject, last + 1, schema_id))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()
        return int(schema_id)

    def get_schema(self, schema_id: int) -> Schema:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        con = self._connect()
        try:
            row = con.execute("SELECT schema FROM schemas WHERE id = ?", (schema_id,)).fetchone()
        finally:
            con.close()
        if row is None:
            raise UnknownSchemaError(f"schema id {schema_id} is not registered")
        schema = json.loads(row[0])
        self._cache[schema_id] = schema
        return schema

    def latest(self, subject: str) -> tuple[int, Schema]:
        con = self._connect()
        try:
            row = con.execute("SELECT schema_id FROM subject_versions WHERE subject = ? ORDER BY version DESC LIMIT 1",
                              (subject,)).fetchone()
        finally:
            con.close()
        if row is None:
            raise UnknownSchemaError(f"subject {subject!r} has no registered schema")
        return int(row[0]), self.get_schema(int(row[0]))

    def subjects(self) -> list[str]:
        con = self._connect()
        try:
            return [r[0] for r in con.execute("SELECT DISTINCT subject FROM subject_versions ORDER BY subject")]
        finally:
            con.close()


class HttpSchemaRegistry:
    """Client of Confluent Schema Registry's REST API."""

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._cache: dict[int, Schema] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = self._session.request(method, self.url + path, json=body, timeout=self.timeout_s,
                                         headers={"Content-Type": self._CONTENT_TYPE})
        except requests.RequestException as err:
            raise RegistryUnavailableError(f"schema registry {self.url} unreachable: {err}") from err
        if resp.status_code == 404:
            raise UnknownSchemaError(f"{method} {path}: {resp.text.strip()[:200]}")
        if resp.status_code >= 500:
            raise RegistryUnavailableError(f"schema registry {self.url} answered {resp.status_code} to {path}")
        if resp.status_code >= 400:
            raise RegistryError(f"schema registry rejected {method} {path}: {resp.status_code} {resp.text[:200]}")
        return resp.json()

    def register(self, subject: str, schema: Schema) -> int:
        return int(self._call("POST", f"/subjects/{subject}/versions", {"schema": canonical(schema)})["id"])

    def get_schema(self, schema_id: int) -> Schema:
        cached = self._cache.get(schema_id)
        if cached is None:
            cached = json.loads(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])
            self._cache[schema_id] = cached
        return cached

    def latest(self, subject: str) -> tuple[int, Schema]:
        body = self._call("GET", f"/subjects/{subject}/versions/latest")
        schema = json.loads(body["schema"])
        self._cache[int(body["id"])] = schema
        return int(body["id"]), schema

    def subjects(self) -> list[str]:
        return sorted(self._call("GET", "/subjects"))


def registry_from_settings(settings: Settings) -> SchemaRegistry:
    if settings.schema_registry_url:
        return HttpSchemaRegistry(settings.schema_registry_url, settings.schema_registry_timeout_s)
    return LocalSchemaRegistry(settings.registry_dir)
