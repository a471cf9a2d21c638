"""Every metric the dashboard and the alert rules read is one the pipeline actually produces.

A dashboard panel or an alert on a misspelt or renamed metric shows "no data" and never fires,
silently. So the StatsD metric contract (what the lakehouse jobs, the pipeline_monitor DAG and
Airflow send) is written down once, in :data:`CONTRACT`; the statsd-exporter mapping is applied to
it the way the exporter applies it; and every metric name in the dashboard's queries and the
rules' expressions must be among the results. The lakehouse sends plain StatsD with its label
values as trailing dotted parts (:mod:`lakehouse.metrics`), so the code's table of metrics
(``METRICS``), the mapping's rules and this contract must agree on names, labels and their order.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from monitoring_files import (GRAFANA_DASHBOARD, GRAFANA_DATASOURCE, GRAFANA_PROVIDER, STATSD_MAPPING,
                              alert_rules, load_yaml, metric_names, selectors)

from lakehouse.metrics import METRICS, dotted_name
from lakehouse.settings import Settings

GAUGE, COUNTER, TIMER = "gauge", "counter", "timer"
DROPPED = "<dropped>"


@dataclass(frozen=True)
class Metric:
    """One StatsD metric: name (prefix included, label values not), type and label names.

    ``tags`` are the Prometheus labels whose values the lakehouse sends as dotted parts after the
    name, in this order (``lakehouse.bronze.runs.<exchange>.<status>``). ``prom`` is the Prometheus
    name the mapping must give it (default: the exporter's own conversion, dots to underscores;
    :data:`DROPPED` when the mapping drops it) and ``labels`` the fixed labels the mapping derives
    from the name (Airflow's names carry their ids).
    """

    statsd: str
    kind: str
    tags: tuple[str, ...] = ()
    prom: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def expected_name(self) -> str:
        return self.prom or escape_metric_name(self.statsd)

    def samples(self) -> dict[str, str]:
        """A distinct sample value for each tag: what the mapping must put in that label."""
        return {tag: f"{tag}-{index}" for index, tag in enumerate(self.tags, 1)}

    def sent(self) -> str:
        """The name as it arrives, with the sample values of its tags."""
        return ".".join((self.statsd, *self.samples().values()))

    def expected_labels(self) -> dict[str, str]:
        return {**self.labels, **self.samples()}


def _monitor(figure: str, *tags: str) -> Metric:
    return Metric(f"lakehouse.monitor.{figure}", GAUGE, tags)


_DAG, _TASK, _POOL = "bronze_ingestion", "ingest", "lakehouse_spark"

# The metric contract: the one list of what is sent to StatsD (samples for Airflow's names that
# embed ids). The pipeline_monitor gauges, the layer jobs' counters and timers, the producers'
# counters, the alert counter, and the Airflow 3 metrics the dashboard and rules read.
CONTRACT: tuple[Metric, ...] = (
    # pipeline_monitor figures (every minute)
    _monitor("kafka_lag_records", "exchange"),
    _monitor("kafka_lag_seconds", "exchange"),
    _monitor("commit_age_seconds", "layer", "exchange", "table"),
    _monitor("event_age_seconds", "layer", "exchange", "table"),
    _monitor("end_to_end_seconds", "exchange"),
    _monitor("dlq_rate", "exchange", "error_type"),
    _monitor("stalled_seconds", "layer", "exchange"),
    _monitor("layer_lag_records", "layer", "exchange"),
    _monitor("layer_lag_seconds", "layer", "exchange"),
    _monitor("table_bytes", "layer", "exchange", "table"),
    _monitor("table_data_files", "layer", "exchange", "table"),
    _monitor("table_snapshots", "layer", "exchange", "table"),
    _monitor("producer_idle_seconds", "exchange", "topic"),
    _monitor("alert_firing", "alert", "severity"),
    # Bronze
    Metric("lakehouse.bronze.records", COUNTER, ("exchange",)),
    Metric("lakehouse.bronze.bytes", COUNTER, ("exchange",)),
    Metric("lakehouse.bronze.runs", COUNTER, ("exchange", "status")),
    Metric("lakehouse.bronze.duration_ms", TIMER, ("exchange", "status"), prom="lakehouse_bronze_duration_seconds"),
    Metric("lakehouse.bronze.lag", GAUGE, ("exchange", "partition")),
    Metric("lakehouse.bronze.offset", GAUGE, ("exchange", "partition")),
    Metric("lakehouse.bronze.group_commit_failed", COUNTER, ("exchange",)),
    Metric("lakehouse.bronze.data_loss", COUNTER, ("exchange", "partition", "kind", "accepted")),
    Metric("lakehouse.bronze.records_discarded", COUNTER, ("exchange", "reason")),
    # Silver
    Metric("lakehouse.silver.records_read", COUNTER, ("exchange",)),
    Metric("lakehouse.silver.records_valid", COUNTER, ("exchange",)),
    Metric("lakehouse.silver.records_dead_lettered", COUNTER, ("exchange", "error_type")),
    Metric("lakehouse.silver.run_duration_ms", TIMER, ("exchange",), prom="lakehouse_silver_run_duration_seconds"),
    Metric("lakehouse.silver.batch_duration_ms", TIMER, ("exchange",),
           prom="lakehouse_silver_batch_duration_seconds"),
    Metric("lakehouse.silver.dlq_rate", GAUGE, ("exchange",)),
    Metric("lakehouse.silver.batch_dlq_rate", GAUGE, ("exchange",)),
    Metric("lakehouse.silver.run_records_read", GAUGE, ("exchange",)),
    Metric("lakehouse.silver.run_records_valid", GAUGE, ("exchange",)),
    Metric("lakehouse.silver.run_records_dead_lettered", GAUGE, ("exchange", "error_type")),
    # Gold (tag source = the exchange)
    Metric("lakehouse.gold.rows_in", COUNTER, ("source",)),
    Metric("lakehouse.gold.rows_written", COUNTER, ("source",)),
    *(Metric(f"lakehouse.gold.{name}", COUNTER, ("source",))
      for name in ("duplicates_removed", "late_rows", "bars_written")),
    *(Metric(f"lakehouse.gold.{name}", GAUGE, ("source",))
      for name in ("max_event_lag_s", "min_event_lag_s", "files_scanned")),
    Metric("lakehouse.gold.failed_sources", GAUGE),
    Metric("lakehouse.gold.run_ms", TIMER, (), prom="lakehouse_gold_run_seconds"),
    Metric("lakehouse.gold.batch_ms", TIMER, ("source",), prom="lakehouse_gold_batch_seconds"),
    # Producers
    *(Metric(f"lakehouse.producer.{name}", COUNTER, ("exchange",))
      for name in ("produced", "skipped", "rejected", "duplicates", "delivery_errors", "reconnects", "rollovers")),
    # Airflow deadline and failure callbacks
    Metric("lakehouse.alerts", COUNTER, ("event", "dag_id", "layer", "severity")),
    # Airflow 3 (prefix airflow): the legacy names with ids become labels ...
    Metric(f"airflow.dagrun.duration.success.{_DAG}", TIMER, prom="airflow_dagrun_duration_seconds",
           labels={"state": "success", "dag_id": _DAG}),
    Metric(f"airflow.dagrun.duration.failed.{_DAG}", TIMER, prom="airflow_dagrun_duration_seconds",
           labels={"state": "failed", "dag_id": _DAG}),
    Metric(f"airflow.dagrun.schedule_delay.{_DAG}", TIMER, prom="airflow_dagrun_schedule_delay_seconds",
           labels={"dag_id": _DAG}),
    Metric(f"airflow.dagrun.dependency-check.{_DAG}", TIMER, prom="airflow_dagrun_dependency_check_seconds",
           labels={"dag_id": _DAG}),
    Metric(f"airflow.ti.finish.{_DAG}.{_TASK}.failed", COUNTER, prom="airflow_ti_finish",
           labels={"dag_id": _DAG, "task_id": _TASK, "state": "failed"}),
    Metric(f"airflow.ti.finish.{_DAG}.group__{_TASK}.success", COUNTER, prom="airflow_ti_finish",
           labels={"dag_id": _DAG, "task_id": f"group__{_TASK}", "state": "success"}),
    Metric(f"airflow.ti.start.{_DAG}.{_TASK}", COUNTER, prom="airflow_ti_start",
           labels={"dag_id": _DAG, "task_id": _TASK}),
    Metric(f"airflow.dag.{_DAG}.{_TASK}.duration", TIMER, prom="airflow_task_duration_seconds",
           labels={"dag_id": _DAG, "task_id": _TASK}),
    Metric(f"airflow.dag.{_DAG}.{_TASK}.queued_duration", TIMER, prom="airflow_task_queued_duration_seconds",
           labels={"dag_id": _DAG, "task_id": _TASK}),
    Metric(f"airflow.dag.{_DAG}.{_TASK}.scheduled_duration", TIMER, prom="airflow_task_scheduled_duration_seconds",
           labels={"dag_id": _DAG, "task_id": _TASK}),
    *(Metric(f"airflow.pool.{slots}.{_POOL}", GAUGE, prom=f"airflow_pool_{slots}", labels={"pool": _POOL})
      for slots in ("open_slots", "queued_slots", "running_slots", "deferred_slots", "scheduled_slots",
                    "starving_tasks")),
    Metric("airflow.dag_processing.last_duration.dags-folder.bronze_ingestion", TIMER,
           prom="airflow_dag_processing_last_duration_seconds",
           labels={"bundle": "dags-folder", "file": "bronze_ingestion"}),
    Metric("airflow.dag_processing.last_run.seconds_ago.bronze_ingestion", GAUGE,
           prom="airflow_dag_processing_last_run_seconds_ago", labels={"file": "bronze_ingestion"}),
    # ... their plain twins (no ids, no tags in plain StatsD) are dropped ...
    Metric("airflow.dagrun.duration.success", TIMER, prom=DROPPED),
    Metric("airflow.dagrun.schedule_delay", TIMER, prom=DROPPED),
    Metric("airflow.dagrun.dependency-check", TIMER, prom=DROPPED),
    Metric("airflow.ti.finish", COUNTER, prom=DROPPED),
    Metric("airflow.ti.start", COUNTER, prom=DROPPED),
    Metric("airflow.task.duration", TIMER, prom=DROPPED),
    Metric("airflow.pool.open_slots", GAUGE, prom=DROPPED),
    Metric("airflow.dag_processing.last_duration", TIMER, prom=DROPPED),
    Metric("airflow.dag_processing.last_run.seconds_ago", GAUGE, prom=DROPPED),
    # ... and the rest keep the exporter's default name.
    Metric("airflow.scheduler_heartbeat", COUNTER),
    Metric("airflow.dag_processing.total_parse_time", GAUGE),
    Metric("airflow.dag_processing.import_errors", GAUGE),
    Metric("airflow.executor.open_slots", GAUGE),
)

# Series Prometheus makes itself (the dashboard's alert panel reads them).
PROMETHEUS_BUILTIN = frozenset({"ALERTS", "ALERTS_FOR_STATE", "up"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SUMMARY_SUFFIXES = ("", "_sum", "_count")


# --- statsd-exporter's mapping, as the exporter applies it ---------------------------------------
# Mirrors prometheus/statsd_exporter pkg/mapper (v0.28): strict YAML keys, the validity rules of
# match lines, names and label keys, glob "*" = exactly one dot-separated part, the first
# matching rule wins, unmapped names are escaped. (No DogStatsD tags: nothing sends any.)
_MAPPING_KEYS = {"match", "name", "labels", "honor_labels", "observer_type", "match_type", "help", "action",
                 "match_metric_type", "ttl", "summary_options", "histogram_options", "scale"}
_DEFAULTS_KEYS = {"observer_type", "match_type", "glob_disable_ordering", "ttl", "summary_options",
                  "histogram_options"}
_HISTOGRAM_KEYS = {"buckets", "native_histogram_bucket_factor", "native_histogram_max_buckets"}
_SUMMARY_KEYS = {"quantiles", "max_age", "age_buckets", "buf_cap"}
_STATSD_PART = r"[a-zA-Z_][a-zA-Z0-9_\-]*"
_STATSD_NEXT_PART = r"[a-zA-Z0-9_][a-zA-Z0-9_\-]*"
_MATCH_LINE = re.compile(rf"^(\*|{_STATSD_PART})(\.\*|\.{_STATSD_NEXT_PART})*$")
_TEMPLATE = r"(\$\{?\d+\}?)"
_METRIC_NAME = re.compile(rf"^([a-zA-Z_]|{_TEMPLATE})([a-zA-Z0-9_]|{_TEMPLATE})*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]+$")
_CAPTURE = re.compile(r"\$\{?(\d+)\}?")
_GO_DURATION = re.compile(r"^(\d+(ns|us|ms|s|m|h))+$")


def escape_metric_name(name: str) -> str:
    """statsd-exporter's EscapeMetricName: every character outside [a-zA-Z0-9_] becomes "_"."""
    escaped = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return "_" + escaped if escaped[:1].isdigit() else escaped


@cache
def mapping() -> dict[str, Any]:
    return load_yaml(STATSD_MAPPING)


def _observer_type(rule: Mapping[str, Any] | None) -> str:
    own = (rule or {}).get("observer_type")
    return own or mapping().get("defaults", {}).get("observer_type") or "summary"


@dataclass(frozen=True)
class Mapped:
    name: str  # DROPPED when the mapping drops the metric
    labels: dict[str, str]  # from the mapping rule
    rule: int | None  # index of the matching mapping rule
    observer_type: str | None  # "histogram" or "summary" for timers

    def series(self) -> tuple[str, ...]:
        if self.name == DROPPED:
            return ()
        if self.observer_type == "histogram":
            return tuple(self.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        if self.observer_type == "summary":
            return tuple(self.name + suffix for suffix in SUMMARY_SUFFIXES)
        return (self.name,)


def apply_mapping(metric: Metric) -> Mapped:
    """What statsd-exporter makes of one contract metric (sent with its sample values)."""
    return map_name(metric.sent(), metric.kind)


def map_name(name: str, kind: str) -> Mapped:
    """What statsd-exporter makes of the StatsD name ``name`` of type ``kind`` under the mapping file."""
    statsd_type = "observer" if kind == TIMER else kind
    parts = name.split(".")
    for index, rule in enumerate(mapping()["mappings"]):
        if rule.get("match_type", "glob") != "glob":
            continue
        wanted = rule.get("match_metric_type")
        if wanted and wanted != statsd_type:
            continue
        pattern = rule["match"].split(".")
        if len(pattern) != len(parts) or any(p not in ("*", s) for p, s in zip(pattern, parts, strict=True)):
            continue
        captures = [s for p, s in zip(pattern, parts, strict=True) if p == "*"]

        def fill(template: str, captures: list[str] = captures) -> str:
            return _CAPTURE.sub(lambda m: captures[int(m.group(1)) - 1], template)

        if rule.get("action") == "drop":
            return Mapped(DROPPED, {}, index, None)
        labels = {k: fill(str(v)) for k, v in (rule.get("labels") or {}).items()}
        return Mapped(escape_metric_name(fill(rule["name"])), labels, index,
                      _observer_type(rule) if kind == TIMER else None)
    return Mapped(escape_metric_name(name), {}, None, _observer_type(None) if kind == TIMER else None)


def produced() -> dict[str, set[str]]:
    """Every Prometheus series name the contract produces, with its label names."""
    out: dict[str, set[str]] = {}
    for metric in CONTRACT:
        mapped = apply_mapping(metric)
        for name in mapped.series():
            extra = {"le"} if name.endswith("_bucket") else set()
            out.setdefault(name, set()).update(set(mapped.labels) | extra)
    return out


# --- the mapping file itself --------------------------------------------------------------------

def test_mapping_file_is_what_statsd_exporter_loads() -> None:
    """The exporter loads its mapping strictly and refuses to start on one bad rule: check what
    it checks, so a typo fails here and not in production."""
    config = mapping()
    assert set(config) <= {"defaults", "mappings"}, f"unknown top-level keys: {set(config) - {'defaults', 'mappings'}}"
    defaults = config.get("defaults", {})
    assert set(defaults) <= _DEFAULTS_KEYS, f"unknown defaults: {set(defaults) - _DEFAULTS_KEYS}"
    assert defaults.get("observer_type") in ("histogram", "summary"), "say explicitly what timers become"
    buckets = defaults.get("histogram_options", {}).get("buckets", [])
    assert buckets == sorted(buckets) and len(set(buckets)) == len(buckets) > 3, buckets
    for index, rule in enumerate(config["mappings"]):
        where = f"mapping {index} ({rule.get('match')})"
        assert set(rule) <= _MAPPING_KEYS, f"{where}: unknown keys {set(rule) - _MAPPING_KEYS}"
        assert rule.get("match_type", "glob") == "glob", f"{where}: only glob rules are used (and checked here)"
        assert _MATCH_LINE.match(rule["match"]), f"{where}: invalid glob match line"
        assert rule.get("name") and _METRIC_NAME.match(rule["name"]), f"{where}: invalid or missing name"
        assert rule.get("action", "map") in ("map", "drop"), where
        assert rule.get("match_metric_type", "gauge") in ("gauge", "counter", "observer"), where
        assert rule.get("observer_type", "histogram") in ("histogram", "summary"), where
        assert set(rule.get("histogram_options") or {}) <= _HISTOGRAM_KEYS, where
        assert set(rule.get("summary_options") or {}) <= _SUMMARY_KEYS, where
        assert not (_observer_type(rule) == "histogram" and rule.get("summary_options")), where
        if "ttl" in rule:
            assert _GO_DURATION.match(str(rule["ttl"])), f"{where}: ttl must be a Go duration"
        stars = rule["match"].split(".").count("*")
        for key, value in (rule.get("labels") or {}).items():
            assert _LABEL_NAME.match(key), f"{where}: invalid label name {key!r}"
            assert all(int(n) <= stars for n in _CAPTURE.findall(str(value))), f"{where}: label {key}: no such capture"
        assert all(int(n) <= stars for n in _CAPTURE.findall(rule["name"])), f"{where}: name uses a missing capture"


@pytest.mark.parametrize("metric", CONTRACT, ids=lambda m: m.statsd)
def test_the_mapping_gives_each_contract_metric_its_prometheus_name(metric: Metric) -> None:
    """StatsD name -> Prometheus series: dots to underscores, timers renamed to their unit,
    Airflow's ids moved into labels, Airflow's id-less twins dropped."""
    mapped = apply_mapping(metric)
    assert mapped.name == metric.expected_name, f"{metric.sent()} maps to {mapped.name}"
    if mapped.name != DROPPED:
        assert mapped.labels == metric.expected_labels(), f"{metric.sent()}: label values in the wrong place"
    if metric.kind == TIMER and mapped.name != DROPPED:
        assert mapped.observer_type == "histogram", "timers are histograms: the dashboard aggregates quantiles"
        assert mapped.name.endswith("_seconds") or mapped.name == escape_metric_name(metric.statsd), (
            "a renamed timer says its unit (the exporter observes seconds)")


def test_every_mapping_rule_is_exercised_by_the_contract() -> None:
    """A rule that no contract metric reaches is dead or shadowed by an earlier one."""
    used = {apply_mapping(metric).rule for metric in CONTRACT}
    unused = [rule["match"] for index, rule in enumerate(mapping()["mappings"]) if index not in used]
    assert not unused, f"mapping rules no contract metric reaches: {unused}"


def test_one_prometheus_name_has_one_label_set() -> None:
    """The exporter rejects a sample whose label names differ from those its name already has."""
    by_name: dict[str, set[frozenset[str]]] = defaultdict(set)
    for metric in CONTRACT:
        mapped = apply_mapping(metric)
        if mapped.name != DROPPED:
            by_name[mapped.name].add(frozenset(mapped.labels))
    clashes = {name: sets for name, sets in by_name.items() if len(sets) > 1}
    assert not clashes, f"names with different label sets: {clashes}"


def test_monitor_gauges_expire_so_a_silent_monitor_is_noticed() -> None:
    """LakehouseMonitorDown relies on the monitor's gauges leaving the exporter when not sent."""
    figures = [metric for metric in CONTRACT if metric.statsd.startswith("lakehouse.monitor.")]
    assert len(figures) >= 9
    for metric in figures:
        rule = apply_mapping(metric).rule
        assert rule is not None and "ttl" in mapping()["mappings"][rule], f"{metric.statsd} never expires"


# --- the code's table of metrics (lakehouse.metrics.METRICS) ----------------------------------

def _default_prefix() -> str:
    return str(Settings.model_fields["statsd_prefix"].default)


def test_every_metric_the_code_sends_is_in_the_contract() -> None:
    """METRICS (what StatsD accepts) and the lakehouse part of the contract are the same metrics,
    of the same type, with the same labels in the same order."""
    prefix = _default_prefix()
    assert prefix == "lakehouse", "the mapping's rules are written for the prefix lakehouse"
    contract = {m.statsd: m for m in CONTRACT if m.statsd.startswith(f"{prefix}.")}
    code = {f"{prefix}.{name}": spec for name, spec in METRICS.items()}
    assert sorted(set(code) - set(contract)) == [], "sent by the code, missing from the contract"
    assert sorted(set(contract) - set(code)) == [], "in the contract, never sent by the code"
    for name, spec in code.items():
        assert (spec.kind, spec.labels) == (contract[name].kind, contract[name].tags), name


@pytest.mark.parametrize("name", sorted(METRICS))
def test_the_names_the_code_builds_map_to_the_same_series_as_before(name: str) -> None:
    """The real name builder (tags given in reverse order, values needing escaping) through the
    mapping gives the Prometheus name and labels the DogStatsD tags gave."""
    spec = METRICS[name]
    metric = next(m for m in CONTRACT if m.statsd == f"{_default_prefix()}.{name}")
    tags = {label: f"{label}.{index}:x" for index, label in reversed(list(enumerate(spec.labels, 1)))}
    mapped = map_name(f"{_default_prefix()}.{dotted_name(name, spec.kind, tags)}", spec.kind)
    assert mapped.name == metric.expected_name
    assert mapped.labels == {label: f"{label}_{index}_x" for index, label in enumerate(spec.labels, 1)}


# --- the PromQL reader the checks below rely on -----------------------------------------------

def test_metric_names_reads_selectors_only() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, exchange) (rate(a_bucket{exchange=~"$exchange|all"}[5m]))) '
            '> on(exchange) group_left(source) b offset 5m and label_replace(c, "x", "$1", "y", "(.*)") > 1e3')
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names("absent(x or y) or rate(z[5m]) == 0") == {"x", "y", "z"}


