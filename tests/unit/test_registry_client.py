"""The remote schema registry path (confluent-kafka's SchemaRegistryClient) against a real local
HTTP(S) server speaking the endpoints the client calls: settings mapped to the client, basic auth,
TLS with a private CA and mutual TLS, the schema-by-id cache, and an outage within the timeout."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from local_checks import http_server

from lakehouse import avro
from lakehouse.registry import (
    MAX_RETRIES,
    RETRY_WAIT_MS,
    HttpSchemaRegistry,
    RegistryUnavailableError,
    UnknownSchemaError,
    registry_from_settings,
)
from lakehouse.settings import Settings, SettingsError, load_settings

SCHEMA = avro.load_schema()
SUBJECT = "crypto.trades.binance-value"
JSON_TYPE = "application/vnd.schemaregistry.v1+json"
USER, PASSWORD = "lakehouse", "s3cret:with-colon"


@dataclass
class Registry:
    """State of the fake registry: schemas by id, subjects' versions, and every request it got."""

    credentials: tuple[str, str] | None = None
    schemas: dict[int, str] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path without query)
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)  # path -> (status, JSON) served once
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return self.requests.count((method, path))


class Handler(BaseHTTPRequestHandler):
    """Confluent Schema Registry's endpoints that SchemaRegistryClient calls for this project."""

    registry: Registry

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        expected = self.registry.credentials
        if expected is None:
            return True
        token = base64.b64encode(f"{expected[0]}:{expected[1]}".encode()).decode()
        return self.headers.get("Authorization") == f"Basic {token}"

    def _handle(self, method: str) -> None:
        reg = self.registry
        path = urlsplit(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with reg.lock:
            reg.requests.append((method, path))
        if not self._authorized():
            self._reply(401, {"error_code": 401, "message": "Unauthorized"})
            return
        if path in reg.answers:
            self._reply(*reg.answers.pop(path))
            return
        parts = [unquote(p) for p in path.strip("/").split("/")]
        with reg.lock:
            if method == "POST" and len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                text = json.loads(body)["schema"]
                known = [i for i, s in reg.schemas.items() if s == text]
                schema_id = known[0] if known else len(reg.schemas) + 1
                reg.schemas[schema_id] = text
                ids = reg.versions.setdefault(parts[1], [])
                if schema_id not in ids:
                    ids.append(schema_id)
                answer: tuple[int, Any] = (200, {"id": schema_id})
            elif method == "GET" and parts[:2] == ["schemas", "ids"] and int(parts[2]) in reg.schemas:
                answer = (200, {"schema": reg.schemas[int(parts[2])]})
            elif method == "GET" and parts[:2] == ["schemas", "ids"]:
                answer = (404, {"error_code": 40403, "message": "Schema not found"})
            elif method == "GET" and parts == ["subjects"]:
                answer = (200, list(reg.versions))
            elif method == "GET" and len(parts) == 4 and parts[0] == "subjects" and parts[3] == "latest":
                ids = reg.versions.get(parts[1])
                answer = ((200, {"subject": parts[1], "version": len(ids), "id": ids[-1],
                                 "schema": reg.schemas[ids[-1]]}) if ids else
                          (404, {"error_code": 40401, "message": f"Subject '{parts[1]}' not found."}))
            else:
                answer = (404, {"error_code": 404, "message": "HTTP 404 Not Found"})
        self._reply(*answer)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self._handle("POST")

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(registry: Registry, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """``registry`` served on a free local port in a thread (HTTPS with ``tls``); yields the root URL."""
    with http_server(type("BoundHandler", (Handler,), {"registry": registry}), tls) as root:
        yield root


def remote_settings(tmp_path: Path, url: str, **extra: str) -> Settings:
    """Settings from exactly these variables (the remote registry needs no home, broker or port)."""
    return load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home"), "LAKEHOUSE_SCHEMA_REGISTRY_URL": url, **extra})


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_settings_map_to_the_client_and_only_what_is_set(tmp_path: Path, pki: Pki) -> None:
    policy = {"max.retries": MAX_RETRIES, "retries.wait.ms": RETRY_WAIT_MS, "retries.max.wait.ms": RETRY_WAIT_MS}
    bare = registry_from_settings(remote_settings(tmp_path, "http://127.0.0.1:1",
                                                  LAKEHOUSE_SCHEMA_REGISTRY_TIMEOUT_S="4"))
    assert isinstance(bare, HttpSchemaRegistry)
    assert bare.config == {"url": "http://127.0.0.1:1", "timeout": 4 / (1 + MAX_RETRIES), **policy}
    full = registry_from_settings(remote_settings(
        tmp_path, "https://sr.example:8081", LAKEHOUSE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=f"{USER}:{PASSWORD}",
        LAKEHOUSE_SCHEMA_REGISTRY_SSL_CA_LOCATION=str(pki.ca),
        LAKEHOUSE_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION=str(pki.client_cert),
        LAKEHOUSE_SCHEMA_REGISTRY_SSL_KEY_LOCATION=str(pki.client_key)))
    assert isinstance(full, HttpSchemaRegistry)
    assert full.config == {"url": "https://sr.example:8081", "timeout": 10.0 / (1 + MAX_RETRIES), **policy,
                           "basic.auth.user.info": "***", "ssl.ca.location": str(pki.ca),
                           "ssl.certificate.location": str(pki.client_cert), "ssl.key.location": str(pki.client_key)}


def test_unusable_client_settings_are_one_line_setting_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO must be 'user:password'"):
        registry_from_settings(remote_settings(tmp_path, "http://127.0.0.1:1",
                                               LAKEHOUSE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO="no-colon"))
    missing = str(tmp_path / "missing-ca.pem")
    with pytest.raises(SettingsError, match=f"ssl.ca.location '{missing}' does not exist"):
        registry_from_settings(remote_settings(tmp_path, "https://127.0.0.1:1",
                                               LAKEHOUSE_SCHEMA_REGISTRY_SSL_CA_LOCATION=missing))
    with pytest.raises(SettingsError, match="client configuration refused: Invalid url"):
        HttpSchemaRegistry("127.0.0.1:8081")


def test_the_remote_path_round_trips_with_basic_auth(tmp_path: Path) -> None:
    registry = Registry(credentials=(USER, PASSWORD))
    with serving(registry) as root:
        reg = registry_from_settings(remote_settings(
            tmp_path, root, LAKEHOUSE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=f"{USER}:{PASSWORD}"))
        schema_id = reg.register(SUBJECT, SCHEMA)
        assert reg.get_schema(schema_id) == SCHEMA
        assert reg.latest(SUBJECT) == (schema_id, SCHEMA)
        assert reg.subjects() == [SUBJECT]
        with pytest.raises(UnknownSchemaError, match="40403"):
            reg.get_schema(12345)
        with pytest.raises(UnknownSchemaError, match="40401"):
            reg.latest("missing-value")
    assert registry.schemas == {schema_id: json.dumps(SCHEMA, sort_keys=True, separators=(",", ":"))}


@pytest.mark.parametrize("user_info", [pytest.param("", id="missing"), pytest.param(f"{USER}:wrong", id="wrong")])
def test_missing_or_wrong_credentials_are_one_clear_line(tmp_path: Path, user_info: str) -> None:
    registry = Registry(credentials=(USER, PASSWORD))
    with serving(registry) as root:
        reg = registry_from_settings(remote_settings(
            tmp_path, root, LAKEHOUSE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=user_info))
        with pytest.raises(RegistryUnavailableError) as caught:
            reg.get_schema(1)
    message = str(caught.value)
    assert message == (f"schema registry GET {root}/schemas/ids/1 answered HTTP 401 error_code 401 "
                       f"(credentials missing or refused): Unauthorized")
    assert "wrong" not in message and PASSWORD not in message
    assert registry.count("GET", "/schemas/ids/1") == 1  # a refusal is not retried


def test_a_schema_id_is_fetched_from_the_server_once(tmp_path: Path) -> None:
    registry = Registry()
    with serving(registry) as root:
        writer = HttpSchemaRegistry(root)
        schema_id = writer.register(SUBJECT, SCHEMA)
        reader = registry_from_settings(remote_settings(tmp_path, root))
        assert [reader.get_schema(schema_id) for _ in range(3)] == [SCHEMA] * 3
        assert registry.count("GET", f"/schemas/ids/{schema_id}") == 1
        with pytest.raises(UnknownSchemaError):
            reader.get_schema(999)
        with pytest.raises(UnknownSchemaError):  # an unknown id is asked again: it may be registered since
            reader.get_schema(999)
        assert registry.count("GET", "/schemas/ids/999") == 2
        reader.latest(SUBJECT)
        reader.latest(SUBJECT)  # "latest" is never cached: a newer version may exist
        assert registry.count("GET", f"/subjects/{SUBJECT}/versions/latest") == 2


def test_an_answer_that_is_not_the_registrys_is_not_cached(tmp_path: Path) -> None:
    registry = Registry()
    with serving(registry) as root:
        schema_id = HttpSchemaRegistry(root).register(SUBJECT, SCHEMA)
        registry.answers[f"/schemas/ids/{schema_id}"] = (200, {"status": "UP"})  # a proxy's answer, once
        reader = HttpSchemaRegistry(root)
        with pytest.raises(RegistryUnavailableError, match=r"answered HTTP 2xx with no str 'schema'"):
            reader.get_schema(schema_id)
        assert reader.get_schema(schema_id) == SCHEMA  # asked again, not served from the cache
    assert registry.count("GET", f"/schemas/ids/{schema_id}") == 2


@contextmanager
def hanging_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts connections and never answers; yields its URL and the connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_a_hanging_registry_fails_within_the_configured_timeout_after_one_retry(tmp_path: Path) -> None:
    with hanging_server() as (root, connections):
        reg = registry_from_settings(remote_settings(tmp_path, root, LAKEHOUSE_SCHEMA_REGISTRY_TIMEOUT_S="1.0"))
        started = time.monotonic()
        with pytest.raises(RegistryUnavailableError) as caught:
            reg.get_schema(3)
        elapsed = time.monotonic() - started
        assert len(connections) == 1 + MAX_RETRIES
    assert 0.9 <= elapsed <= 1.0 + RETRY_WAIT_MS / 1000 + 0.4
    message = str(caught.value)
    assert message.startswith(f"schema registry GET {root}/schemas/ids/3 unreachable after 2 attempts within 1 s: "
                              "ReadTimeout") and "\n" not in message


def test_a_refused_connection_fails_at_once_naming_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as caught:
        HttpSchemaRegistry(url, timeout_s=30).register(SUBJECT, SCHEMA)
    assert time.monotonic() - started < 2
    assert str(caught.value).startswith(f"schema registry POST {url}/subjects/{SUBJECT}/versions unreachable "
                                        "after 2 attempts within 30 s: ConnectError: ")


# --- TLS: a private CA, a server certificate for 127.0.0.1, a client certificate -----------------

@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(directory: Path, name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
           server: bool) -> tuple[Path, Path, x509.Name, ec.EllipticCurvePrivateKey]:
    """A certificate (and its key) named ``name``: self-signed CA without ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if issuer is None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    elif server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, subject, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, _, ca_name, ca_key = _issue(directory, "test-ca", None, server=False)
    server_cert, server_key, _, _ = _issue(directory, "registry", (ca_name, ca_key), server=True)
    client_cert, client_key, _, _ = _issue(directory, "lakehouse-client", (ca_name, ca_key), server=False)
    return Pki(ca, server_cert, server_key, client_cert, client_key)


def server_tls(pki: Pki, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca)
    return ctx


def test_tls_with_a_private_ca_needs_its_ca_location(tmp_path: Path, pki: Pki) -> None:
    registry = Registry()
    with serving(registry, server_tls(pki, require_client_cert=False)) as root:
        trusting = registry_from_settings(remote_settings(
            tmp_path, root, LAKEHOUSE_SCHEMA_REGISTRY_SSL_CA_LOCATION=str(pki.ca)))
        schema_id = trusting.register(SUBJECT, SCHEMA)
        assert trusting.get_schema(schema_id) == SCHEMA
        with pytest.raises(RegistryUnavailableError, match=r"unreachable .*CERTIFICATE_VERIFY_FAILED"):
            registry_from_settings(remote_settings(tmp_path, root)).get_schema(schema_id)  # the system's CAs


def test_mutual_tls_sends_the_client_certificate(tmp_path: Path, pki: Pki) -> None:
    registry = Registry()
    with serving(registry, server_tls(pki, require_client_cert=True)) as root:
        with_cert = registry_from_settings(remote_settings(
            tmp_path, root, LAKEHOUSE_SCHEMA_REGISTRY_SSL_CA_LOCATION=str(pki.ca),
            LAKEHOUSE_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION=str(pki.client_cert),
            LAKEHOUSE_SCHEMA_REGISTRY_SSL_KEY_LOCATION=str(pki.client_key)))
        assert with_cert.get_schema(with_cert.register(SUBJECT, SCHEMA)) == SCHEMA
        without = registry_from_settings(remote_settings(
            tmp_path, root, LAKEHOUSE_SCHEMA_REGISTRY_SSL_CA_LOCATION=str(pki.ca)))
        with pytest.raises(RegistryUnavailableError, match="unreachable"):
            without.get_schema(1)
