"""The Lakehouse page as a person uses it: Debian's chromium, driven through its chromedriver by Selenium.

A plain helper module of tests/e2e (``from lakehouse_browser import ...``). Both binaries are named
explicitly (``Service(CHROMEDRIVER)``, ``binary_location``), so Selenium Manager never looks for, nor
downloads, a driver or a browser. ``make setup`` installs them (its check-browser step);
:func:`missing` says why the browser steps cannot run where they are absent.

What is read comes from the page's DOM contract: ``section.exchange[data-exchange]``, the lag cells
``[data-figure][data-layer]`` with their raw ``data-value``, the charts' ``canvas[data-points]`` and
``body[data-generated-at]``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lakehouse.settings import REPO_ROOT

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = Path(os.environ.get("LAKEHOUSE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LAKEHOUSE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
WINDOW = (1280, 900)  # a README-sized screenshot (well under 300 KB as PNG)
NAV_ENTRY = "Lakehouse"
LAYERS = ("bronze", "silver", "gold")


def missing() -> str | None:
    """Why the browser steps cannot run here (one line), or None: chromium, its driver and Selenium are there."""
    absent = [f"{path} (apt-get install {package})" for path, package in
              ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")) if not os.access(path, os.X_OK)]
    if importlib.util.find_spec("selenium") is None:
        absent.append("the selenium package (pip install -r requirements-dev.txt -c constraints.txt)")
    if not absent:
        return None
    return f"no browser for the Lakehouse page test: missing {', '.join(absent)} (make setup installs them as root)"


def artifacts_dir() -> Path:
    """Where the test keeps what a person looks at afterwards (pytest's tmp_path is not kept)."""
    path = Path(os.environ.get("LAKEHOUSE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def browser() -> Iterator[WebDriver]:
    """A fresh headless chromium (its own temporary profile: no cookies), quit at exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # Root in a container has no user namespace for chromium's sandbox; /dev/shm may be tiny there.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(120)
        # --window-size sizes the window; the page gets it less the browser's own frame: grow the window
        # by the difference so the viewport (and a screenshot) is exactly WINDOW.
        inner_w, inner_h = driver.execute_script("return [window.innerWidth, window.innerHeight];")
        driver.set_window_size(2 * WINDOW[0] - int(inner_w), 2 * WINDOW[1] - int(inner_h))
        yield driver
    finally:
        driver.quit()


def _until(driver: WebDriver, what: str, condition: Any, timeout_s: float) -> Any:
    """``condition(driver)`` once it is truthy; an AssertionError naming ``what`` (and the page) after ``timeout_s``."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException as err:
        raise AssertionError(f"no {what} within {timeout_s:.0f}s at {driver.current_url}:\n"
                             f"{_visible_text(driver)[:3000]}") from err


def _visible_text(driver: WebDriver) -> str:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.TAG_NAME, "body").text)
    except WebDriverException as err:
        return f"(page text unreadable: {err.msg})"


def log_in(driver: WebDriver, base_url: str, username: str, password: str) -> None:
    """Open the Airflow UI, get sent to its login form, sign in; returns once the UI's navigation is shown."""
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    user_box = _until(driver, "login form", lambda d: _displayed(d, By.NAME, "username"), 120)
    user_box.send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    sign_in = driver.find_element(By.XPATH, "//button[@type='submit'][normalize-space()='Sign in']")
    _until(driver, "enabled Sign in button", lambda d: sign_in.is_enabled(), 10)
    sign_in.click()
    _until(driver, "Airflow UI navigation after signing in",
           lambda d: _displayed(d, By.CSS_SELECTOR, "[data-testid='nav-sidebar']"), 120)


def _displayed(driver: WebDriver, by: str, value: str) -> WebElement | None:
    found = [e for e in driver.find_elements(by, value) if e.is_displayed()]
    return found[0] if found else None


def _by_text(text: str) -> str:
    """XPath of a link or button whose visible text (or accessible name) is ``text``, as a person finds it."""
    return (f"//*[self::a or self::button or @role='menuitem' or @role='link']"
            f"[normalize-space()='{text}' or @aria-label='{text}' or @title='{text}']")


def open_from_nav(driver: WebDriver, entry: str = NAV_ENTRY) -> None:
    """Click ``entry`` in the navigation (under the Plugins menu when the UI groups plugin views there);
    then switch into the page's iframe if the UI embeds it in one. Returns once the page's sections exist."""
    from selenium.webdriver.common.by import By

    nav = driver.find_element(By.CSS_SELECTOR, "[data-testid='nav-sidebar']")

    def shown(text: str) -> list[WebElement]:
        return [e for e in nav.find_elements(By.XPATH, "." + _by_text(text)) if e.is_displayed()]

    # The UI fetches the plugins' entries after drawing the navigation: wait for them.
    _until(driver, f"'{entry}' entry (or a Plugins menu) in the navigation",
           lambda d: shown(entry) or shown("Plugins"), 60)
    if direct := shown(entry):
        direct[0].click()
    else:
        shown("Plugins")[0].click()
        _until(driver, f"'{entry}' in the Plugins menu", lambda d: _displayed(d, By.XPATH, _by_text(entry)), 10).click()
    _until(driver, "Lakehouse page (section.exchange) after clicking its navigation entry", _enter_page, 120)


def _enter_page(driver: WebDriver) -> bool:
    """Whether the page's sections are in the current document, or in an iframe of the window (then switched into)."""
    from selenium.common.exceptions import NoSuchFrameException
    from selenium.webdriver.common.by import By

    try:
        if driver.find_elements(By.CSS_SELECTOR, "section.exchange"):
            return True
    except NoSuchFrameException:  # the frame the driver was in has gone (the UI re-rendered it)
        pass
    driver.switch_to.default_content()
    if driver.find_elements(By.CSS_SELECTOR, "section.exchange"):
        return True
    for frame in driver.find_elements(By.TAG_NAME, "iframe"):
        driver.switch_to.frame(frame)
        if driver.find_elements(By.CSS_SELECTOR, "section.exchange"):
            return True
        driver.switch_to.default_content()
    return False


def wait_for_charts(driver: WebDriver, exchanges: tuple[str, ...], series: tuple[str, ...] = LAYERS,
                    timeout_s: float = 240) -> dict[str, Any]:
    """Canvas id -> data points drawn and each series' total, once every chart is drawn (``data-points``
    set) and each exchange's records chart has data: points (> 0), and records in each of ``series``,
    read from the chart the page drew (Chart.js's ``Chart.getChart``): an empty minute counts as a
    point of 0. A dead-letter chart may rightly have no point: no dead letter, no rate."""
    ids = [f"{chart}-chart-{ex}" for ex in exchanges for chart in ("records", "dlq")]
    script = """
        return arguments[0].map(id => {
          const c = document.getElementById(id);
          if (c === null) return [id, null, null];
          const chart = typeof Chart === 'undefined' ? undefined : Chart.getChart(c);
          const sums = chart === undefined ? null : Object.fromEntries(chart.data.datasets.map(
            d => [d.label, d.data.reduce((n, v) => n + (typeof v === 'number' ? v : 0), 0)]));
          return [id, c.getAttribute('data-points'), sums];
        });"""

    def drawn(d: WebDriver) -> dict[str, Any] | None:
        charts = {i: (p, sums) for i, p, sums in d.execute_script(script, ids)}
        if any(p in (None, "") for p, _ in charts.values()):
            return None
        for ex in exchanges:
            points, sums = charts[f"records-chart-{ex}"]
            if int(points) == 0 or not sums or not all((sums.get(name) or 0) > 0 for name in series):
                return None
        return {i: {"points": int(p), "sums": sums} for i, (p, sums) in charts.items()}

    last: list[Any] = []

    def remembered(d: WebDriver) -> dict[str, Any] | None:
        last[:] = [d.execute_script(script, ids)]
        return drawn(d)

    try:
        return dict(_until(driver, f"charts drawn ({', '.join(ids)}) with records in the records charts' "
                                   f"{', '.join(series)} series", remembered, timeout_s))
    except AssertionError as err:
        raise AssertionError(f"{err}\ncharts (id, data-points, each series' total): {last}") from err


@dataclass(frozen=True)
class Lag:
    """One exchange's lag cells for a layer, as the page shows them: the raw values (None: unmeasured) and
    the texts (None: no such cell on the page)."""

    records: float | None
    seconds: float | None
    records_text: str | None
    seconds_text: str | None


def read_lag(driver: WebDriver, layer: str) -> tuple[str, dict[str, Lag]]:
    """(``body[data-generated-at]``, exchange -> its ``layer`` lag cells), read in one script (no stale elements)."""
    assert _enter_page(driver), f"the Lakehouse page is gone from {driver.current_url}:\n{_visible_text(driver)[:2000]}"
    raw = driver.execute_script(
        "const cell = (s, f, l) => s.querySelector(`[data-figure=\"${f}\"][data-layer=\"${l}\"]`);"
        "const pair = c => c === null ? [null, null] : [c.getAttribute('data-value'), c.textContent.trim()];"
        "return [document.body.getAttribute('data-generated-at'),"
        " Array.from(document.querySelectorAll('section.exchange')).map(s => [s.getAttribute('data-exchange'),"
        "  pair(cell(s, 'lag_records', arguments[0])), pair(cell(s, 'lag_seconds', arguments[0]))])];", layer)
    generated_at, sections = raw
    return str(generated_at or ""), {
        str(exchange): Lag(_number(records), _number(seconds), records_text, seconds_text)
        for exchange, (records, records_text), (seconds, seconds_text) in sections}


def _number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def screenshot(driver: WebDriver, name: str) -> Path:
    """The window as ``<artifacts>/<name>.png``: WebDriver captures the top-level viewport (Airflow's
    navigation and the page in its frame) whichever frame the driver is switched into."""
    path = artifacts_dir() / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {path} not written"
    return path


def figures_shown(driver: WebDriver) -> list[str]:
    """What of the page's figures the current document shows (lag cells, exchange sections, charts, alerts)."""
    from selenium.webdriver.common.by import By

    shown = []
    for selector in ("section.exchange", "[data-figure]", "canvas[id*='-chart-']", "#freshness", "#alerts", "#tables",
                     "#maintenance"):
        if driver.find_elements(By.CSS_SELECTOR, selector):
            shown.append(selector)
    return shown


@contextmanager
def evidence_on_failure(driver: WebDriver, name: str) -> Iterator[None]:
    """On a failure inside, keep what the browser showed: ``<name>.png`` and ``<name>.html`` (the current
    document's source) in the artifacts directory; the failure is re-raised unchanged."""
    from selenium.common.exceptions import WebDriverException

    try:
        yield
    except BaseException:
        folder = artifacts_dir()
        try:
            driver.save_screenshot(str(folder / f"{name}.png"))
            (folder / f"{name}.html").write_text(driver.page_source)
            print(f"\nbrowser evidence: {folder / name}.png, {folder / name}.html ({driver.current_url})")
        except WebDriverException as err:
            print(f"\nno browser evidence kept: {err.msg}")
        raise


@dataclass(frozen=True)
class Anonymous:
    """What a browser without a login got for a URL."""

    url: str
    figures: list[str]
    text: str
    login_form: bool


def without_login(base_url: str, path: str) -> Anonymous:
    """Open ``path`` in a fresh browser (no cookies) once the document has settled: the login form is
    shown, or a loaded document has text."""
    from selenium.webdriver.common.by import By

    with browser() as driver:
        driver.get(base_url + path)

        def settled(d: WebDriver) -> bool:
            if _displayed(d, By.NAME, "password") is not None:
                return True
            loaded = d.execute_script("return document.readyState") == "complete"
            return bool(loaded and _visible_text(d).strip())

        _until(driver, f"answer to {path} without a login", settled, 60)
        time.sleep(2)  # a client-side redirect to the login page lands; a page script would have drawn by now
        return Anonymous(driver.current_url, figures_shown(driver), _visible_text(driver),
                         _displayed(driver, By.NAME, "password") is not None)


__all__ = ["CHROMEDRIVER", "CHROMIUM", "LAYERS", "Anonymous", "Lag", "NAV_ENTRY", "WINDOW", "artifacts_dir", "browser",
           "evidence_on_failure", "figures_shown", "log_in", "missing", "open_from_nav", "read_lag", "screenshot",
           "wait_for_charts", "without_login"]
