"""The crypto trades lakehouse: settings, stack, producers, layers and CLI in one package."""

from __future__ import annotations

__version__ = "0.1.0"
