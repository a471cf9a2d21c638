"""Structured JSON logs and the StatsD client."""

from __future__ import annotations

import io
import json
import logging
import socket

from lakehouse.logs import configure_logging
from lakehouse.metrics import StatsD


def test_json_log_lines_carry_extra_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", json_logs=True, stream=stream)
    try:
        logging.getLogger("lakehouse.test").info("batch %s done", 7, extra={"rows": 12, "offsets": {"0": 5}})
        logging.getLogger("lakehouse.test").debug("hidden")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["msg"] == "batch 7 done" and record["level"] == "INFO" and record["logger"] == "lakehouse.test"
    assert record["rows"] == 12 and record["offsets"] == {"0": 5}


def test_statsd_lines_reach_a_udp_listener() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        client = StatsD("127.0.0.1", sock.getsockname()[1], "lakehouse")
        try:
            client.incr("bronze.records", 42, tags={"exchange": "kraken"})
            client.gauge("bronze.lag", 0)
            assert sock.recv(1024) == b"lakehouse.bronze.records:42|c|#exchange:kraken"
            assert sock.recv(1024) == b"lakehouse.bronze.lag:0|g"
        finally:
            client.close()


def test_statsd_never_fails_without_a_receiver() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = StatsD("127.0.0.1", port, "x")
    for _ in range(3):
        client.incr("nobody.listens")
    client.close()
