"""``python -m lakehouse`` is the same as the ``lakehouse`` command."""

from __future__ import annotations

from lakehouse.cli import main

raise SystemExit(main())
