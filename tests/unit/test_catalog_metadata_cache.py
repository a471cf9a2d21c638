"""Table metadata parsed once per metadata file (``lakehouse.catalog.METADATA_CACHE``): repeated
loads and a commit's next load reuse it, another writer's commit is still seen at once, the cache
stays bounded, and the pyiceberg internals it overrides are still there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.serializers import FromInputFile

from lakehouse import catalog as lakehouse_catalog
from lakehouse.catalog import METADATA_CACHE, MetadataCache, transaction

SCHEMA = pa.schema([("trade_id", pa.int64())])


@pytest.fixture()
def uri(tmp_path: Path) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    plain = SqlCatalog("t", uri=uri, warehouse=tmp_path.as_uri())
    plain.create_namespace("ns")
    plain.create_table("ns.trades", SCHEMA)
    METADATA_CACHE.clear()
    yield uri
    METADATA_CACHE.clear()


@pytest.fixture()
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    parse = FromInputFile.table_metadata

    def counted(input_file, encoding="utf-8"):  # type: ignore[no-untyped-def]
        seen.append(input_file.location)
        return parse(input_file, encoding)

    monkeypatch.setattr(FromInputFile, "table_metadata", staticmethod(counted))
    return seen


def ours(uri: str, tmp_path: Path) -> SqlCatalog:
    return lakehouse_catalog._catalog_class()("t", "jdbc:sqlite:test", uri=uri, warehouse=tmp_path.as_uri())


def test_loads_of_an_unchanged_table_parse_its_metadata_once(uri: str, tmp_path: Path, parses: list[str]) -> None:
    first = ours(uri, tmp_path).load_table("ns.trades")
    second = ours(uri, tmp_path).load_table("ns.trades")  # another catalog object of the same process
    assert len(parses) == 1
    assert second.metadata is first.metadata and second.metadata_location == first.metadata_location
    assert second.name() == ("ns", "trades") and second.catalog is not first.catalog


def test_the_load_after_a_commit_reuses_what_the_commit_wrote(uri: str, tmp_path: Path, parses: list[str]) -> None:
    table = ours(uri, tmp_path).load_table("ns.trades")
    with transaction(table) as tx:
        tx.append(pa.table({"trade_id": [1, 2]}, schema=SCHEMA), snapshot_properties={"batch": "a"})
    parsed = len(parses)
    loaded = ours(uri, tmp_path).load_table("ns.trades")
    assert len(parses) == parsed, "the committed metadata was parsed again"
    assert loaded.metadata_location == table.metadata_location and loaded.metadata is table.metadata
    assert loaded.current_snapshot().summary["batch"] == "a"  # type: ignore[union-attr]
    assert loaded.scan().to_arrow()["trade_id"].to_pylist() == [1, 2]


def test_another_writer_s_commit_is_seen_on_the_next_load(uri: str, tmp_path: Path, parses: list[str]) -> None:
    mine = ours(uri, tmp_path)
    before = mine.load_table("ns.trades")
    other = SqlCatalog("t", uri=uri, warehouse=tmp_path.as_uri()).load_table("ns.trades")
    other.append(pa.table({"trade_id": [7]}, schema=SCHEMA))
    after = mine.load_table("ns.trades")
    assert after.metadata_location != before.metadata_location
    assert after.current_snapshot() is not None and before.current_snapshot() is None
    assert parses[-1] == after.metadata_location  # parsed: a file this process has not seen


def test_the_cache_keeps_the_most_recently_used_few() -> None:
    cache = MetadataCache(size=2)
    cache.put("a", "A")  # type: ignore[arg-type]
    cache.put("b", "B")  # type: ignore[arg-type]
    assert cache.get("a") == "A"  # now the most recent
    cache.put("c", "C")  # type: ignore[arg-type]
    assert cache.get("b") is None and cache.get("a") == "A" and cache.get("c") == "C"
    cache.put(None, "N")  # type: ignore[arg-type]  # a response without a location is not kept
    assert cache.get("a") == "A"


def test_the_pyiceberg_internals_it_overrides_are_still_there() -> None:
    import inspect

    convert = getattr(SqlCatalog, "_convert_orm_to_iceberg", None)
    assert convert is not None, "SqlCatalog._convert_orm_to_iceberg is gone: revisit lakehouse.catalog"
    assert list(inspect.signature(convert).parameters) == ["self", "orm_table"]
    assert "FromInputFile.table_metadata" in inspect.getsource(convert), \
        "SqlCatalog no longer parses metadata in _convert_orm_to_iceberg: revisit lakehouse.catalog"
    assert callable(getattr(SqlCatalog, "_load_file_io", None))
