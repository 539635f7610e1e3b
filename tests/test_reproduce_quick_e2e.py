"""Issue 7's "done when", end to end: ``transferlm reproduce --suite lmbff --quick`` runs every row of the
lecture's LM-BFF table on the packaged ``splade-tiny`` and writes a report that headless Chromium renders
with its tables and plots. A second call reuses every cached run.

Slow (about 4 minutes on 2 CPU cores): CI runs it with ``-m slow``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from browser_helpers import render
from transferlm.reports.reproduce import LMBFF_VARIANTS

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def reproduce(out: Path, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferlm", "reproduce", "--suite", "lmbff", "--quick",
                           "--data-dir", str(data_dir), "--output", str(out)],
                          capture_output=True, text=True, timeout=1800)


def test_reproduce_lmbff_quick_writes_a_report_that_renders(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "reproduce"
    proc = reproduce(out, data_dir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # One line per row of the table, each with a mean (std).
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\[\d+/\d+\] ", line)]
    assert len(rows) == len(LMBFF_VARIANTS), proc.stdout
    for line, variant in zip(rows, LMBFF_VARIANTS, strict=True):
        assert variant.label in line and re.search(r"\d+\.\d \(\d+\.\d\)", line), line

    suite = json.loads((out / "suite.json").read_text())
    assert [e["label"] for e in suite["entries"]] == [v.label for v in LMBFF_VARIANTS]
    for entry in suite["entries"]:
        summary = json.loads((out / entry["dir"] / "summary.json").read_text())
        row = summary["rows"][0]
        assert 0.0 <= row["mean"] <= 1.0 and len(row["per_seed"]) == len(entry["seeds"])

    dom, console = render(out / "report.html", tmp_path)
    assert console == [], console
    results = re.search(r'<table id="results">(.*?)</table>', dom, re.S)
    assert results is not None
    body = results.group(1)
    for variant in LMBFF_VARIANTS:
        assert variant.label.replace('"', "&quot;") in body or variant.label in body, variant.label
    assert '<td class="best">' in body
    for plot in ("params", "seeds", "curves"):
        assert re.search(rf'<figure id="plot-{plot}">.*?<svg', dom, re.S), plot
    assert "<script" not in dom
    assert (out / "report.md").read_text().count("|") > 0 and (out / "results.csv").stat().st_size > 0

    # Rerunning continues from the cache: nothing is trained or evaluated again.
    again = reproduce(out, data_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    reruns = [line for line in again.stdout.splitlines() if re.match(r"\[\d+/\d+\] ", line)]
    assert len(reruns) == len(LMBFF_VARIANTS)
    assert all("reused from the cache" in line for line in reruns if "zero-shot" not in line), again.stdout
    assert [line.split(":")[1].split(" over")[0] for line in reruns] == \
        [line.split(":")[1].split(" over")[0] for line in rows]
