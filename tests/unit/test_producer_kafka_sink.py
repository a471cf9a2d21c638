"""KafkaSink without a broker: configuration, and failed deliveries counted instead of lost silently."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support import free_port, make_env

from lakehouse.producer.kafka import KafkaSink, producer_config
from lakehouse.producer.pipeline import Stats
from lakehouse.settings import Settings, load_settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def nowhere(tmp_path: Path) -> Settings:
    """Settings whose bootstrap server has nothing listening."""
    return load_settings(make_env(tmp_path / "home", LAKEHOUSE_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
                                  LAKEHOUSE_PRODUCER_COMPRESSION="lz4", LAKEHOUSE_PRODUCER_LINGER_MS="20"))


def test_producer_is_idempotent_acks_all_and_follows_the_settings(nowhere: Settings) -> None:
    config = producer_config(nowhere, "client-x")
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert config["compression.type"] == "lz4" and config["linger.ms"] == 20
    assert config["bootstrap.servers"] == nowhere.bootstrap_servers and config["client.id"] == "client-x"
    assert config["partitioner"] == "murmur2_random"  # same placement by key as Java clients


def test_undeliverable_records_are_counted_and_logged(nowhere: Settings, caplog: pytest.LogCaptureFixture) -> None:
    stats = Stats()
    sink = KafkaSink(nowhere, stats, overrides={"message.timeout.ms": 300})
    try:
        with caplog.at_level(logging.ERROR, logger="lakehouse.producer.kafka"):
            for i in range(3):
                sink.produce("crypto.trades.kraken", b"value-%d" % i, b"BTC/USD")
            assert sink.flush(20) == 0
    finally:
        sink.close()
    assert stats.delivery_errors == 3
    assert [r.getMessage() for r in caplog.records].count("delivery failed") == 3


def test_a_record_the_client_refuses_is_a_delivery_error(nowhere: Settings) -> None:
    stats = Stats()
    sink = KafkaSink(nowhere, stats, overrides={"message.max.bytes": 1000})
    try:
        sink.produce("crypto.trades.kraken", b"x" * 5000, None)
    finally:
        sink.close()
    assert stats.delivery_errors == 1


def test_close_drops_what_flush_could_not_deliver_without_double_counting(nowhere: Settings) -> None:
    stats = Stats()
    sink = KafkaSink(nowhere, stats)  # default message timeout: minutes
    sink.produce("crypto.trades.kraken", b"value", b"key")
    stats.undelivered = sink.flush(0.2)
    sink.close()
    assert (stats.undelivered, stats.delivery_errors) == (1, 0)
