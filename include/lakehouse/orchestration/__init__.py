"""Airflow orchestration: DAG-building helpers, the alert notifier, the ``lakehouse airflow`` command
and the ``make run`` supervisor.

Modules that import Airflow (``dags``, ``operators``, ``notify``) are only imported by DAG files and
Airflow processes; ``environment``, ``alerts``, ``cli`` and ``supervisor`` stay Airflow-free so the
``lakehouse`` command starts fast and never creates an Airflow home as a side effect.
"""
