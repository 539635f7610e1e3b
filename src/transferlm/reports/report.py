"""``transferlm report``: compare folders in, report.html + report.md + results.csv out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import check_output_dir, output_lock, write_text
from .collect import Collection, collect
from .html import render_html
from .plots import all_plots
from .tables import build_reference_table, build_table, markdown_report, to_csv, to_markdown


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    csv: Path
    table: str  # the main table as Markdown, for the terminal


def write_report(collection: Collection, output: str | Path) -> ReportFiles:
    """Render and write the three files (each atomically: a reader never sees a half-written one)."""
    out = check_output_dir(output)
    table = build_table(collection)
    reference = build_reference_table(collection)
    page = render_html(collection, table, reference, all_plots(collection))
    files = ReportFiles(out / "report.html", out / "report.md", out / "results.csv", to_markdown(table))
    csv, markdown = to_csv(collection, table), markdown_report(collection, table, reference)
    # Everything rendered: lock the folder (io.output_lock) only for the writes; another process writing a
    # report (or a compare/run) into it fails this one fast.
    with output_lock(out):
        write_text(files.csv, csv)
        write_text(files.markdown, markdown)
        write_text(files.html, page)
    return files


def build_report(folders: list[str | Path], output: str | Path, *, title: str | None = None,
                 suites: dict[Path, dict[str, Any]] | None = None) -> ReportFiles:
    """Collect the folders' results (validating everything first), then write the report into ``output``.
    ``suites``: reproduce folders' manifests to use instead of their suite.json (see ``collect``)."""
    return write_report(collect(folders, title=title, suites=suites), output)
