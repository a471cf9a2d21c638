"""What ``make run`` runs (``lakehouse run-all``), in a temp home on free ports: the Airflow UI comes
up, Gold fills with trades from both exchanges, the maintenance DAGs run on their schedules without
anyone unpausing them, the README's manual triggers (``lakehouse airflow dags trigger``) get runs
that succeed; a person signs in to the Airflow UI in a browser, opens the Lakehouse page from the
navigation and sees its charts drawn with data, and its Silver lag grow once the Silver DAG is paused
(a screenshot is kept), while a browser without a login gets no figures; pausing the Silver DAG makes
the monitor's Silver figures grow and its job-down alert fire as a warning then as critical (once
each) and resolve once Silver is unpaused; and SIGTERM leaves no process behind.

One run serves every test of the module (a module-scoped fixture; the tests run in file order and
share a single Silver pause): starting the stack takes minutes.

The seconds to UI and to Gold are printed (a figure, not an assertion: performance is measured,
never asserted by a timed test); the timeouts below only bound a hung run.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lakehouse_browser as web
import psutil
import pytest
from support import free_port, make_env

from lakehouse import names
from lakehouse.broker import port_open
from lakehouse.catalog import load_catalog
from lakehouse.orchestration.alerts import alerts_log_path
from lakehouse.orchestration.environment import api_url, metadata_db_path, password_file, ui_healthy
from lakehouse.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path,
              timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run-all exited ({proc.returncode}) before {what}:\n{_tail(log)}")
        if check():
            return
        time.sleep(5)
    raise AssertionError(f"no {what} within {timeout_s:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _gold_exchanges(settings: Settings) -> set[str]:
    catalog = load_catalog(settings)
    if not catalog.table_exists(names.GOLD_TABLE):
        return set()
    rows = catalog.load_table(names.GOLD_TABLE).scan(selected_fields=("exchange",)).to_arrow()
    return {str(exchange).lower() for exchange in rows.column("exchange").to_pylist()}  # V2 says BINANCE


# The README's manual triggers, as a user types them; the DAGs that must run on their schedules.
DLQ_REPLAY_CONF = {"error_type": "invalid_timestamp"}
SCHEDULED = (names.MAINTENANCE_DAG, names.DLQ_RETENTION_DAG)


def _runs(settings: Settings) -> tuple[dict[tuple[str, str], str], dict[str, bool]]:
    """(dag_id, run_type) -> state of its latest run, and dag_id -> paused, from Airflow's metadata database."""
    db = metadata_db_path(settings)
    if not db.exists():
        return {}, {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        runs = conn.execute("SELECT dag_id, run_type, state FROM dag_run ORDER BY id").fetchall()
        paused = conn.execute("SELECT dag_id, is_paused FROM dag").fetchall()
    return ({(dag_id, run_type): state for dag_id, run_type, state in runs},
            {dag_id: bool(flag) for dag_id, flag in paused})


def _trigger(env: dict[str, str], dag_id: str, conf: dict[str, str] | None) -> None:
    args = [sys.executable, "-m", "lakehouse", "airflow", "dags", "trigger", dag_id]
    if conf is not None:
        args += ["--conf", json.dumps(conf)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(args[2:])}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def _tree(root: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# The monitor runs once a minute: a warning threshold more than a minute below the critical one
# guarantees a run that sees the warning before one sees the critical.
JOB_DOWN_WARNING_S, JOB_DOWN_CRITICAL_S = 30, 150


def _lakehouse(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lakehouse", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _silver_alerts(settings: Settings) -> list[tuple[str, str, str]]:
    """(event, severity, exchange) of every job_down alert on Silver in the alert log, in order."""
    path = alerts_log_path(settings)
    lines = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    return [(ln["event"], ln["severity"], ln["details"]["labels"]["exchange"]) for ln in lines
            if ln["details"].get("rule") == "job_down" and ln["details"]["labels"].get("layer") == "silver"]


def _silver_stalled(env: dict[str, str]) -> dict[str, float]:
    done = _lakehouse(env, "health", "--json")
    assert done.returncode in (0, 1, 2), done.stderr[-2000:]
    figures = json.loads(done.stdout)["figures"]
    return {f["labels"]["exchange"]: f["value"] for f in figures
            if f["name"] == "stalled_seconds" and f["labels"]["layer"] == "silver"}


@dataclass
class RunAll:
    """The module's one ``lakehouse run-all`` and what the tests learn about it along the way."""

    env: dict[str, str]
    settings: Settings
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    ui_s: float | None = None
    gold_s: float | None = None
    gold_ready: bool = False
    gold_failed: str | None = None
    # Set by the first pause of the Silver DAG: where each exchange's alert episode starts in the alert
    # log, and the monitor's Silver stalled seconds right after the pause.
    episode_start: dict[str, int] | None = None
    stalled_at_pause: dict[str, float] = field(default_factory=dict)
    stopped_code: int | None = None

    def wait_for(self, what: str, check: Callable[[], bool], timeout_s: float) -> None:
        _wait_for(what, check, self.proc, self.log, timeout_s)

    def remember(self) -> None:
        """Note every process run-all has started so far, to check the stop leaves none."""
        for p in _tree(self.proc.pid):
            self.seen.setdefault(p.pid, p)

    def wait_for_gold(self) -> None:
        """Gold rows from every exchange, scheduled maintenance runs and a successful manual replay (once)."""
        if self.gold_ready:
            return
        if self.gold_failed is not None:  # one wait per run: a later test fails at once
            pytest.fail(f"run-all never got there: {self.gold_failed}")
        replay = (names.DLQ_REPLAY_DAG, "manual")
        expected = {replay} | {(d, "scheduled") for d in SCHEDULED}
        settings = self.settings

        def gold_has_both_and_runs_done() -> bool:
            self.remember()
            if self.gold_s is None and _gold_exchanges(settings) >= set(settings.exchanges):
                self.gold_s = time.monotonic() - self.started
            runs, paused = _runs(settings)
            failed = {k: v for k, v in runs.items() if v == "failed"}
            assert not failed, f"runs failed: {failed}\n{_tail(self.log)}"
            assert (names.MAINTENANCE_DAG, "manual") in runs and not paused[names.MAINTENANCE_DAG], (runs, paused)
            # A scheduled run that started shows the schedule works (the maintenance jobs themselves are
            # tested in tests/integration); the README's manual replay must finish.
            started_ok = all(runs.get(k) in ("running", "success") for k in expected - {replay})
            return self.gold_s is not None and started_ok and runs.get(replay) == "success"

        try:
            self.wait_for("Gold rows from every exchange, scheduled maintenance runs, and a successful manual replay",
                          gold_has_both_and_runs_done, timeout_s=1200)
        except AssertionError as err:
            self.gold_failed = str(err).splitlines()[0]
            raise
        self.gold_ready = True
        print(f"\nrun-all: UI after {self.ui_s:.0f}s, Gold with {', '.join(settings.exchanges)} after "
              f"{self.gold_s:.0f}s, scheduled maintenance started and the manual replay done after "
              f"{time.monotonic() - self.started:.0f}s")

    def pause_silver(self) -> None:
        """Pause the Silver DAG (once: the browser test and the alert test share the pause)."""
        if self.episode_start is not None:
            return
        # A slow Silver run may already have raised a warning that is still open: the episode under test
        # starts after the last resolved message before the pause.
        episode_start = {}
        for ex in self.settings.exchanges:
            events = [e[0] for e in _silver_alerts(self.settings) if e[2] == ex]
            resolved = [i for i, event in enumerate(events) if event == "rule_resolved"]
            episode_start[ex] = resolved[-1] + 1 if resolved else 0
        paused = _lakehouse(self.env, "airflow", "dags", "pause", names.SILVER_DAG)
        assert paused.returncode == 0, paused.stdout[-2000:] + paused.stderr[-2000:]
        self.episode_start = episode_start
        self.stalled_at_pause = _silver_stalled(self.env)

    def stop(self) -> int:
        """SIGTERM run-all and wait for it (kill what is left if it hangs); its exit code."""
        if self.stopped_code is None:
            self.remember()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.stopped_code = self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                for p in _tree(self.proc.pid):
                    p.kill()
                raise
        return self.stopped_code


@pytest.fixture(scope="module")
def run_all(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunAll]:
    """``lakehouse run-all`` in a temp home, its UI up and the README's manual triggers sent; stopped at the end."""
    tmp_path = tmp_path_factory.mktemp("run-all")
    lakehouse_env = make_env(tmp_path / "home", LAKEHOUSE_AIRFLOW_PORT=str(free_port()),
                             LAKEHOUSE_ALERT_JOB_DOWN_WARNING_S=str(JOB_DOWN_WARNING_S),
                             LAKEHOUSE_ALERT_JOB_DOWN_CRITICAL_S=str(JOB_DOWN_CRITICAL_S))
    settings = load_settings(lakehouse_env)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAKEHOUSE_", "AIRFLOW"))}
    env.update(lakehouse_env)
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    log = tmp_path / "run-all.log"

    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lakehouse", "run-all"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    run = RunAll(env, settings, proc, log, started)
    try:
        run.wait_for("Airflow UI", lambda: ui_healthy(settings), timeout_s=600)
        run.ui_s = time.monotonic() - started
        assert "password" in log.read_text()
        _trigger(env, names.DLQ_REPLAY_DAG, DLQ_REPLAY_CONF)
        # Queued behind its scheduled run (one active run at a time); created unpaused, it runs next.
        _trigger(env, names.MAINTENANCE_DAG, None)
        yield run
    finally:
        run.stop()


@pytest.mark.timeout(2400)
def test_run_all_serves_the_ui_fills_gold_and_runs_the_dags(run_all: RunAll) -> None:
    run_all.wait_for_gold()
    assert _gold_exchanges(run_all.settings) >= set(run_all.settings.exchanges)


# The page re-fetches its figures every 15 s; Bronze commits every minute while Silver stands still.
LAG_GROWTH_TIMEOUT_S = 360


@pytest.mark.timeout(2400)
def test_lakehouse_page_in_a_browser(run_all: RunAll) -> None:
    """Sign in, open the Lakehouse page from the navigation, see the charts drawn with data and the Silver
    lag grow while the Silver DAG is paused; a browser without a login gets no figures."""
    reason = web.missing()
    if reason is not None:
        pytest.skip(reason)
    run_all.wait_for_gold()
    settings, base = run_all.settings, api_url(run_all.settings)

    for path in ("/lakehouse/", "/lakehouse/api/health"):
        anonymous = web.without_login(base, path)
        assert anonymous.figures == [], f"{path} without a login shows {anonymous.figures} at {anonymous.url}"
        refused = anonymous.login_form or any(word in anonymous.text.lower()
                                              for word in ("401", "not authenticated", "unauthorized"))
        assert refused, f"{path} without a login: neither a 401 nor the login page at {anonymous.url}:\n" \
                        f"{anonymous.text[:2000]}"
        assert "lag_records" not in anonymous.text and "stalled_seconds" not in anonymous.text, anonymous.text[:2000]

    password = json.loads(password_file(settings).read_text())["admin"]
    with web.browser() as driver, web.evidence_on_failure(driver, "lakehouse-page-failure"):
        web.log_in(driver, base, "admin", password)
        web.open_from_nav(driver)
        assert driver.current_url.startswith(base + "/plugin/"), driver.current_url
        # Bronze and Silver have each exchange's records by now; Gold's series is checked last (below).
        points = web.wait_for_charts(driver, tuple(settings.exchanges), series=("bronze", "silver"))
        _, lags = web.read_lag(driver, "silver")
        assert set(lags) == set(settings.exchanges), lags
        for layer in web.LAYERS:
            _, cells = web.read_lag(driver, layer)
            missing = {ex: lag for ex, lag in cells.items() if lag.records_text is None or lag.seconds_text is None}
            assert not missing, f"{layer} lag cells missing: {missing}"
        shot = web.screenshot(driver, "lakehouse-page")
        print(f"\nLakehouse page: charts drawn ({points}); screenshot {shot}")

        run_all.pause_silver()
        paused_at = time.monotonic()
        first_at, first = web.read_lag(driver, "silver")
        seen = [(first_at, first)]

        def silver_lag_grew() -> bool:
            at, now = web.read_lag(driver, "silver")
            if at != seen[-1][0]:
                seen.append((at, now))
            return at != first_at and any(_grew(first[ex], now[ex]) for ex in first if ex in now)

        try:
            run_all.wait_for("the page's Silver lag to grow while the Silver DAG is paused", silver_lag_grew,
                             timeout_s=LAG_GROWTH_TIMEOUT_S)
        except AssertionError as err:
            refresh_error = driver.execute_script("return document.body.dataset.refreshError || ''")
            raise AssertionError(f"{err}\nthe page's Silver lag at each refresh: {seen}\n"
                                 f"its last refresh error: {refresh_error!r}") from err
        shot = web.screenshot(driver, "lakehouse-page-silver-paused")
        print(f"Lakehouse page: Silver lag grew within {time.monotonic() - paused_at:.0f}s of the pause "
              f"(page figures at {[at for at, _ in seen]}: {[lag for _, lag in seen]}); screenshot {shot}")
        # Gold has merged trades of every exchange (the run waited for them): its series has records too.
        web.wait_for_charts(driver, tuple(settings.exchanges), series=web.LAYERS, timeout_s=60)


def _grew(before: web.Lag, after: web.Lag) -> bool:
    """Whether the lag in records or in seconds is measured both times and larger the second."""
    return any(b is not None and a is not None and a > b
               for b, a in ((before.records, after.records), (before.seconds, after.seconds)))


@pytest.mark.timeout(1800)
def test_paused_silver_fires_its_alert_then_resolves(run_all: RunAll) -> None:
    env, settings = run_all.env, run_all.settings
    run_all.wait_for_gold()
    run_all.pause_silver()  # already paused when the browser test ran
    episode_start = run_all.episode_start
    assert episode_start is not None
    grown: list[dict[str, float]] = [run_all.stalled_at_pause]

    def episode(ex: str) -> list[tuple[str, str]]:
        return [e[:2] for e in _silver_alerts(settings) if e[2] == ex][episode_start[ex]:]

    def warned_then_critical() -> bool:
        grown.append(_silver_stalled(env))
        return all(("rule_firing", "critical") in episode(ex) for ex in settings.exchanges)

    run_all.wait_for("Silver's job_down alert at critical", warned_then_critical, timeout_s=600)
    for ex in settings.exchanges:
        assert episode(ex) == [("rule_firing", "warning"), ("rule_firing", "critical")], _silver_alerts(settings)
        assert grown[-1][ex] > JOB_DOWN_CRITICAL_S and grown[-1][ex] > grown[0][ex], grown
    unpaused = _lakehouse(env, "airflow", "dags", "unpause", names.SILVER_DAG)
    assert unpaused.returncode == 0, unpaused.stdout[-2000:] + unpaused.stderr[-2000:]
    run_all.wait_for("Silver's job_down alert resolved",
                     lambda: all(("rule_resolved", "info") in episode(ex) for ex in settings.exchanges),
                     timeout_s=600)
    for ex in settings.exchanges:
        assert [e[0] for e in episode(ex)] == ["rule_firing", "rule_firing", "rule_resolved"], _silver_alerts(settings)
    runs, _ = _runs(settings)
    assert not {k: v for k, v in runs.items() if v == "failed"}, f"runs failed: {runs}\n{_tail(run_all.log)}"


@pytest.mark.timeout(900)
def test_sigterm_leaves_no_process_behind(run_all: RunAll) -> None:
    settings, log = run_all.settings, run_all.log
    code = run_all.stop()
    assert code == 0, _tail(log)
    assert "no process left running" in log.read_text(), _tail(log)
    left = [p for p in run_all.seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [p.cmdline() for p in left]
    assert not port_open("127.0.0.1", settings.airflow_port)
    assert not port_open(settings.kafka_host, settings.kafka_port)
