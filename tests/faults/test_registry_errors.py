"""Schema registry errors: only Confluent's own "not found" answers make a schema unknown (its
records are dead-lettered); a wrong base path, a proxy's page, refused credentials, a server error
or a body that is not the registry's JSON fail the Silver run and dead-letter nothing."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import ClassVar
from urllib.parse import urlsplit

import pyarrow as pa
import pytest

from support import free_port
from local_checks import http_server
from lakehouse import avro, names
from lakehouse.registry import (
    HttpSchemaRegistry,
    LocalSchemaRegistry,
    RegistryUnavailableError,
    UnknownSchemaError,
    canonical,
    registry_from_settings,
)
from lakehouse.settings import Settings
from lakehouse.silver.decode import Decoder, decode_batch
from lakehouse.silver.synthetic import bronze_frame, trade

pytestmark = [pytest.mark.fault]

EX = "binance"
BASE = "/registry"  # where the fake registry serves its API; anything else is the web server's 404 page
JSON_TYPE = "application/vnd.schemaregistry.v1+json"
HTML_404 = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n"
            b"<body>\r\n<h1>Not Found</h1>\r\n</body>\r\n</html>\r\n")
Answer = tuple[int, str, bytes]  # status, content type, body


def confluent_error(status: int, code: int, message: str) -> Answer:
    return status, JSON_TYPE, json.dumps({"error_code": code, "message": message}).encode()


class FakeRegistry(BaseHTTPRequestHandler):
    """A web server with a schema registry under :data:`BASE`.

    ``answers`` fixes the answer to a path; under :data:`BASE` schema lookups are served from
    ``store`` as Confluent does (40403 for an unknown id); every other path gets the server's
    plain HTML 404 page, which is what a wrong base path or a proxy answers.
    """

    answers: ClassVar[dict[str, Answer]] = {}
    store: ClassVar[LocalSchemaRegistry | None] = None

    def _send(self, answer: Answer) -> None:
        status, content_type, body = answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        prefix = f"{BASE}/schemas/ids/"
        path = urlsplit(self.path).path  # the client adds query parameters (?deleted=False, ...)
        if path in self.answers:
            self._send(self.answers[path])
        elif self.store is not None and path.startswith(prefix):
            schema_id = int(path[len(prefix):])
            try:
                schema = self.store.get_schema(schema_id)
            except UnknownSchemaError:
                self._send(confluent_error(404, 40403, "Schema not found"))
                return
            self._send((200, JSON_TYPE, json.dumps({"schema": canonical(schema)}).encode()))
        else:
            self._send((404, "text/html", HTML_404))

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(answers: dict[str, Answer] | None = None, store: LocalSchemaRegistry | None = None) -> Iterator[str]:
    """A :class:`FakeRegistry` on a free port in a thread; yields its root URL (no base path)."""
    handler = type("Handler", (FakeRegistry,), {"answers": answers or {}, "store": store})
    with http_server(handler) as root:
        yield root


def test_confluent_schema_not_found_40403_is_an_unknown_schema_and_its_record_is_dead_lettered() -> None:
    with serving({f"{BASE}/schemas/ids/7": confluent_error(404, 40403, "Schema 7 not found")}) as root:
        registry = HttpSchemaRegistry(root + BASE)
        with pytest.raises(UnknownSchemaError, match="40403"):
            registry.get_schema(7)
        value = avro.encode(7, avro.parsed_trade_schema(), trade(1, 1_767_225_600_000_000))
        out = decode_batch(pa.RecordBatch.from_arrays([pa.array([value], pa.binary())], names=["value"]),
                           Decoder(registry))
    assert out.column("decode_error_type").to_pylist() == ["unknown_schema_id"]


@pytest.mark.parametrize(("answer", "shown"), [
    pytest.param((404, "text/html", HTML_404), "HTTP 404 without a schema registry error code", id="html-404-page"),
    pytest.param((404, "text/plain", b"404 page not found\n"), "HTTP 404 without a schema registry error code",
                 id="plain-404"),
    pytest.param((404, "application/json", b'{"message": "no route"}'), "HTTP 404 without a schema registry",
                 id="json-404-without-error-code"),
    pytest.param(confluent_error(401, 401, "Unauthorized"),
                 "HTTP 401 error_code 401 (credentials missing or refused): Unauthorized", id="401"),
    pytest.param((403, "text/plain", b"Forbidden"), "HTTP 403 (credentials missing or refused): Forbidden",
                 id="403"),
    pytest.param(confluent_error(500, 50001, "Error in the backend datastore"), "HTTP 500 error_code 50001",
                 id="500"),
    pytest.param((502, "text/html", b"<html><body>\nBad Gateway\n</body></html>"), "HTTP 502: <html>", id="502"),
    pytest.param((200, "text/html", b"<html>\n<body>Welcome</body>\n</html>"), "HTTP 2xx with a body that is not JSON",
                 id="200-not-json"),
    pytest.param((200, "application/json", b'{"status": "UP"}'), "HTTP 2xx with no str 'schema'",
                 id="200-other-json"),
    pytest.param((200, "application/json", b'["a", "list"]'), "HTTP 2xx with JSON that is not a schema registry answer",
                 id="200-json-list"),
])
def test_any_other_answer_is_an_outage_named_in_one_line(answer: Answer, shown: str) -> None:
    with serving({f"{BASE}/schemas/ids/7": answer}) as root:
        with pytest.raises(RegistryUnavailableError) as caught:
            HttpSchemaRegistry(root + BASE).get_schema(7)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert f"GET {root}{BASE}/schemas/ids/7 answered " in message
    assert shown in message


def test_a_wrong_base_path_fails_decoding_instead_of_dead_lettering() -> None:
    with serving() as root:  # the registry lives under BASE; the URL lacks it
        registry = HttpSchemaRegistry(root)
        value = avro.encode(1, avro.parsed_trade_schema(), trade(1, 1_767_225_600_000_000))
        batch = pa.RecordBatch.from_arrays([pa.array([value], pa.binary())], names=["value"])
        with pytest.raises(RegistryUnavailableError, match=r"GET http://127\.0\.0\.1:\d+/schemas/ids/1 answered "
                                                            r"HTTP 404 without a schema registry error code"):
            decode_batch(batch, Decoder(registry))


@pytest.mark.parametrize(("answer", "unknown"), [
    pytest.param(confluent_error(404, 40401, "Subject 'x-value' not found."), True, id="40401-subject"),
    pytest.param(confluent_error(404, 40402, "Version 9 not found."), True, id="40402-version"),
    pytest.param((404, "text/html", HTML_404), False, id="html-404-page"),
    pytest.param(confluent_error(503, 50003, "Error while forwarding the request to the leader"), False, id="503"),
])
def test_subject_lookups_count_only_subject_or_version_not_found_as_unknown(answer: Answer, unknown: bool) -> None:
    with serving({f"{BASE}/subjects/x-value/versions/latest": answer}) as root:
        with pytest.raises(UnknownSchemaError if unknown else RegistryUnavailableError):
            HttpSchemaRegistry(root + BASE).latest("x-value")


def test_an_unreachable_registry_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}{BASE}"
    with pytest.raises(RegistryUnavailableError) as caught:
        HttpSchemaRegistry(url, timeout_s=2).get_schema(3)
    assert f"GET {url}/schemas/ids/3 unreachable after 2 attempts within 2 s: " in str(caught.value)
    assert "\n" not in str(caught.value)


def test_credentials_in_the_url_are_not_shown() -> None:
    port = free_port()
    with pytest.raises(RegistryUnavailableError) as caught:
        HttpSchemaRegistry(f"http://user:s3cret@127.0.0.1:{port}{BASE}", timeout_s=2).get_schema(3)
    assert f"GET http://127.0.0.1:{port}{BASE}/schemas/ids/3 unreachable" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.integration
def test_a_silver_run_against_a_wrong_registry_base_path_fails_and_writes_nothing(isolated: Settings) -> None:
    from lakehouse.silver.job import run
    from lakehouse.spark import session

    spark = session(isolated, "registry-errors-test")
    store = registry_from_settings(isolated)
    assert isinstance(store, LocalSchemaRegistry)
    sid = store.register(names.value_subject(names.topic(isolated, EX)), avro.load_schema())
    now = dt.datetime.now(dt.timezone.utc)
    at_us = int(now.timestamp() * 1_000_000) - 1_000_000
    values = [avro.encode(sid, avro.parsed_trade_schema(), trade(i, at_us)) for i in range(3)]
    values.append(avro.encode(sid + 100, avro.parsed_trade_schema(), trade(3, at_us)))  # an id never registered
    bronze_frame(spark, values, names.topic(isolated, EX), now).coalesce(1) \
        .writeTo(names.qualified(isolated, names.bronze_table(EX))).append()

    def rows(table: str) -> list[dict[str, object]]:
        return [r.asDict() for r in spark.table(names.qualified(isolated, table)).collect()]

    with serving(store=store) as root:
        wrong = isolated.replace(schema_registry_url=root, schema_registry_timeout_s=5.0)
        with pytest.raises(RegistryUnavailableError) as caught:
            run(spark, wrong, EX)
        message = str(caught.value)
        assert "\n" not in message
        assert f"GET {root}/schemas/ids/{sid} answered HTTP 404 without a schema registry error code" in message
        assert rows(names.silver_table(EX)) == [] and rows(names.DLQ_TABLE) == []

        right = wrong.replace(schema_registry_url=root + BASE)
        summary = run(spark, right, EX)  # the same batch, now with the registry's base path

    assert summary.read == 4 and summary.valid == 3 and summary.dead_lettered == {"unknown_schema_id": 1}
    assert sorted(r["trade_id"] for r in rows(names.silver_table(EX))) == ["0", "1", "2"]
    assert [r["error_type"] for r in rows(names.DLQ_TABLE)] == ["unknown_schema_id"]
