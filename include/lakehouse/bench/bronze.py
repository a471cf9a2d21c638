"""Bronze throughput: one Bronze run over 1,000,000 Kafka records vs plain consumption of them.

An isolated stack (temporary LAKEHOUSE_HOME, free ports) gets N realistic V2 trade values
(Avro, Confluent framing, ~150 bytes) produced with raw confluent-kafka. The floor is one
process consuming all of them with confluent-kafka and nothing else; the measured run is
``run_bronze`` (the function the Spark job calls) in a SparkSession that already ran a warm-up
run of N/10 records on another exchange, so the figure is ingestion throughput, not JVM start-up
and JIT compilation; the warm-up's own rate is reported as the fresh-JVM figure.
"""

from __future__ import annotations

import decimal
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from lakehouse import avro, names, stack
from lakehouse.bench import free_port, report
from lakehouse.bronze.kafka import consumer_config
from lakehouse.settings import Settings, load_settings

RECORDS = 1_000_000
WARMUP_FRACTION = 10
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "DOGE-USDT", "ADA-USDT", "BNB-USDT", "AVAX-USDT")




def _values(exchange: str, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` distinct (key, value) pairs: V2 trades in the Confluent wire format."""
    rng = random.Random(42)
    schema = avro.parsed_trade_schema()
    now_us = int(time.time() * 1_000_000)
    out = []
    for i in range(count):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        record = {
            "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{exchange}/{symbol}/{i}")),
            "trade_id": str(1_000_000_000 + i), "symbol": symbol, "exchange": exchange, "asset_class": "crypto",
            "timestamp": now_us - rng.randrange(10**9), "price": decimal.Decimal(f"{rng.uniform(0.1, 90_000):.8f}"),
            "quantity": decimal.Decimal(f"{rng.uniform(0.0001, 50):.8f}"), "currency": "USDT",
            "side": rng.choice(("BUY", "SELL")), "trade_conditions": [], "source_sequence": i,
            "ingestion_timestamp": now_us, "platform_sequence": i,
            "vendor_data": {"E": str(now_us // 1000), "m": rng.choice(("true", "false")), "M": "true"},
        }
        out.append((symbol.encode(), avro.encode(1, schema, record)))
    return out


def produce(settings: Settings, topic: str, exchange: str, count: int) -> float:
    """Produce ``count`` records as fast as the producer allows; returns the mean value size."""
    pairs = _values(exchange, min(count, 5000))
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 20,
                         "compression.type": settings.producer_compression, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000})
    for i in range(count):
        key, value = pairs[i % len(pairs)]
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise RuntimeError("producer did not deliver every record within 120s")
    return sum(len(v) for _, v in pairs) / len(pairs)


def floor(settings: Settings, topic: str, group_id: str, partitions: int, expected: int) -> float:
    """Plain confluent-kafka consumption of every record in one process; records/s."""
    consumer = Consumer(consumer_config(settings.bootstrap_servers, group_id))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        done: set[int] = set()
        count = 0
        started = time.perf_counter()
        while len(done) < partitions:
            for msg in consumer.consume(10_000, 1.0):
                err = msg.error()
                if err is None:
                    msg.value()
                    count += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                else:
                    raise RuntimeError(f"floor consumer: {err.str()}")
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if count != expected:
        raise RuntimeError(f"floor consumed {count} records, expected {expected}")
    return count / elapsed


def run(scale: float) -> None:
    from lakehouse.bronze.run import run_bronze
    from lakehouse.spark import session

    count = max(1000, int(RECORDS * scale))
    home = Path(tempfile.mkdtemp(prefix="lakehouse-bench-bronze-"))
    settings = load_settings({"LAKEHOUSE_HOME": str(home), "LAKEHOUSE_KAFKA_PORT": str(free_port()),
                              "LAKEHOUSE_STATSD_PORT": str(free_port()), "LAKEHOUSE_LOG_LEVEL": "WARNING",
                              "LAKEHOUSE_BRONZE_MAX_RECORDS_PER_RUN": str(max(count, 2_000_000))})
    exchange, warmup = settings.exchanges[0], settings.exchanges[-1]
    topic = names.topic(settings, exchange)
    spark = None
    try:
        stack.up(settings)
        started = time.perf_counter()
        size = produce(settings, topic, exchange, count)
        report("bronze_produce_records_per_s", count / (time.perf_counter() - started), "records/s")
        report("bronze_value_bytes", size, "bytes")
        floor_rate = floor(settings, topic, names.bronze_reader_group(exchange), settings.topic_partitions, count)
        report("bronze_floor_records_per_s", floor_rate, "records/s")

        # Warm-up on the other exchange: JVM class loading and JIT, Python workers. Its rate is the
        # first-run figure of a fresh JVM (what each per-minute spark-submit pays).
        spark = session(settings, "lakehouse-bench-bronze")
        if warmup != exchange:
            warm_count = max(1000, count // WARMUP_FRACTION)
            produce(settings, names.topic(settings, warmup), warmup, warm_count)
            started = time.perf_counter()
            run_bronze(spark, settings, warmup)
            report("bronze_cold_jvm_records_per_s", warm_count / (time.perf_counter() - started), "records/s")
        started = time.perf_counter()
        result = run_bronze(spark, settings, exchange)
        elapsed = time.perf_counter() - started
        if result.records != count:
            raise RuntimeError(f"Bronze ingested {result.records} records, expected {count}")
        rate = count / elapsed
        report("bronze_run_s", elapsed, "s")
        report("bronze_records_per_s", rate, "records/s")
        report("bronze_vs_floor", rate / floor_rate, "ratio")
    finally:
        if spark is not None:
            spark.stop()
        stack.down(settings)
        shutil.rmtree(home, ignore_errors=True)
