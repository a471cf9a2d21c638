"""Per-run cost breakdown of each layer (part of ``make bench``).

A short sustained run of the whole orchestrated pipeline (``make run``'s stack, Airflow included)
at 2,000 trades/s: every layer run writes its report (:mod:`lakehouse.runreport`), and the
median of each phase per layer is printed as ``BENCH <layer>_<phase>_s``: Airflow hand-off,
spark-submit to session ready, planning, work, commit, exit. The floor, measured in the same
run, is a bare spark-submit of the project's Spark session (``spark_session_floor_*``). The
15-minute version with the service-level figures is ``make bench-sustained``.
"""

from __future__ import annotations

from lakehouse.bench.sustained import main as sustained

RATE = 2000
MINUTES = 4.0
DRAIN_MINUTES = 1.5


def run(scale: float) -> None:
    """``scale`` stretches the steady state (at least 3 minutes: two of them are warm-up)."""
    minutes = max(3.0, MINUTES * scale)
    code = sustained(["--rate", str(RATE), "--minutes", f"{minutes:g}", "--drain-minutes", f"{DRAIN_MINUTES:g}",
                      "--cleanup"])
    if code != 0:
        raise SystemExit(f"runcost: the sustained run exited with {code}")
