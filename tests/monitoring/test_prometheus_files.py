"""The Prometheus, Alertmanager and compose files are valid for the tools that load them.

promtool and amtool are the loaders themselves (Debian's prometheus and prometheus-alertmanager
packages, installed by 'make setup' when possible): a file they accept is a file Prometheus and
Alertmanager start with. Each test skips, saying why, where the tool is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml
from monitoring_files import (ALERTMANAGER_CONFIG, COMPOSE_FILE, GRAFANA_DASHBOARD, PROMETHEUS_CONFIG,
                              PROMETHEUS_RULE_TESTS, PROMETHEUS_RULES, REPO, load_yaml)

TIMEOUT_S = 60


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed: apt-get install {package} (or 'make check-monitoring-tools' as root)")
    return path


def run(*args: str | Path, cwd: Path = REPO) -> str:
    """Run a checker; fail with its whole output when it refuses the file."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool("promtool", "prometheus")


@pytest.fixture(scope="module")
def amtool() -> str:
    return tool("amtool", "prometheus-alertmanager")


def test_promtool_check_rules(promtool: str) -> None:
    output = run(promtool, "check", "rules", PROMETHEUS_RULES)
    assert "SUCCESS" in output


def test_promtool_unit_tests_of_the_rules(promtool: str) -> None:
    """Firing and quiet cases of every rule, warning against critical (lakehouse_test.yml)."""
    output = run(promtool, "test", "rules", PROMETHEUS_RULE_TESTS)
    assert "SUCCESS" in output


def test_promtool_check_config(promtool: str) -> None:
    """prometheus.yml and, through its relative rule_files, the rules it loads."""
    output = run(promtool, "check", "config", PROMETHEUS_CONFIG)
    assert "1 rule files found" in output, output


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Grafana shows a parse error only when someone opens the panel: parse every query now,
    as recording rules promtool checks (Grafana's $variables only appear inside label strings)."""
    import json

    board = json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))
    records = [{"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": target["expr"]}
               for panel in board["panels"] for target in panel["targets"]]
    assert records
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), encoding="utf-8")
    output = run(promtool, "check", "rules", path)
    assert f"SUCCESS: {len(records)} rules found" in output, output


def test_amtool_check_config(amtool: str) -> None:
    output = run(amtool, "check-config", ALERTMANAGER_CONFIG)
    assert "SUCCESS" in output


@pytest.mark.parametrize("labels", [
    ("alertname=LakehouseKafkaLag", "severity=critical", "exchange=binance", "rule=kafka_lag"),
    ("alertname=LakehouseProducerDown", "severity=warning", "exchange=kraken", "topic=trades.kraken"),
    ("alertname=LakehouseMonitorDown", "severity=critical"),
])
def test_alertmanager_routes_alerts_to_the_webhook(amtool: str, labels: tuple[str, ...]) -> None:
    output = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
    assert output.splitlines()[0].strip() == "lakehouse-webhook", output  # stdout first; stderr may warn


def test_alertmanager_webhook_is_a_placeholder() -> None:
    """No real endpoint or token in the repository: the operator sets the URL."""
    config = load_yaml(ALERTMANAGER_CONFIG)
    urls = [hook["url"] for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])]
    assert urls == ["http://lakehouse-alert-webhook:9000/alerts"]


def test_compose_mounts_the_monitoring_files_where_prometheus_yml_expects_them() -> None:
    """docker-compose.yaml's prometheus configs are these files, and the rules land where the
    relative rule_files pattern of prometheus.yml finds them."""
    compose = load_yaml(COMPOSE_FILE)
    configs = compose["configs"]
    assert configs["prometheus-config"] == {"file": "./monitoring/prometheus/prometheus.yml"}
    assert configs["prometheus-rules"] == {"file": "./monitoring/prometheus/rules/lakehouse.yml"}
    for name in ("prometheus-config", "prometheus-rules"):
        assert (REPO / configs[name]["file"]).is_file()
    targets = {c["source"]: PurePosixPath(c["target"]) for c in compose["services"]["prometheus"]["configs"]}
    assert f"--config.file={targets['prometheus-config']}" in compose["services"]["prometheus"]["command"]
    config_dir = targets["prometheus-config"].parent
    rule_target = targets["prometheus-rules"]
    patterns = load_yaml(PROMETHEUS_CONFIG)["rule_files"]
    assert any(rule_target.match(str(config_dir / pattern)) for pattern in patterns), (rule_target, patterns)
    scrape = load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
    assert ["statsd-exporter:9102"] == [t for job in scrape for sc in job["static_configs"] for t in sc["targets"]]
