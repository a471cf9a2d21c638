"""``lakehouse health`` (the figures and what is past a threshold, with an exit code for probes)
and ``lakehouse monitor`` (one run of what the pipeline_monitor DAG does every minute)."""

from __future__ import annotations

import argparse
from typing import Any

from lakehouse.settings import Settings

HEALTHY, WARNINGS, CRITICAL = 0, 1, 2


def _print_figures(health: Any) -> None:
    for figure in sorted(health.figures, key=lambda f: (f.labels.get("exchange", ""), f.name, f.key())):
        labels = ",".join(f"{k}={v}" for k, v in sorted(figure.labels.items()))
        print(f"{figure.name:<24} {labels:<64} {figure.value:>12.3f}")


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when healthy, 1 on warnings, 2 on critical figures or on figures it could not measure."""
    from lakehouse.cli import to_json
    from lakehouse.monitor.figures import collect
    from lakehouse.monitor.overview import assess, health_json

    health = collect(settings)
    verdict = assess(settings, health)
    if args.json:
        print(to_json(health_json(health, verdict)))
        return verdict.code
    _print_figures(health)
    for error in health.errors:
        print(f"not measured: {error}")
    for breach in verdict.breaches:
        print(breach.text)
    for key, alert in sorted(verdict.firing.items()):
        print(f"firing (pipeline_monitor): {alert.severity} {key}: {alert.summary}")
    print(verdict.status)
    return verdict.code


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    from lakehouse.cli import to_json
    from lakehouse.monitor.figures import as_json
    from lakehouse.monitor.run import run_monitor

    result = run_monitor(settings)
    if args.json:
        print(to_json({**as_json(result.health), "notifications": [n.text for n in result.notifications]}))
    else:
        _print_figures(result.health)
        for note in result.notifications:
            print(note.text)
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("health", help="lag, freshness, dead-letter rate and alerts; exit 0 healthy, 1 warning, "
                                      "2 critical")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_health)
    p = sub.add_parser("monitor", help="one pipeline_monitor run: measure, send to StatsD, notify alert changes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_monitor)


__all__ = ["add_commands", "cmd_health", "cmd_monitor"]
