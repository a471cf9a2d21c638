"""Schema registry behind one interface, with two backends.

* :class:`LocalSchemaRegistry`: a persistent SQLite store under ``LAKEHOUSE_HOME`` (embedded
  default). Ids are global and stable, the same schema text gets the same id in any subject,
  as in Confluent Schema Registry.
* :class:`HttpSchemaRegistry`: Confluent Schema Registry's REST API (production).

Errors are split so callers can act on them: :class:`UnknownSchemaError` is a property of the
record (Silver dead-letters it); :class:`RegistryUnavailableError` is an outage (the run fails
and is retried, nothing is dead-lettered).

Over HTTP only Confluent's own "not found" answers (HTTP 404 with a JSON ``error_code`` such as
40403 "Schema not found") mean an unknown schema. Any other answer that is not the registry's
JSON (a 404 page of a wrong base path or a proxy, 401/403, a server error, a body that is not
JSON) is a :class:`RegistryUnavailableError`: counting such a 404 as unknown would dead-letter
every record of a misconfigured run.
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
    """The registry cannot be reached or did not answer as a schema registry (server error, wrong
    URL or base path, refused credentials, a body that is not its JSON): fail the run, retry later."""


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


# Confluent Schema Registry's error codes (JSON ``error_code`` of a 404) that mean "no such schema".
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403
_SNIPPET_CHARS = 200


def _one_line(text: str, limit: int = _SNIPPET_CHARS) -> str:
    """``text`` with its whitespace runs (newlines too) collapsed, cut to ``limit`` characters."""
    return " ".join(text.split())[:limit]


def _json_body(resp: requests.Response) -> Any:
    """The response body as JSON, or None when it is not JSON (an HTML or plain-text page)."""
    try:
        return resp.json()
    except ValueError:  # requests' JSONDecodeError
        return None


def _hint(status: int, code: object) -> str:
    """What an error status without a usable error code most likely means, for the message."""
    if code is not None:
        return f" error_code {code}"
    if status == 404:
        return " without a schema registry error code (wrong URL or base path?)"
    if status in (401, 403):
        return " (credentials missing or refused)"
    return ""


class HttpSchemaRegistry:
    """Client of Confluent Schema Registry's REST API."""

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._cache: dict[int, Schema] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              not_found: frozenset[int] = frozenset()) -> Any:
        """The JSON answer to ``method path``.

        Raises :class:`UnknownSchemaError` only for a 404 whose JSON ``error_code`` is in
        ``not_found``; :class:`RegistryError` when the registry refuses a write (409, 422 with its
        error code); :class:`RegistryUnavailableError` for anything else that is not a JSON success.
        """
        url = self.url + path
        try:
            resp = self._session.request(method, url, json=body, timeout=self.timeout_s,
                                         headers={"Content-Type": self._CONTENT_TYPE})
        except requests.RequestException as err:
            raise RegistryUnavailableError(
                f"schema registry {method} {url} unreachable: {_one_line(str(err))}") from err
        status = resp.status_code
        answer = _json_body(resp)
        code = answer.get("error_code") if isinstance(answer, dict) else None
        detail = _one_line(str(answer.get("message", "")) if isinstance(answer, dict) else resp.text)
        if status == 404 and code in not_found:
            raise UnknownSchemaError(f"schema registry {method} {url} answered HTTP 404 error_code {code}: {detail}")
        if status in (409, 422) and code is not None:
            raise RegistryError(f"schema registry rejected {method} {url}: HTTP {status} error_code {code}: {detail}")
        if status >= 400:
            raise RegistryUnavailableError(f"schema registry {method} {url} answered HTTP {status}"
                                           f"{_hint(status, code)}{': ' + detail if detail else ''}")
        if answer is None:
            raise RegistryUnavailableError(f"schema registry {method} {url} answered HTTP {status} with a body "
                                           f"that is not JSON (wrong URL or base path?): {detail}")
        return answer

    def _field(self, answer: Any, key: str, kind: type, method: str, path: str) -> Any:
        """``answer[key]`` if it is a ``kind``; an answer without it is not the registry's (wrong base path?)."""
        value = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RegistryUnavailableError(f"schema registry {method} {self.url + path} answered HTTP 200 without "
                                           f"a {kind.__name__} {key!r} (wrong URL or base path?): "
                                           f"{_one_line(str(answer))}")
        return value

    def register(self, subject: str, schema: Schema) -> int:
        path = f"/subjects/{subject}/versions"
        return int(self._field(self._call("POST", path, {"schema": canonical(schema)}), "id", int, "POST", path))

    def get_schema(self, schema_id: int) -> Schema:
        cached = self._cache.get(schema_id)
        if cached is None:
            path = f"/schemas/ids/{schema_id}"
            answer = self._call("GET", path, not_found=frozenset({SCHEMA_NOT_FOUND}))
            # Schema text that is not JSON (a Protobuf schema, say) raises ValueError: the record's problem.
            cached = json.loads(self._field(answer, "schema", str, "GET", path))
            self._cache[schema_id] = cached
        return cached

    def latest(self, subject: str) -> tuple[int, Schema]:
        path = f"/subjects/{subject}/versions/latest"
        answer = self._call("GET", path, not_found=frozenset({SUBJECT_NOT_FOUND, VERSION_NOT_FOUND}))
        schema_id = int(self._field(answer, "id", int, "GET", path))
        schema = json.loads(self._field(answer, "schema", str, "GET", path))
        self._cache[schema_id] = schema
        return schema_id, schema

    def subjects(self) -> list[str]:
        answer = self._call("GET", "/subjects")
        if not isinstance(answer, list):
            raise RegistryUnavailableError(f"schema registry GET {self.url}/subjects answered HTTP 200 without "
                                           f"a list of subjects (wrong URL or base path?): {_one_line(str(answer))}")
        return sorted(str(s) for s in answer)


def registry_from_settings(settings: Settings) -> SchemaRegistry:
    if settings.schema_registry_url:
        return HttpSchemaRegistry(settings.schema_registry_url, settings.schema_registry_timeout_s)
    settings.private_home()
    return LocalSchemaRegistry(settings.registry_dir)
