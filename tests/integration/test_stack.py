"""The embedded stack on real services: broker, catalog shared by Spark and pyiceberg, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from support import make_env
from lakehouse import broker, names, stack
from lakehouse.catalog import load_catalog
from lakehouse.settings import Settings, load_settings
from lakehouse.spark import session

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "lakehouse"]


def _cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def test_produce_and_consume_through_the_real_broker(stack_settings: Settings) -> None:
    topic = names.topic(stack_settings, stack_settings.exchanges[0])
    producer = Producer({"bootstrap.servers": stack_settings.bootstrap_servers, "enable.idempotence": True})
    sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(50)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": stack_settings.bootstrap_servers, "group.id": "t-stack",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(stack_settings.topic_partitions)])
        got: dict[bytes, bytes] = {}
        eof: set[int] = set()
        deadline = time.monotonic() + 30
        while len(eof) < stack_settings.topic_partitions and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1):
                if msg.error():
                    eof.add(msg.partition())
                else:
                    got[msg.key()] = msg.value()
    finally:
        consumer.close()
    assert got == sent


def test_topics_created_idempotently_with_configured_partitions(isolated: Settings) -> None:
    assert broker.ensure_topics(isolated) == []  # `up` already made them
    meta = broker.admin(isolated).list_topics(timeout=10).topics
    for exchange in isolated.exchanges:
        assert len(meta[names.topic(isolated, exchange)].partitions) == isolated.topic_partitions
        assert names.rejects_topic(isolated, exchange) in meta


def test_tables_are_shared_by_spark_and_pyiceberg(isolated: Settings, spark) -> None:  # type: ignore[no-untyped-def]
    s = session(isolated, "t")
    audit = names.qualified(isolated, names.AUDIT_TABLE)
    s.sql(f"INSERT INTO {audit} VALUES (current_timestamp(), 'bronze', 'spark', 'written-by-spark', '{{}}')")
    table = load_catalog(isolated).load_table(names.AUDIT_TABLE)
    assert table.scan().to_arrow().column("event").to_pylist() == ["written-by-spark"]
    assert table.metadata.format_version == 2
    assert table.properties["write.target-file-size-bytes"] == str(128 * 1024 * 1024)
    arrow_schema = table.schema().as_arrow()
    row = pa.Table.from_pylist([{"event_time": pa.scalar(0, pa.timestamp("us", "UTC")).as_py(), "layer": "gold",
                                 "source": "pyiceberg", "event": "written-by-pyiceberg", "detail": None}],
                               schema=arrow_schema)
    table.append(row)
    events = {r.event for r in s.sql(f"SELECT event FROM {audit}").collect()}
    assert events == {"written-by-spark", "written-by-pyiceberg"}
    gold = names.qualified(isolated, names.GOLD_TABLE)
    cols = [r.col_name for r in s.sql(f"DESCRIBE TABLE {gold}").collect()]
    assert cols[:3] == ["message_id", "trade_id", "symbol"]


def test_up_twice_is_harmless_and_down_leaves_no_process(tmp_path: Path) -> None:
    settings = load_settings(make_env(tmp_path / "home"))
    first = stack.up(settings)
    try:
        second = stack.up(settings)
        assert second["broker_pid"] == first["broker_pid"]
        assert second["tables_created"] == [] and second["topics_created"] == []
        assert len(first["tables_created"]) == len(names.all_tables(settings))
    finally:
        stack.down(settings)
    assert not psutil.pid_exists(first["broker_pid"]) or \
        psutil.Process(first["broker_pid"]).status() == psutil.STATUS_ZOMBIE
    assert not broker.port_open(settings.kafka_host, settings.kafka_port)
    assert stack.down(settings) == {"broker_stopped": False}


def test_two_stacks_run_side_by_side(stack_settings: Settings, isolated: Settings) -> None:
    assert stack_settings.kafka_port != isolated.kafka_port and stack_settings.home != isolated.home
    assert broker.status(stack_settings).reachable and broker.status(isolated).reachable
    producer = Producer({"bootstrap.servers": isolated.bootstrap_servers})
    topic = names.topic(isolated, isolated.exchanges[0])
    producer.produce(topic, value=b"only-in-isolated")
    producer.flush(10)
    other = broker.topic_offsets(stack_settings, "does-not-exist")
    assert other == {}


def test_cli_on_a_fresh_stack(tmp_path: Path) -> None:
    env = make_env(tmp_path / "home")
    try:
        up = _cli(env, "up")
        assert up.returncode == 0, up.stderr
        again = _cli(env, "up", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["tables_created"] == []
        sql = _cli(env, "sql", "--json", "SELECT count(*) AS n FROM market_data.gold_crypto_trades")
        assert sql.returncode == 0, sql.stderr
        assert sql.stdout.strip().splitlines() == ['{"n": 0}']
        status = _cli(env, "status", "--json")
        info = json.loads(status.stdout)
        assert info["broker"]["running"] and info["tables"]["market_data.gold_crypto_trades"]["records"] == 0
        assert set(info["topics"]) == {"crypto.trades.binance", "crypto.trades.kraken"}
        bad_sql = _cli(env, "sql", "SELECT * FROM market_data.no_such_table")
        assert bad_sql.returncode == 2 and bad_sql.stderr.strip().startswith("lakehouse: error: query failed")
    finally:
        down = _cli(env, "down")
        assert down.returncode == 0
    assert not broker.port_open("127.0.0.1", int(env["LAKEHOUSE_KAFKA_PORT"]))


def test_cli_config_and_bad_values(tmp_path: Path) -> None:
    env = make_env(tmp_path / "home", LAKEHOUSE_TOPIC_PARTITIONS="6")
    shown = _cli(env, "config", "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["topic_partitions"] == 6
    bad = _cli({**env, "LAKEHOUSE_TOPIC_PARTITIONS": "six"}, "status")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "lakehouse: error: LAKEHOUSE_TOPIC_PARTITIONS='six' is not a valid int: " \
                                 "invalid literal for int() with base 10: 'six'"


def test_port_in_use_is_a_clear_error(stack_settings: Settings, tmp_path: Path) -> None:
    clash = load_settings(make_env(tmp_path / "home", LAKEHOUSE_KAFKA_PORT=str(stack_settings.kafka_port)))
    with pytest.raises(broker.BrokerError, match="already in use"):
        broker.start(clash)
