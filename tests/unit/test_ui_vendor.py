"""The page's chart library is the pinned npm release, shipped with its license, and the page
loads nothing from the internet (it must work offline)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import lakehouse

UI = Path(lakehouse.__file__).parent / "ui"
VENDOR = UI / "static" / "vendor"


def manifest() -> dict[str, str]:
    return json.loads((VENDOR / "manifest.json").read_text())


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_vendored_file_matches_its_manifest() -> None:
    pinned = manifest()
    data = (VENDOR / pinned["file"]).read_bytes()
    assert sri(data) == pinned["integrity"], "the vendored chart library is not the pinned file"
    header = data[:200].decode("ascii", "replace")
    assert f"Chart.js v{pinned['version']}" in header and pinned["name"] == "chart.js"
    assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", pinned["tarball_integrity"])  # npm's dist.integrity
    assert pinned["tarball"].endswith(f"/chart.js-{pinned['version']}.tgz")


def test_license_is_shipped() -> None:
    pinned = manifest()
    text = (VENDOR / pinned["license_file"]).read_text()
    assert pinned["license"] == "MIT" and "MIT License" in text and "Chart.js Contributors" in text


def test_page_loads_only_its_own_files() -> None:
    """No CDN, no web font, no absolute URL in what the page loads."""
    page = (UI / "templates" / "page.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith(("{{ root }}/static/", "{{ airflow }}/")) for s in sources), sources
    assert f"{{{{ root }}}}/static/vendor/{manifest()['file']}" in sources
    for own in (UI / "static" / "lakehouse.js", UI / "static" / "lakehouse.css", UI / "templates" / "page.html"):
        text = own.read_text()
        assert not re.search(r"https?://|//cdn|@import|url\(", text), own.name
