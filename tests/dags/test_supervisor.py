"""The ``make run`` supervisor's process handling: a stopped child leaves nothing behind, even
processes it orphaned; a child that dies is reported with its log."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from lakehouse.orchestration.supervisor import Child, ChildFailed, Supervisor, producer_argv, session_members
from lakehouse.settings import load_settings

# Starts a grandchild that ignores SIGINT/SIGTERM (like a busy JVM), then either waits or exits at
# once, orphaning the grandchild (re-parented to init, still in the child's session).
_SPAWNER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c",
                  "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "signal.signal(signal.SIGINT, signal.SIG_IGN); open(sys.argv[1], 'w').close(); time.sleep(600)",
                  sys.argv[1]])
if sys.argv[2] == "wait":
    time.sleep(600)
"""


def _child(tmp_path: Path, mode: str) -> tuple[Child, Path]:
    ready = tmp_path / "grandchild-ready"
    child = Child("spawner", [sys.executable, "-c", _SPAWNER, str(ready), mode], dict(os.environ),
                  tmp_path / "spawner.log")
    child.start()
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < deadline, child.tail()
        time.sleep(0.05)
    return child, ready


@pytest.mark.parametrize("mode", ["wait", "orphan"])
def test_stopping_a_child_stops_its_whole_session(tmp_path: Path, mode: str) -> None:
    child, _ = _child(tmp_path, mode)
    members = session_members(child.pid)
    try:
        assert len(members) >= 1  # at least the grandchild (the child itself may have exited: "orphan")
    finally:
        child.stop(signal.SIGINT, group=True, grace_s=1, force=lambda: False)
    assert session_members(child.pid) == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in members)
    assert child.exit_code() is not None


def test_a_child_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home")})
    supervisor = Supervisor(settings, out=open(os.devnull, "w"))  # noqa: SIM115
    child = Child("producer-binance", [sys.executable, "-c", "print('cannot reach kafka'); raise SystemExit(3)"],
                  dict(os.environ), tmp_path / "producer.log")
    child.start()
    child.proc.wait(30)  # type: ignore[union-attr]
    supervisor.children.append(child)
    with pytest.raises(ChildFailed, match=r"producer-binance exited with code 3(.|\n)*cannot reach kafka"):
        supervisor._check_children()
    child.stop(signal.SIGINT, group=True, grace_s=1, force=lambda: False)


def test_producers_replay_in_a_loop_at_the_configured_rate(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path), "LAKEHOUSE_PRODUCER_RATE": "250"})
    argv = producer_argv(settings, "kraken", None)
    assert argv[1:] == ["-m", "lakehouse", "produce", "--exchange", "kraken", "--rate", "250", "--loop"]
    assert producer_argv(settings, "kraken", tmp_path / "k.jsonl")[-2:] == ["--replay", str(tmp_path / "k.jsonl")]
