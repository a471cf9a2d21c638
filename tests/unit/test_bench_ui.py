"""The Lakehouse page benchmark builds a valid row for every table of the product (no catalog)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from lakehouse.bench.ui import _value
from lakehouse.settings import load_settings
from lakehouse.tables import table_defs


def test_a_row_of_every_table_schema(tmp_path: Path) -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    for definition in table_defs(load_settings({"LAKEHOUSE_HOME": str(tmp_path)})):
        schema = definition.schema().as_arrow()
        row = {f.name: _value(f, now) for f in schema}
        assert pa.Table.from_pylist([row], schema=schema).num_rows == 1, definition.name
