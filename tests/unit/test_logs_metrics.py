"""Structured JSON logs and the StatsD client (plain StatsD, label values in the name)."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lakehouse.logs import configure_logging
from lakehouse.metrics import (COUNTER, GAUGE, METRICS, TIMER, MetricError, Sample, StatsD, dotted_name, parse_line,
                               safe_label_value)

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1 standing in for statsd-exporter."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


def _client(receiver: socket.socket, *, strict: bool = True) -> StatsD:
    return StatsD("127.0.0.1", receiver.getsockname()[1], "lakehouse", strict=strict)


def _lines(datagram: bytes) -> list[tuple[str, str, str]]:
    """(name, value, type) of each line of one datagram."""
    out = []
    for line in datagram.decode("ascii").split("\n"):
        name, rest = line.split(":", 1)
        value, kind = rest.split("|")
        out.append((name, value, kind))
    return out


def test_statsd_lines_reach_a_udp_listener(receiver: socket.socket) -> None:
    """Each call is one datagram with the exact name (label values in declared order), value and type."""
    client = _client(receiver)
    try:
        client.incr("bronze.records", 42, tags={"exchange": "kraken"})
        client.gauge("bronze.lag", 0, tags={"partition": 3, "exchange": "kraken"})  # not the declared order
        client.timing("gold.run_ms", 1500)
        client.incr("silver.records_dead_lettered", 3, {"error_type": "decode_error", "exchange": "binance"})
        client.gauge("monitor.producer_idle_seconds", 12.5, {"exchange": "binance", "topic": "trades.binance"})
        client.gauge("gold.min_event_lag_s", -2.5, {"source": "binance"})  # a negative gauge is set, not added
        received = [receiver.recv(1024) for _ in range(6)]
    finally:
        client.close()
    assert [_lines(d) for d in received] == [
        [("lakehouse.bronze.records.kraken", "42", "c")],
        [("lakehouse.bronze.lag.kraken.3", "0", "g")],
        [("lakehouse.gold.run_ms", "1500.000000", "ms")],
        [("lakehouse.silver.records_dead_lettered.binance.decode_error", "3", "c")],
        [("lakehouse.monitor.producer_idle_seconds.binance.trades_binance", "12.5", "g")],
        [("lakehouse.gold.min_event_lag_s.binance", "0", "g"), ("lakehouse.gold.min_event_lag_s.binance", "-2.5", "g")],
    ]
    assert received[0] == b"lakehouse.bronze.records.kraken:42|c"


def test_tags_that_are_not_the_metrics_labels_are_a_clear_error() -> None:
    with pytest.raises(MetricError, match=r"'bronze.records' takes the tags \['exchange'\].*unknown: \['layer'\]"):
        dotted_name("bronze.records", "counter", {"exchange": "kraken", "layer": "bronze"})
    with pytest.raises(MetricError, match=r"missing: \['status'\]"):
        dotted_name("bronze.runs", "counter", {"exchange": "kraken"})
    with pytest.raises(MetricError, match="not declared"):
        dotted_name("bronze.recrods", "counter", {"exchange": "kraken"})
    with pytest.raises(MetricError, match="is a gauge, not a counter"):
        dotted_name("bronze.lag", "counter", {"exchange": "kraken", "partition": 0})


def test_a_wrong_metric_raises_when_strict_and_is_logged_and_dropped_otherwise(
        receiver: socket.socket, caplog: pytest.LogCaptureFixture) -> None:
    strict = _client(receiver)
    lenient = _client(receiver, strict=False)
    try:
        with pytest.raises(MetricError):
            strict.incr("bronze.records", 1, {"exchange": "kraken", "extra": "x"})
        with caplog.at_level(logging.ERROR, logger="lakehouse.metrics"):
            lenient.incr("bronze.records", 1, {"exchange": "kraken", "extra": "x"})
        lenient.incr("bronze.records", 2, {"exchange": "kraken"})
        assert receiver.recv(1024) == b"lakehouse.bronze.records.kraken:2|c"  # the wrong ones sent nothing
    finally:
        strict.close()
        lenient.close()
    assert any("metric dropped" in r.getMessage() and "extra" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("value", "part"), [
    ("binance", "binance"), ("trades.binance", "trades_binance"), ("a:b|c@d#e", "a_b_c_d_e"),
    ("k=v,w", "k_v_w"), ("dags-folder", "dags-folder"), ("two words\n", "two_words_"), ("café", "caf_"),
    ("", "_"), (7, "7"), (True, "True"),
])
def test_label_values_become_one_safe_dotted_part(value: object, part: str) -> None:
    assert safe_label_value(value) == part


def test_every_declared_metric_name_is_plain_ascii_parts() -> None:
    for name, spec in METRICS.items():
        assert all(p and p.replace("_", "").isalnum() and p.isascii() for p in name.split(".")), name
        assert len(set(spec.labels)) == len(spec.labels), name


def test_every_declared_metric_reads_back_from_its_line() -> None:
    """parse_line is the inverse of what is sent, for every metric (what tests of the jobs read)."""
    for name, spec in METRICS.items():
        tags = {label: f"{label}.v" for label in reversed(spec.labels)}
        code = {"counter": "c", "gauge": "g", "timer": "ms"}[spec.kind]
        line = f"lakehouse.{dotted_name(name, spec.kind, tags)}:2.5|{code}"
        assert parse_line(line, "lakehouse") == Sample(name, {k: f"{k}_v" for k in spec.labels}, 2.5, spec.kind)
    with pytest.raises(MetricError, match="not a metric"):
        parse_line("lakehouse.bronze.records.kraken.extra:1|c", "lakehouse")
    with pytest.raises(MetricError, match="not a lakehouse"):
        parse_line("airflow.ti.start:1|c", "lakehouse")


def test_statsd_never_fails_without_a_receiver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = StatsD("127.0.0.1", port, "x", strict=True)
    for _ in range(3):
        client.incr("gold.rows_in", 1, {"source": "kraken"})
    client.close()
    client.gauge("gold.failed_sources", 1)  # after close: dropped, not an error


def test_an_unresolvable_host_disables_metrics_instead_of_failing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lakehouse.metrics"):
        client = StatsD("statsd.invalid", 8125, "lakehouse", strict=True)
    client.timing("gold.run_ms", 5)
    client.close()
    assert any("metrics are not sent" in r.getMessage() for r in caplog.records)


def test_a_prefix_that_is_not_a_dotted_name_is_refused() -> None:
    with pytest.raises(ValueError, match="prefix"):
        StatsD("127.0.0.1", 8125, "lake house")


# --- every call site sends a declared metric with its declared tags --------------------------------
# MetricError only shows when a call runs; this reads the sources so a caller that sends an
# undeclared metric or another tag set fails here, even on a path no fast test runs.
_METHODS = {"incr": COUNTER, "gauge": GAUGE, "timing": TIMER}


@dataclass(frozen=True)
class CallSite:
    where: str
    kind: str
    names: tuple[str, ...]  # declared metrics the name expression can be
    tags: frozenset[str] | None  # None: built at run time (e.g. a figure's labels), not checked here


def _constants(tree: ast.Module) -> dict[str, str]:
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name)}


def _name_pattern(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.Name) and node.id in constants:
        return re.escape(constants[node.id])
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else
                       (re.escape(constants[v.value.id]) if isinstance(v, ast.FormattedValue)
                        and isinstance(v.value, ast.Name) and v.value.id in constants else r"[a-z_]+")
                       for v in node.values)
    return None


def _tag_keys(node: ast.expr | None, local_dicts: dict[str, ast.Dict]) -> frozenset[str] | None:
    if node is None:
        return frozenset()
    if isinstance(node, ast.Name) and node.id in local_dicts:
        return _tag_keys(local_dicts[node.id], local_dicts)
    if not isinstance(node, ast.Dict):
        return None
    keys: set[str] = set()
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:  # {**other, ...}
            inner = _tag_keys(value, local_dicts)
            if inner is None:
                return None
            keys |= inner
        elif isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
        else:
            return None
    return frozenset(keys)


def call_sites(source: str, where: str) -> list[CallSite]:
    """The metric sends (``<x>statsd.incr(...)``, ``metrics.gauge(...)``...) of one module."""
    tree = ast.parse(source)
    constants, out = _constants(tree), []
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
        local_dicts = {t.id: n.value for n in ast.walk(func) if isinstance(n, ast.Assign)
                       and isinstance(n.value, ast.Dict) for t in n.targets if isinstance(t, ast.Name)}
        for call in [n for n in ast.walk(func) if isinstance(n, ast.Call)]:
            target = call.func
            if not (isinstance(target, ast.Attribute) and target.attr in _METHODS and call.args):
                continue
            receiver = ast.unparse(target.value)
            if not re.search(r"(statsd|metrics)$", receiver):
                continue
            pattern = _name_pattern(call.args[0], constants)
            line = f"{where}:{call.lineno}"
            assert pattern is not None, f"{line}: metric name {ast.unparse(call.args[0])} cannot be read"
            names = tuple(n for n in METRICS if re.fullmatch(pattern, n))
            tags_node = call.args[2] if len(call.args) > 2 else next(
                (k.value for k in call.keywords if k.arg == "tags"), None)
            out.append(CallSite(line, _METHODS[target.attr], names, _tag_keys(tags_node, local_dicts)))
    return out


def _check(site: CallSite) -> list[str]:
    if not site.names:
        return [f"{site.where}: sends a metric not declared in lakehouse.metrics.METRICS"]
    errors = []
    for name in site.names:
        spec = METRICS[name]
        if spec.kind != site.kind:
            errors.append(f"{site.where}: {name} is a {spec.kind}, sent as a {site.kind}")
        if site.tags is not None and site.tags != set(spec.labels):
            errors.append(f"{site.where}: {name} takes the tags {list(spec.labels)}, sent with {sorted(site.tags)}")
    return errors


def test_every_call_site_sends_a_declared_metric_with_its_tags() -> None:
    sites = [site for folder in ("include", "dags", "plugins", "spark_jobs")
             for path in sorted((REPO / folder).rglob("*.py")) if path.name != "metrics.py"
             for site in call_sites(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert len(sites) >= 30, f"the scan found only {len(sites)} metric sends"
    errors = [error for site in sites for error in _check(site)]
    assert not errors, "\n".join(errors)
    sent = {name for site in sites for name in site.names}
    assert sent == set(METRICS), f"declared but never sent: {sorted(set(METRICS) - sent)}"


def test_the_call_site_check_sees_wrong_tags_names_and_types() -> None:
    source = """
METRIC = "silver"
def report(statsd, metrics, exchange, other):
    tags = {"exchange": exchange}
    statsd.incr(f"{METRIC}.records_read", 1, tags)
    statsd.incr(f"{METRIC}.records_read", 1, {**tags, "layer": "silver"})
    metrics.gauge("bronze.runs", 1, tags={**tags, "status": "ok"})
    statsd.timing("gold.nonexistent_ms", 5)
    statsd.gauge(f"monitor.{other}", 1, dict(other))
"""
    errors = [error for site in call_sites(source, "x.py") for error in _check(site)]
    assert errors == ["x.py:6: silver.records_read takes the tags ['exchange'], sent with ['exchange', 'layer']",
                      "x.py:7: bronze.runs is a counter, sent as a gauge",
                      "x.py:8: sends a metric not declared in lakehouse.metrics.METRICS"]