# --- the dashboard ------------------------------------------------------------------------------

@cache
def dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))


def datasource_uid() -> str:
    sources = load_yaml(GRAFANA_DATASOURCE)["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    return str(sources[0]["uid"])


def panel_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_dashboard_has_the_structure_grafana_expects() -> None:
    """Grafana imports a dashboard with a bad panel as an empty one, silently: check the parts
    it needs and that every query goes to the provisioned Prometheus datasource."""
    board = dashboard()
    ref = {"type": "prometheus", "uid": datasource_uid()}
    assert isinstance(board.get("title"), str) and board["title"]
    assert isinstance(board.get("uid"), str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert isinstance(board.get("schemaVersion"), int)
    assert isinstance(board.get("panels"), list) and board["panels"]
    ids = [panel.get("id") for panel in board["panels"]]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids must be unique ints: {ids}"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert isinstance(panel.get("type"), str) and panel["type"] in {"timeseries", "table", "stat", "gauge",
                                                                         "bargauge"}, where
        assert isinstance(panel.get("title"), str) and panel["title"], where
        assert panel.get("datasource") == ref, f"{where}: datasource {panel.get('datasource')} is not {ref}"
        grid = panel.get("gridPos", {})
        assert all(isinstance(grid.get(k), int) for k in "xywh"), f"{where}: gridPos {grid}"
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, where
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{where} overlaps another panel"
        cells |= mine
        targets = panel.get("targets")
        assert isinstance(targets, list) and targets, f"{where}: no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), f"{where}: refIds {ref_ids}"
        for target in targets:
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), f"{where}: target without expr"
            assert target.get("datasource", ref) == ref, f"{where}: target datasource"
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            assert variable.get("datasource") == ref, f"variable {variable.get('name')}: datasource"


