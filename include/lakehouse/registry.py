"""Schema registry behind one interface, with two backends.

* :class:`LocalSchemaRegistry`: a persistent SQLite store under ``LAKEHOUSE_HOME`` (embedded
  default). Ids are global and stable, the same schema text gets the same id in any subject,
  as in Confluent Schema Registry.
* :class:`HttpSchemaRegistry`: Confluent Schema Registry (production), through confluent-kafka's
  ``SchemaRegistryClient`` (basic auth, TLS with a private CA, mutual TLS; schemas cached by id).

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

import ast
import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka.schema_registry import RegisteredSchema, SchemaRegistryClient
from confluent_kafka.schema_registry import Schema as ClientSchema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from lakehouse.settings import ENV_PREFIX, Settings, SettingsError

try:  # the HTTP library the client uses: httpx2 when installed, else httpx (as confluent-kafka picks it)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed client's dependencies
    import httpx  # type: ignore[no-redef]

log = logging.getLogger(__name__)
T = TypeVar("T")

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
# A registry call makes at most 1 + MAX_RETRIES attempts; the client retries a connection failure
# and HTTP 408/429/500/502/503/504 (a stale keep-alive connection, a leader election) after a
# random wait of at most RETRY_WAIT_MS. The configured timeout is the budget of the whole call:
# each attempt gets timeout / (1 + MAX_RETRIES), so a registry that is down or hangs fails the
# call after about the configured timeout (plus at most RETRY_WAIT_MS), never later.
MAX_RETRIES = 1
RETRY_WAIT_MS = 100
# What the client puts before a body that is not JSON in a SchemaRegistryError (error code -1).
_UNKNOWN_BODY = "Unknown Schema Registry Error: "


def _one_line(text: str, limit: int = _SNIPPET_CHARS) -> str:
    """``text`` with its whitespace runs (newlines too) collapsed, cut to ``limit`` characters."""
    return " ".join(text.split())[:limit]


def _without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``: error messages name the registry, never its credentials."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _error_text(err: SchemaRegistryError) -> str:
    """The registry's message, or the body it answered when that was not JSON (the client keeps
    such a body as the repr of its bytes)."""
    message = str(err.error_message or "")
    if err.error_code == SchemaRegistryError.UNKNOWN and message.startswith(_UNKNOWN_BODY):
        try:
            body = ast.literal_eval(message[len(_UNKNOWN_BODY):])
        except (ValueError, SyntaxError):
            return message
        if isinstance(body, bytes):
            return body.decode("utf-8", "replace")
    return message


def _hint(status: int, code: int | None) -> str:
    """What an error status most likely means, for the message."""
    refused = " (credentials missing or refused)" if status in (401, 403) else ""
    if code is not None:
        return f" error_code {code}{refused}"
    if status == 404:
        return " without a schema registry error code (wrong URL or base path?)"
    return refused


def client_config(url: str, timeout_s: float, basic_auth_user_info: str = "", ssl_ca_location: str = "",
                  ssl_certificate_location: str = "", ssl_key_location: str = "") -> dict[str, Any]:
    """``SchemaRegistryClient``'s configuration: the given options that are set, and the retry policy."""
    conf: dict[str, Any] = {
        "url": url,
        "timeout": timeout_s / (1 + MAX_RETRIES),
        "max.retries": MAX_RETRIES,
        "retries.wait.ms": RETRY_WAIT_MS,
        "retries.max.wait.ms": RETRY_WAIT_MS,
    }
    optional = {"basic.auth.user.info": basic_auth_user_info, "ssl.ca.location": ssl_ca_location,
                "ssl.certificate.location": ssl_certificate_location, "ssl.key.location": ssl_key_location}
    conf.update({key: value for key, value in optional.items() if value})
    return conf


