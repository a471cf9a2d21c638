"""Settings: defaults, file then environment overrides, typed getters that fail loudly."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from lakehouse.settings import REPO_ROOT, Settings, SettingsError, load_settings, setting_docs


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


# --- the pydantic-settings model: sources, parsing, checks, one-line errors -----------------------

@pytest.mark.parametrize(("var", "value", "expected"), [
    ("LAKEHOUSE_KAFKA_EMBEDDED", " YES ", True), ("LAKEHOUSE_KAFKA_EMBEDDED", "on", True),
    ("LAKEHOUSE_KAFKA_EMBEDDED", "1", True), ("LAKEHOUSE_KAFKA_EMBEDDED", "Off", False),
    ("LAKEHOUSE_KAFKA_EMBEDDED", "0", False),
    ("LAKEHOUSE_EXCHANGES", " kraken, ,binance ", ("kraken", "binance")),
    ("LAKEHOUSE_SPARK_EXTRA_JARS", "", ()),
    ("LAKEHOUSE_TOPIC_PREFIX", "  md.trades  ", "md.trades"),
    ("LAKEHOUSE_LOG_LEVEL", "debug", "debug"),
    ("LAKEHOUSE_ALERT_FOR_S", "0", 0.0),
    ("LAKEHOUSE_PRODUCER_DEDUPE_WINDOW", "0", 0),
    ("LAKEHOUSE_BRONZE_CRASH_POINT", " after_write ", "after_write"),
    ("LAKEHOUSE_CATALOG_URI", "jdbc:postgresql://db:5432/lake", "jdbc:postgresql://db:5432/lake"),
])
def test_values_are_parsed_as_the_typed_getters_always_did(var: str, value: str, expected: object) -> None:
    s = load_settings({var: value})
    got = getattr(s, var.removeprefix("LAKEHOUSE_").lower())
    assert got == expected and type(got) is type(expected)


def test_paths_expand_the_user_and_a_relative_home_becomes_absolute(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings({"LAKEHOUSE_HOME": "rel/home", "LAKEHOUSE_SPARK_SQLITE_JDBC_JAR": "~/jars/sqlite.jar"})
    assert s.home == tmp_path.resolve() / "rel" / "home"
    assert s.spark_sqlite_jdbc_jar == Path.home() / "jars" / "sqlite.jar"


@pytest.mark.parametrize(("env", "message"), [
    # the parsers: pydantic alone would accept these ('t', 1.0 for an int, True for a float...)
    ({"LAKEHOUSE_KAFKA_EMBEDDED": "t"}, "LAKEHOUSE_KAFKA_EMBEDDED='t' is not a valid bool: expected true/false"),
    ({"LAKEHOUSE_KAFKA_PORT": "19092.0"},
     "LAKEHOUSE_KAFKA_PORT='19092.0' is not a valid int: invalid literal for int() with base 10: '19092.0'"),
    ({"LAKEHOUSE_PRODUCER_RATE": "fast"},
     "LAKEHOUSE_PRODUCER_RATE='fast' is not a valid float: could not convert string to float: 'fast'"),
    ({"LAKEHOUSE_HOME": " "}, "LAKEHOUSE_HOME=' ' is not a valid Path: expected a path"),
    # ports, positive and non-negative numbers
    ({"LAKEHOUSE_STATSD_PORT": "0"}, "LAKEHOUSE_STATSD_PORT=0: must be a TCP port between 1 and 65535"),
    ({"LAKEHOUSE_AIRFLOW_PORT": "65536"}, "LAKEHOUSE_AIRFLOW_PORT=65536: must be a TCP port between 1 and 65535"),
    ({"LAKEHOUSE_PRODUCER_RATE": "0"}, "LAKEHOUSE_PRODUCER_RATE=0.0: must be greater than zero"),
    ({"LAKEHOUSE_PRODUCER_FLUSH_TIMEOUT_S": "-1"},
     "LAKEHOUSE_PRODUCER_FLUSH_TIMEOUT_S=-1.0: must be greater than zero"),
    ({"LAKEHOUSE_MAX_CLOCK_SKEW_S": "-0.5"}, "LAKEHOUSE_MAX_CLOCK_SKEW_S=-0.5: must be zero or positive"),
    ({"LAKEHOUSE_ALERT_FOR_S": "-1"}, "LAKEHOUSE_ALERT_FOR_S=-1.0: must be zero or positive"),
    ({"LAKEHOUSE_PRODUCER_DEDUPE_WINDOW": "-1"}, "LAKEHOUSE_PRODUCER_DEDUPE_WINDOW=-1: must be zero (off) or positive"),
    # lists
    ({"LAKEHOUSE_EXCHANGES": " , "}, "LAKEHOUSE_EXCHANGES=(): at least one exchange is required"),
    ({"LAKEHOUSE_EXCHANGES": "kraken,kraken"},
     "LAKEHOUSE_EXCHANGES=('kraken', 'kraken'): exchange names must be unique"),
    ({"LAKEHOUSE_EXCHANGES": "coin-base"},
     "LAKEHOUSE_EXCHANGES=('coin-base',): exchange name 'coin-base' must be a lower-case identifier"),
    ({"LAKEHOUSE_PRODUCER_BINANCE_QUOTES": "USDT,eur"},
     "LAKEHOUSE_PRODUCER_BINANCE_QUOTES=('USDT', 'eur'): must be a non-empty list of upper-case asset codes"),
    # choices
    ({"LAKEHOUSE_PRODUCER_COMPRESSION": "ZSTD"},
     "LAKEHOUSE_PRODUCER_COMPRESSION='ZSTD': must be one of none, gzip, snappy, lz4, zstd"),
    ({"LAKEHOUSE_PRODUCER_BINANCE_TIME_UNIT": "SECOND"},
     "LAKEHOUSE_PRODUCER_BINANCE_TIME_UNIT='SECOND': must be MILLISECOND or MICROSECOND"),
    ({"LAKEHOUSE_BRONZE_CRASH_POINT": "later"},
     "LAKEHOUSE_BRONZE_CRASH_POINT='later': must be empty or one of before_write, after_write, after_commit"),
    ({"LAKEHOUSE_GOLD_CRASH_POINT": "later"},
     "LAKEHOUSE_GOLD_CRASH_POINT='later': must be empty or one of after_trades"),
    ({"LAKEHOUSE_SILVER_FAULT_INJECTION": "later"},
     "LAKEHOUSE_SILVER_FAULT_INJECTION='later': must be one of '', 'after_silver', 'after_both'"),
    ({"LAKEHOUSE_PRODUCER_KRAKEN_WS_URL": "https://ws.kraken.com/v2"},
     "LAKEHOUSE_PRODUCER_KRAKEN_WS_URL='https://ws.kraken.com/v2': must be a ws:// or wss:// URL"),
    # across fields
    ({"LAKEHOUSE_AIRFLOW_RETRY_DELAY_S": "200"},
     "LAKEHOUSE_AIRFLOW_MAX_RETRY_DELAY_S=120: must not be smaller than LAKEHOUSE_AIRFLOW_RETRY_DELAY_S"),
    ({"LAKEHOUSE_AIRFLOW_REPLAY_TIMEOUT_S": "300000"},
     "LAKEHOUSE_ORPHAN_MIN_AGE_HOURS=72.0: must be at least 84.33 hours"),
    ({"LAKEHOUSE_ALERT_LAG_WARNING_S": "301"},
     "LAKEHOUSE_ALERT_LAG_CRITICAL_S=300.0: must not be below LAKEHOUSE_ALERT_LAG_WARNING_S (301.0)"),
    ({"LAKEHOUSE_ALERT_JOB_DOWN_WARNING_S": "301"},
     "LAKEHOUSE_ALERT_JOB_DOWN_CRITICAL_S=300.0: must not be below LAKEHOUSE_ALERT_JOB_DOWN_WARNING_S (301.0)"),
    ({"LAKEHOUSE_ALERT_DLQ_RATE_CRITICAL": "1.5"},
     "LAKEHOUSE_ALERT_DLQ_RATE_CRITICAL=1.5: must be between LAKEHOUSE_ALERT_DLQ_RATE_WARNING (0.01) and 1"),
    ({"LAKEHOUSE_PRODUCER_RECONNECT_MIN_S": "31"},
     "LAKEHOUSE_PRODUCER_RECONNECT_MAX_S=30.0: must not be smaller than LAKEHOUSE_PRODUCER_RECONNECT_MIN_S"),
])
def test_each_check_fails_with_one_line_naming_variable_value_and_expectation(env: dict[str, str],
                                                                              message: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value) and "validation error" not in str(err.value)


def test_every_bad_value_is_named_on_the_same_line() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"LAKEHOUSE_KAFKA_PORT": "x", "LAKEHOUSE_LOG_LEVEL": "chatty"})
    text = str(err.value)
    assert "LAKEHOUSE_KAFKA_PORT='x' is not a valid int" in text
    assert "LAKEHOUSE_LOG_LEVEL='chatty': must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in text
    assert "\n" not in text


def test_file_values_are_parsed_and_checked_like_variables(tmp_path: Path) -> None:
    config = tmp_path / "lakehouse.toml"
    config.write_text('kafka_embedded = "off"\ntopic_partitions = "1_0"\nproducer_rate = 5\n'
                      'spark_extra_jars = "a.jar, b.jar"\n')
    s = load_settings({"LAKEHOUSE_CONFIG": str(config)})
    assert (s.kafka_embedded, s.topic_partitions, s.producer_rate) == (False, 10, 5.0)
    assert s.spark_extra_jars == ("a.jar", "b.jar")
    config.write_text("kafka_port = 3.0\n")
    with pytest.raises(SettingsError, match=rf"^{config}:kafka_port=3.0 is not a valid int"):
        load_settings({"LAKEHOUSE_CONFIG": str(config)})
    config.write_text("topic_partitions = true\n")
    with pytest.raises(SettingsError, match=rf"^{config}:topic_partitions=True is not a valid int: expected an int"):
        load_settings({"LAKEHOUSE_CONFIG": str(config)})
    config.write_text("kafka_port = 90000\n")
    with pytest.raises(SettingsError, match=r"^LAKEHOUSE_KAFKA_PORT=90000: must be a TCP port"):
        load_settings({"LAKEHOUSE_CONFIG": str(config)})


def test_a_named_file_must_exist_and_its_keys_must_be_settings(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(SettingsError, match=r"^LAKEHOUSE_CONFIG='.*missing.toml': cannot read TOML file: .*No such"):
        load_settings({"LAKEHOUSE_CONFIG": str(missing)})
    config = tmp_path / "lakehouse.toml"
    config.write_text("KAFKA_PORT = 1\n")  # names in the file are the field names, exactly
    with pytest.raises(SettingsError, match="unknown setting 'KAFKA_PORT'"):
        load_settings({"LAKEHOUSE_CONFIG": str(config)})
    assert load_settings({"LAKEHOUSE_CONFIG": ""}) == load_settings({})


def test_the_given_mapping_replaces_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEHOUSE_KAFKA_PORT", "19092")
    monkeypatch.setenv("LAKEHOUSE_CONFIG", str(tmp_path / "missing.toml"))
    assert load_settings({}).kafka_port == 9092
    with pytest.raises(SettingsError, match="LAKEHOUSE_CONFIG"):
        load_settings()
    monkeypatch.delenv("LAKEHOUSE_CONFIG")
    assert load_settings().kafka_port == 19092
    monkeypatch.setenv("LAKEHOUSE_NO_SUCH_SETTING", "1")
    assert load_settings({}).kafka_port == 9092
    with pytest.raises(SettingsError, match="^LAKEHOUSE_NO_SUCH_SETTING is not a known setting"):
        load_settings()


def test_settings_are_frozen_hashable_and_survive_pickling(tmp_path: Path) -> None:
    s = load_settings({"LAKEHOUSE_HOME": str(tmp_path), "LAKEHOUSE_EXCHANGES": "kraken"})
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and hash(copy) == hash(s) and {s: "x"}[copy] == "x"
    assert copy.home == tmp_path and copy.exchanges == ("kraken",)
    with pytest.raises(ValidationError, match="frozen"):
        s.kafka_port = 1  # type: ignore[misc]
    assert s.kafka_port == 9092


def test_copies_are_checked_and_do_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings({"LAKEHOUSE_EXCHANGES": "kraken"})
    monkeypatch.setenv("LAKEHOUSE_NO_SUCH_SETTING", "1")  # would fail any resolution from the environment
    monkeypatch.setenv("LAKEHOUSE_KAFKA_PORT", "19092")
    for copy in (s.replace(topic_prefix="md", producer_rate="5"), s.replace(topic_prefix="md", producer_rate=5)):
        assert (copy.topic_prefix, copy.producer_rate, copy.kafka_port) == ("md", 5.0, 9092)
        assert copy.exchanges == ("kraken",)
        assert isinstance(copy.producer_rate, float)
    with pytest.raises(SettingsError, match=r"^LAKEHOUSE_DLQ_PURGE_DAYS=10: must be greater than"):
        s.replace(dlq_purge_days=10)
    with pytest.raises(SettingsError, match=r"^LAKEHOUSE_KAFKA_PORT=0: must be a TCP port"):
        s.replace(kafka_port=0)
    with pytest.raises(SettingsError, match="'kafka_prot' is not a known setting"):
        s.replace(kafka_prot=1)
    assert list(type(s).model_fields) == list(setting_docs())


def test_keyword_arguments_win_over_the_environment_which_wins_over_the_file(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lakehouse.toml"
    config.write_text('kafka_port = 29092\ntopic_prefix = "file"\nstatsd_prefix = "file"\n')
    monkeypatch.setenv("LAKEHOUSE_CONFIG", str(config))
    monkeypatch.setenv("LAKEHOUSE_KAFKA_PORT", "39092")
    monkeypatch.setenv("LAKEHOUSE_TOPIC_PREFIX", "env")
    s = Settings(kafka_port=49092)
    assert (s.kafka_port, s.topic_prefix, s.statsd_prefix, s.statsd_port) == (49092, "env", "file", 8125)
    with pytest.raises(SettingsError, match="^LAKEHOUSE_KAFKA_PORT=0: must be a TCP port"):
        Settings(kafka_port="0")


def test_every_setting_is_documented() -> None:
    docs = setting_docs()
    assert len(docs) > 100 and all(docs.values())
    assert docs["kafka_port"] == "Port the embedded broker listens on."