def test_grafana_provisioning_points_at_the_dashboard_folder() -> None:
    provider = load_yaml(GRAFANA_PROVIDER)["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert load_yaml(GRAFANA_DATASOURCE)["datasources"][0]["url"] == "http://prometheus:9090"


def test_dashboard_queries_read_only_produced_metrics() -> None:
    """Each metric a panel reads is produced by the contract through the mapping, and each label
    it filters on exists on that metric."""
    names = produced()
    unknown: list[str] = []
    for panel, target in panel_targets():
        where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
        for name in metric_names(target["expr"]):
            if name not in names and name not in PROMETHEUS_BUILTIN:
                unknown.append(f"{where}: {name}")
        for name, matchers in selectors(target["expr"]):
            if name in names:
                missing = set(matchers) - names[name]
                assert not missing, f"{where}: {name} has no label(s) {missing} (it has {sorted(names[name])})"
    for variable in dashboard().get("templating", {}).get("list", []):
        query = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        if variable.get("type") == "query":
            assert match and match.group(1) in names and match.group(2) in names[match.group(1)], query
    assert not unknown, "dashboard queries read metrics nothing produces:\n" + "\n".join(unknown)


def test_dashboard_has_the_panels_the_on_call_needs() -> None:
    """Throughput per layer, Kafka lag, freshness per table (commit and event age), end-to-end
    freshness, dead-letter rate by error type, run durations per layer and firing alerts."""
    read = {name for _, target in panel_targets() for name in metric_names(target["expr"])}
    needed = {
        "records per second per layer": {"lakehouse_bronze_records", "lakehouse_silver_records_valid",
                                         "lakehouse_gold_rows_written"},
        "kafka lag": {"lakehouse_monitor_kafka_lag_seconds"},
        "freshness per table": {"lakehouse_monitor_commit_age_seconds", "lakehouse_monitor_event_age_seconds"},
        "end-to-end freshness": {"lakehouse_monitor_end_to_end_seconds"},
        "dead-letter rate": {"lakehouse_monitor_dlq_rate"},
        "run durations per layer": {"lakehouse_bronze_duration_seconds_bucket",
                                    "lakehouse_silver_run_duration_seconds_bucket",
                                    "lakehouse_gold_run_seconds_bucket"},
        "firing alerts": {"ALERTS", "lakehouse_monitor_alert_firing"},
    }
    missing = {what: metrics - read for what, metrics in needed.items() if metrics - read}
    assert not missing, f"panels missing: {missing}"
    assert any('error_type!="all"' in t["expr"] and "by (exchange, error_type)" in t["expr"]
               for _, t in panel_targets()), "the dead-letter rate is shown per error type"


# --- the alert rules ----------------------------------------------------------------------------

def test_alert_rules_read_only_produced_metrics() -> None:
    names = produced()
    for rule in alert_rules():
        read = metric_names(rule.expr)
        assert read, f"{rule.alert}: no metric found in {rule.expr!r}"
        unknown = read - set(names)
        assert not unknown, f"{rule.alert} ({rule.labels.get('severity')}) reads metrics nothing produces: {unknown}"
        for name, matchers in selectors(rule.expr):
            missing = set(matchers) - names[name]
            assert not missing, f"{rule.alert}: {name} has no label(s) {missing}"
