"""The production catalog path: Iceberg JDBC catalog on PostgreSQL, shared by Spark and pyiceberg.

Uses the PostgreSQL server on 127.0.0.1:5432 when there is one; skips with the reason otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import PG, postgres_databases

from lakehouse import names, tables
from lakehouse.catalog import CatalogUnavailableError, load_catalog
from lakehouse.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture()
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    with postgres_databases("lakehouse_test") as (db,):
        yield load_settings({"LAKEHOUSE_HOME": str(tmp_path), "LAKEHOUSE_CATALOG_NAME": f"pg_{db[-10:]}",
                             "LAKEHOUSE_CATALOG_URI": f"jdbc:postgresql://{PG['host']}:{PG['port']}/{db}",
                             "LAKEHOUSE_CATALOG_USER": PG["user"]})


def test_tables_on_postgres_are_shared_by_pyiceberg_and_spark(pg_settings: Settings, spark) -> None:  # type: ignore[no-untyped-def]
    if not pg_settings.spark_postgres_jdbc_jar.is_file():
        pytest.skip(f"{pg_settings.spark_postgres_jdbc_jar} missing: apt-get install libpostgresql-jdbc-java")
    from lakehouse.spark import session

    created = tables.ensure_tables(pg_settings)
    assert set(created) == set(names.all_tables(pg_settings))
    s = session(pg_settings, "pg")
    audit = names.qualified(pg_settings, names.AUDIT_TABLE)
    s.sql(f"INSERT INTO {audit} VALUES (current_timestamp(), 'silver', 'pg', 'on-postgres', NULL)")
    table = load_catalog(pg_settings).load_table(names.AUDIT_TABLE)
    assert table.scan().to_arrow().column("event").to_pylist() == ["on-postgres"]
    gold = names.qualified(pg_settings, names.GOLD_TABLE)
    assert s.sql(f"SELECT count(*) AS n FROM {gold}").collect()[0].n == 0


def test_unreachable_catalog_database_is_one_line(tmp_path: Path) -> None:
    from support import free_port

    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path),
                              "LAKEHOUSE_CATALOG_URI": f"jdbc:postgresql://127.0.0.1:{free_port()}/nowhere",
                              "LAKEHOUSE_CATALOG_USER": "postgres"})
    with pytest.raises(CatalogUnavailableError, match="catalog database unreachable") as err:
        load_catalog(settings)
    assert "\n" not in str(err.value)
