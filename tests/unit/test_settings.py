"""Settings: defaults, file then environment overrides, typed getters that fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakehouse.settings import REPO_ROOT, SettingsError, load_settings


def test_defaults_need_no_configuration() -> None:
    s = load_settings({})
    assert s.home == REPO_ROOT / ".lakehouse"
    assert s.exchanges == ("binance", "kraken")
    assert s.topic_partitions == 3
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.catalog_jdbc_uri == f"jdbc:sqlite:{REPO_ROOT / '.lakehouse' / 'catalog.db'}"
    assert s.warehouse_uri == (REPO_ROOT / ".lakehouse" / "warehouse").as_uri()


def test_every_state_location_lives_under_home(tmp_path: Path) -> None:
    s = load_settings({"LAKEHOUSE_HOME": str(tmp_path)})
    for path in (s.catalog_db_path, s.registry_dir, s.log_dir, s.run_dir, s.airflow_home_path):
        assert tmp_path in path.parents
    assert s.warehouse_uri.startswith(tmp_path.as_uri())
    assert s.checkpoint_uri.startswith(tmp_path.as_uri())


def test_environment_overrides_are_typed() -> None:
    s = load_settings({"LAKEHOUSE_KAFKA_PORT": "19092", "LAKEHOUSE_KAFKA_EMBEDDED": "no",
                       "LAKEHOUSE_EXCHANGES": "binance, kraken ,coinbase", "LAKEHOUSE_PRODUCER_RATE": "12.5",
                       "LAKEHOUSE_BRONZE_MAX_RECORDS_PER_RUN": "1_000"})
    assert s.kafka_port == 19092
    assert s.kafka_embedded is False
    assert s.exchanges == ("binance", "kraken", "coinbase")
    assert s.producer_rate == 12.5
    assert s.bronze_max_records_per_run == 1000
    assert s.bootstrap_servers == "127.0.0.1:19092"


@pytest.mark.parametrize(("var", "value", "fragment"), [
    ("LAKEHOUSE_KAFKA_PORT", "ninety", "LAKEHOUSE_KAFKA_PORT='ninety'"),
    ("LAKEHOUSE_KAFKA_PORT", "70000", "LAKEHOUSE_KAFKA_PORT=70000"),
    ("LAKEHOUSE_KAFKA_EMBEDDED", "maybe", "LAKEHOUSE_KAFKA_EMBEDDED='maybe'"),
    ("LAKEHOUSE_TOPIC_PARTITIONS", "0", "LAKEHOUSE_TOPIC_PARTITIONS=0"),
    ("LAKEHOUSE_EXCHANGES", "Binance", "LAKEHOUSE_EXCHANGES"),
    ("LAKEHOUSE_LOG_LEVEL", "chatty", "LAKEHOUSE_LOG_LEVEL"),
    ("LAKEHOUSE_CATALOG_URI", "postgres://x", "LAKEHOUSE_CATALOG_URI"),
    ("LAKEHOUSE_KAFKA_PROT", "1", "LAKEHOUSE_KAFKA_PROT is not a known setting"),
    # maintenance: negative days, purge not after archive, an orphan age a running job could outlive
    ("LAKEHOUSE_DLQ_ARCHIVE_DAYS", "-1", "LAKEHOUSE_DLQ_ARCHIVE_DAYS=-1"),
    ("LAKEHOUSE_SNAPSHOT_RETENTION_HOURS", "-24", "LAKEHOUSE_SNAPSHOT_RETENTION_HOURS=-24"),
    ("LAKEHOUSE_DLQ_PURGE_DAYS", "30", "must be greater than LAKEHOUSE_DLQ_ARCHIVE_DAYS (30)"),
    ("LAKEHOUSE_ORPHAN_MIN_AGE_HOURS", "1", "LAKEHOUSE_ORPHAN_MIN_AGE_HOURS=1"),
    ("LAKEHOUSE_GOLD_POLL_INTERVAL_S", "0", "LAKEHOUSE_GOLD_POLL_INTERVAL_S=0"),
])
def test_bad_values_fail_naming_the_variable(var: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({var: value})
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "lakehouse.toml"
    config.write_text('kafka_port = 29092\ntopic_prefix = "md.trades"\nexchanges = ["kraken"]\n')
    s = load_settings({"LAKEHOUSE_CONFIG": str(config), "LAKEHOUSE_KAFKA_PORT": "39092"})
    assert s.kafka_port == 39092  # environment wins over the file
    assert s.topic_prefix == "md.trades"
    assert s.exchanges == ("kraken",)


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("kafka_port = [")
    with pytest.raises(SettingsError, match="LAKEHOUSE_CONFIG"):
        load_settings({"LAKEHOUSE_CONFIG": str(bad)})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("no_such_setting = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'no_such_setting'"):
        load_settings({"LAKEHOUSE_CONFIG": str(unknown)})


def test_env_round_trip(tmp_path: Path) -> None:
    s = load_settings({"LAKEHOUSE_HOME": str(tmp_path), "LAKEHOUSE_EXCHANGES": "kraken",
                       "LAKEHOUSE_KAFKA_EMBEDDED": "false"})
    assert load_settings(s.env()) == s


def test_secrets_are_masked() -> None:
    s = load_settings({"LAKEHOUSE_CATALOG_PASSWORD": "hunter2", "LAKEHOUSE_S3_SECRET_KEY": "k"})
    shown = s.as_dict()
    assert shown["catalog_password"] == "***"
    assert shown["s3_secret_key"] == "***"


def test_the_removed_accept_data_loss_setting_says_what_replaced_it(tmp_path: Path) -> None:
    """Left in an environment it accepted every later loss: now it stops everything, with the way out."""
    with pytest.raises(SettingsError, match="LAKEHOUSE_BRONZE_ACCEPT_DATA_LOSS was removed: .*--accept-data-loss"):
        load_settings({"LAKEHOUSE_BRONZE_ACCEPT_DATA_LOSS": "true"})
    config = tmp_path / "lakehouse.toml"
    config.write_text("bronze_accept_data_loss = true\n")
    with pytest.raises(SettingsError, match="'bronze_accept_data_loss' was removed"):
        load_settings({"LAKEHOUSE_CONFIG": str(config)})
