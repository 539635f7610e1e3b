"""The report page in a real browser: headless Chromium renders it with no console messages, and the
rendered DOM has the tables and the SVG plots.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; scripts/setup.sh installs it where apt is
available). Without it this test FAILS, with that instruction: it is not skipped. It carries the
``browser`` marker so a machine without a browser can deselect it explicitly: ``-m "not browser"``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from browser_helpers import render
from reports_fixtures import two_task_dirs
from transferlm.reports import build_report

pytestmark = pytest.mark.browser


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
