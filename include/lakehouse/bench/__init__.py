"""Benchmarks (``make bench``): each module measures a stage and its floor in the same run.

Every figure is printed as one line ``BENCH <name> <value> <unit>``. Performance targets live
here, never in timed unit tests.
"""

from __future__ import annotations

import socket

# Benchmark modules in run order; each defines ``run(scale: float) -> None``.
BENCHMARKS: tuple[str, ...] = ("producer", "bronze", "gold", "silver", "runcost", "maintenance", "ui")


def report(name: str, value: float, unit: str) -> None:
    """Print one figure in the BENCH line format (flushed: benchmarks run for minutes)."""
    shown = f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    print(f"BENCH {name} {shown} {unit}", flush=True)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a benchmark's isolated stack (broker, StatsD, Airflow)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
