"""Silver: decode Bronze's raw Kafka values, validate them, and dead-letter what fails.

Modules: :mod:`~lakehouse.silver.decode` (Confluent wire format + fastavro, per Arrow batch),
:mod:`~lakehouse.silver.rules` (validation rules as data), :mod:`~lakehouse.silver.transform`
(Bronze rows -> Silver rows and dead-letter rows), :mod:`~lakehouse.silver.writer` (idempotent
two-table writes), :mod:`~lakehouse.silver.job` (the entry point of a run: :mod:`~lakehouse.silver.stream`
runs the bounded streaming query, :mod:`~lakehouse.silver.batch` commits each micro-batch,
:mod:`~lakehouse.silver.reporting` logs and counts it, :mod:`~lakehouse.silver.failures` names what
went wrong), :mod:`~lakehouse.silver.tasks` (what one Spark task does),
:mod:`~lakehouse.silver.replay` (rebuild a Bronze range, re-validate the DLQ) and
:mod:`~lakehouse.silver.cli` (``lakehouse replay silver``, ``lakehouse dlq replay``).
"""
