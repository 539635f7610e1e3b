"""The report page in a real browser: headless Chromium renders it with no console messages, and the
rendered DOM has the tables and the SVG plots.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; scripts/setup.sh installs it where apt is
available). Without it this test FAILS, with that instruction: it is not skipped. It carries the
``browser`` marker so a machine without a browser can deselect it explicitly: ``-m "not browser"``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports_fixtures import two_task_dirs
from transferlm.reports import build_report

pytestmark = pytest.mark.browser
INSTALL = ("headless Chromium is needed for this test: install Debian's package with `apt-get install -y chromium` "
           "(scripts/setup.sh does it where apt is available), set $CHROMIUM to a Chromium binary, or deselect "
           "the test with -m 'not browser'")


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(INSTALL)
    return found


def render(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The DOM after load, and the page's console messages, from headless Chromium."""
    # Chromium logs each console message (log, warning, error, uncaught exception) to stderr as
    # `...:INFO:CONSOLE:<line>] "<message>", source: <url> (<line>)`.
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         # Nothing may be fetched: any host lookup fails, so a network request would surface as an error.
         "--host-resolver-rules=MAP * ~NOTFOUND", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_console_messages_are_caught(tmp_path: Path) -> None:
    """The check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); nope();</script></body></html>")
    dom, console = render(bad, tmp_path)
    assert "<p>x</p>" in dom
    assert any("boom" in line for line in console) and any("nope is not defined" in line for line in console)


def test_report_renders_with_tables_and_plots(tmp_path: Path) -> None:
    files = build_report(two_task_dirs(tmp_path / "in"), tmp_path / "report")
    dom, console = render(files.html, tmp_path)
    assert console == [], console
    # Tables: the results table with one row per method and the best cells marked.
    results = re.search(r'<table id="results">(.*?)</table>', dom, re.S)
    assert results is not None
    assert len(re.findall(r"<tr>", results.group(1))) == 1 + 4
    assert '<td class="best"><strong>83.0 (1.6)</strong></td>' in results.group(1)
    assert '<table id="runs">' in dom
    # Plots: three inline SVG figures, parsed as SVG (the marker groups are in the DOM).
    for plot in ("params", "seeds", "curves"):
        assert re.search(rf'<figure id="plot-{plot}">.*?<svg', dom, re.S), plot
    assert len(re.findall(r'<g id="point-', dom)) == 7
    assert len(re.findall(r'<g id="seeds-', dom)) == 7
    assert "<script" not in dom
