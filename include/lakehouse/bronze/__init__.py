"""Bronze: every Kafka record of an exchange into its Iceberg table, exactly once.

``planning`` is pure (offset ranges, admission cap, data-loss rules), ``kafka`` reads the
broker, ``iceberg`` holds the offsets-in-snapshot commit protocol, and ``run`` ties them into
one run (``run_bronze``), which ``spark_jobs/bronze_job.py`` calls.
"""
