"""The commit path's pyiceberg transaction (``lakehouse.catalog.transaction``): staged metadata is
computed once per change, commits land as with pyiceberg's own transaction, and the pyiceberg API
it overrides is still there (a version bump that moves it fails here, not in a layer run)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table, Transaction

from lakehouse.catalog import transaction


@pytest.fixture()
def table(tmp_path: Path) -> Table:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=tmp_path.as_uri())
    catalog.create_namespace("ns")
    return catalog.create_table("ns.trades", pa.schema([("trade_id", pa.int64())]))


def test_staged_metadata_is_computed_once_per_change(table: Table) -> None:
    tx = transaction(table)
    first = tx.table_metadata
    assert tx.table_metadata is first  # pyiceberg's own transaction returns a fresh deep copy per read
    tx.set_properties(owner="lakehouse")
    staged = tx.table_metadata
    assert staged is not first and staged.properties["owner"] == "lakehouse"
    assert tx.table_metadata is staged


def test_appends_through_it_commit_every_row_and_summary(table: Table) -> None:
    for first in range(0, 30, 10):
        with transaction(table) as tx:
            tx.append(pa.table({"trade_id": list(range(first, first + 10))}), snapshot_properties={"batch": str(first)})
    table.refresh()
    assert sorted(table.scan().to_arrow()["trade_id"].to_pylist()) == list(range(30))
    assert [s.summary["batch"] for s in table.snapshots()] == ["0", "10", "20"]


def test_a_refreshed_table_is_seen_by_the_transaction(table: Table) -> None:
    tx = transaction(table)
    before = tx.table_metadata
    with transaction(table) as other:
        other.set_properties(written="elsewhere")
    table.refresh()  # what pyiceberg does before it retries a commit
    assert tx.table_metadata is not before and tx.table_metadata.properties["written"] == "elsewhere"


def test_the_pyiceberg_api_it_overrides_is_still_there() -> None:
    assert isinstance(vars(Transaction).get("table_metadata"), property), \
        "pyiceberg's Transaction.table_metadata is no longer a property: revisit lakehouse.catalog.transaction"
    assert {"_table", "_updates"} <= set(Transaction.__annotations__), Transaction.__annotations__


def test_staged_metadata_is_pyiceberg_s_own_result_and_leaves_the_base_unchanged(table: Table) -> None:
    """staged_metadata drops update_table_metadata's final deep copy: only safe while every update
    builds new containers instead of changing the base's, which this checks on a real append."""
    from pyiceberg.table.update import update_table_metadata

    from lakehouse.catalog import staged_metadata

    with transaction(table) as tx:
        tx.append(pa.table({"trade_id": [1]}), snapshot_properties={"batch": "first"})
    table.refresh()
    tx = transaction(table)
    tx.set_properties(owner="lakehouse")
    tx.append(pa.table({"trade_id": [2]}), snapshot_properties={"batch": "second"})
    base, updates = table.metadata, tx._updates
    before = base.model_dump_json()
    ours = staged_metadata(base, updates, table.metadata_location)
    theirs = update_table_metadata(base, updates, metadata_location=table.metadata_location)
    assert base.model_dump_json() == before, "staging changed the base metadata"
    assert ours.model_dump(exclude={"last_updated_ms"}) == theirs.model_dump(exclude={"last_updated_ms"})
    assert len(ours.snapshots) == 2 and ours.properties["owner"] == "lakehouse"
    assert ours.metadata_log[-1].metadata_file == table.metadata_location


def test_the_pyiceberg_internals_staging_uses_are_still_there() -> None:
    import inspect

    from pyiceberg.table import update

    for name in ("_apply_table_update", "_TableMetadataUpdateContext", "_update_table_metadata_log"):
        assert hasattr(update, name), f"pyiceberg.table.update.{name} is gone: revisit lakehouse.catalog.staged_metadata"
    source = inspect.getsource(update.update_table_metadata)
    assert "model_copy(deep=True)" in source and "_apply_table_update" in source, \
        "pyiceberg's update_table_metadata changed: compare it with lakehouse.catalog.staged_metadata"
    stage = inspect.signature(SqlCatalog._update_and_stage_table)
    assert list(stage.parameters) == ["self", "current_table", "table_identifier", "requirements", "updates"]