class HttpSchemaRegistry:
    """Confluent Schema Registry through confluent-kafka's ``SchemaRegistryClient``.

    The client caches schemas by id and registrations by subject and schema, so a Silver worker
    asks the registry once per schema id; :meth:`latest` always asks (a newer version may exist).
    Its errors become this module's: :class:`UnknownSchemaError` only for Confluent's own "not
    found" codes, :class:`RegistryError` for a refused write, :class:`RegistryUnavailableError`
    for everything else, in one line naming the method and URL.
    """

    def __init__(self, url: str, timeout_s: float = 10.0, *, basic_auth_user_info: str = "",
                 ssl_ca_location: str = "", ssl_certificate_location: str = "", ssl_key_location: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._shown = ", ".join(_without_userinfo(u.strip().rstrip("/")) for u in self.url.split(","))
        for key, path in (("ssl.ca.location", ssl_ca_location), ("ssl.certificate.location", ssl_certificate_location),
                          ("ssl.key.location", ssl_key_location)):
            if path and not Path(path).exists():
                raise SettingsError(f"schema registry {self._shown}: {key} {path!r} does not exist")
        self._conf = client_config(self.url, timeout_s, basic_auth_user_info, ssl_ca_location,
                                   ssl_certificate_location, ssl_key_location)
        self._client = self._new_client()

    @property
    def config(self) -> dict[str, Any]:
        """The client's configuration, the password masked."""
        return {k: ("***" if k == "basic.auth.user.info" else v) for k, v in self._conf.items()}

    def _new_client(self) -> SchemaRegistryClient:
        try:
            return SchemaRegistryClient(dict(self._conf))
        except (ValueError, TypeError, OSError) as err:  # a malformed option, an unreadable certificate or key
            raise SettingsError(f"schema registry {self._shown}: client configuration refused: "
                                f"{_one_line(str(err))}") from err

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _reset(self, why: str) -> None:
        """A fresh client: the old one cached an answer that was not the registry's (see :meth:`_bad_answer`)."""
        log.warning("schema registry client reset (%s)", why)
        try:
            fresh = self._new_client()
        except SettingsError as err:  # certificate files gone since: an outage here, not a bad record
            raise RegistryUnavailableError(f"schema registry {self._shown}: {err}") from err
        old, self._client = self._client, fresh
        old.close()

    def _target(self, method: str, path: str) -> str:
        return f"{method} {self._shown}{path}" if "," not in self._shown else f"{method} {path} on {self._shown}"

    def _call(self, method: str, path: str, call: Callable[[SchemaRegistryClient], T],
              not_found: frozenset[int] = frozenset()) -> T:
        """``call(client)``, its failures as this module's errors.

        Raises :class:`UnknownSchemaError` only for a 404 whose JSON ``error_code`` is in
        ``not_found``; :class:`RegistryError` when the registry refuses a write (409, 422 with its
        error code); :class:`RegistryUnavailableError` for anything else that is not a JSON success.
        """
        target = self._target(method, path)
        try:
            return call(self._client)
        except SchemaRegistryError as err:
            raise self._answer_error(target, err, not_found) from err
        except httpx.HTTPError as err:  # connection refused, DNS, TLS handshake, timeout, after the retry
            attempts = 1 + MAX_RETRIES
            raise RegistryUnavailableError(
                f"schema registry {target} unreachable after {attempts} attempts within {self.timeout_s:g} s: "
                f"{type(err).__name__}: {_one_line(str(err)) or 'no detail'}") from err
        except json.JSONDecodeError as err:  # a success status whose body is not JSON
            raise RegistryUnavailableError(f"schema registry {target} answered HTTP 2xx with a body that is not "
                                           f"JSON (wrong URL or base path?): {_one_line(str(err))}") from err
        except (ValueError, TypeError, KeyError, AttributeError) as err:  # JSON the client cannot read as an answer
            raise self._bad_answer(target, f"JSON that is not a schema registry answer: {_one_line(str(err))}") \
                from err

    def _answer_error(self, target: str, err: SchemaRegistryError, not_found: frozenset[int]) -> RegistryError:
        status = err.http_status_code
        code = err.error_code if isinstance(err.error_code, int) and err.error_code != err.UNKNOWN else None
        detail = _one_line(_error_text(err))
        if status == 404 and code in not_found:
            return UnknownSchemaError(f"schema registry {target} answered HTTP 404 error_code {code}: {detail}")
        if status in (409, 422) and code is not None:
            return RegistryError(f"schema registry rejected {target}: HTTP {status} error_code {code}: {detail}")
        return RegistryUnavailableError(f"schema registry {target} answered HTTP {status}{_hint(status, code)}"
                                        f"{': ' + detail if detail else ''}")

    def _bad_answer(self, target: str, what: str) -> RegistryUnavailableError:
        """A success that is not the registry's answer (a wrong base path's JSON, say). The client may
        have cached it under the schema id, so it is replaced: a fixed URL or registry is asked again."""
        self._reset(f"{target} answered {what}")
        return RegistryUnavailableError(f"schema registry {target} answered HTTP 2xx with {what} "
                                        f"(wrong URL or base path?)")

    def _schema_text(self, target: str, schema: ClientSchema) -> str:
        text = schema.schema_str
        if not isinstance(text, str):
            raise self._bad_answer(target, f"no str 'schema': {_one_line(repr(schema))}")
        return text

    def register(self, subject: str, schema: Schema) -> int:
        path = f"/subjects/{subject}/versions"
        registered: RegisteredSchema = self._call(
            "POST", path, lambda c: c.register_schema_full_response(subject, ClientSchema(canonical(schema), "AVRO")))
        schema_id = registered.schema_id
        if not isinstance(schema_id, int) or isinstance(schema_id, bool):
            raise self._bad_answer(self._target("POST", path), f"no int 'id': {_one_line(repr(registered))}")
        return schema_id

    def get_schema(self, schema_id: int) -> Schema:
        path = f"/schemas/ids/{schema_id}"
        found = self._call("GET", path, lambda c: c.get_schema(schema_id), frozenset({SCHEMA_NOT_FOUND}))
        # Schema text that is not JSON (a Protobuf schema, say) raises ValueError: the record's problem.
        return json.loads(self._schema_text(self._target("GET", path), found))

    def latest(self, subject: str) -> tuple[int, Schema]:
        path = f"/subjects/{subject}/versions/latest"
        target = self._target("GET", path)
        # get_version("latest") skips the client's cache: a version registered since is seen.
        registered = self._call("GET", path, lambda c: c.get_version(subject, "latest"),
                                frozenset({SUBJECT_NOT_FOUND, VERSION_NOT_FOUND}))
        schema_id = registered.schema_id
        if not isinstance(schema_id, int) or isinstance(schema_id, bool):
            raise self._bad_answer(target, f"no int 'id': {_one_line(repr(registered))}")
        return schema_id, json.loads(self._schema_text(target, registered.schema))

    def subjects(self) -> list[str]:
        answer = self._call("GET", "/subjects", lambda c: c.get_subjects())
        if not isinstance(answer, list) or not all(isinstance(s, str) for s in answer):
            raise self._bad_answer(self._target("GET", "/subjects"),
                                   f"no list of subjects: {_one_line(str(answer))}")
        return sorted(answer)


def registry_from_settings(settings: Settings) -> SchemaRegistry:
    """The remote registry when ``schema_registry_url`` is set, else the local store under the home."""
    if settings.schema_registry_url:
        user_info = settings.schema_registry_basic_auth_user_info
        if user_info and ":" not in user_info:
            raise SettingsError(f"{ENV_PREFIX}SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO must be 'user:password'")
        return HttpSchemaRegistry(
            settings.schema_registry_url, settings.schema_registry_timeout_s, basic_auth_user_info=user_info,
            ssl_ca_location=settings.schema_registry_ssl_ca_location,
            ssl_certificate_location=settings.schema_registry_ssl_certificate_location,
            ssl_key_location=settings.schema_registry_ssl_key_location)
    settings.private_home()
    return LocalSchemaRegistry(settings.registry_dir)
