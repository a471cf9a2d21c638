"""``python -m lakehouse.bench [NAME ...] [--scale F]``: run the benchmarks (all by default).

``python -m lakehouse.bench sustained [--rate R --minutes M ...]`` runs the sustained-load
benchmark of the orchestrated stack instead (``make bench-sustained``; see lakehouse.bench.sustained).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lakehouse.bench import BENCHMARKS
from lakehouse.logs import configure_logging


def main() -> int:
    if sys.argv[1:2] == ["sustained"]:  # the whole orchestrated stack, with options of its own; never run by default
        from lakehouse.bench.sustained import main as sustained

        return sustained(sys.argv[2:])
    parser = argparse.ArgumentParser(prog="python -m lakehouse.bench")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the data volumes (e.g. 0.1 for a smoke run)")
    args = parser.parse_args()
    configure_logging("WARNING", json_logs=True)
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    for name in args.names or BENCHMARKS:
        importlib.import_module(f"lakehouse.bench.{name}").run(args.scale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
