"""The Kafka side of the producer: an idempotent, acks=all confluent-kafka producer.

Idempotence makes librdkafka's internal retries safe (no duplicates, per-partition order
kept). Delivery reports are requested for failures only, so a healthy run pays no Python
callback per record; every failure is counted and logged. Records are keyed by symbol and
partitioned with murmur2, the Java client's partitioner, so all clients agree on placement.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from lakehouse.producer.pipeline import Stats, worth_logging
from lakehouse.settings import Settings

log = logging.getLogger(__name__)

_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """librdkafka configuration of the trade producers (the benchmark's floor uses the same)."""
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.producer_compression,
        "linger.ms": settings.producer_linger_ms,
        "partitioner": "murmur2_random",
        "delivery.report.only.error": True,
    }


class KafkaSink:
    """A confluent-kafka producer that counts delivery errors in ``stats``."""

    def __init__(self, settings: Settings, stats: Stats, *, client_id: str = "lakehouse-producer",
                 overrides: dict[str, Any] | None = None) -> None:
        self.stats = stats
        config = producer_config(settings, client_id)
        config.update(overrides or {})
        config["on_delivery"] = self._on_delivery
        config["error_cb"] = self._on_error
        self._producer = Producer(config)
        self._produce = self._producer.produce

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None or err.code() in _PURGED:  # purged at close: already counted as undelivered
            return
        self.stats.delivery_errors += 1
        if worth_logging(self.stats.delivery_errors):
            log.error("delivery failed", extra={"topic": msg.topic(), "error": str(err),
                                                "delivery_errors": self.stats.delivery_errors})

    @staticmethod
    def _on_error(err: KafkaError) -> None:
        # Client-level problems (broker down, all brokers unreachable): librdkafka keeps retrying.
        log.warning("kafka client error", extra={"error": str(err), "fatal": err.fatal()})

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        """Queue one record; waits (serving callbacks) while the local queue is full."""
        while True:
            try:
                self._produce(topic, value, key)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as err:  # refused locally (too large, unknown topic): a delivery error
                self.stats.delivery_errors += 1
                log.error("produce refused", extra={"topic": topic, "error": str(err),
                                                    "delivery_errors": self.stats.delivery_errors})
                return

    def poll(self, timeout: float = 0.0) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait for every queued record to be acknowledged; returns how many are still undelivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            log.error("records not acknowledged before the flush timeout",
                      extra={"undelivered": remaining, "timeout_s": timeout})
        return remaining

    def close(self) -> None:
        """Release the client. Call after :meth:`flush`: records still queued then are dropped (counted)."""
        self._producer.purge()
        self._producer.close()
