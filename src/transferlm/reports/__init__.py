"""Reports (tables, plots, one HTML page) over compare outputs, and the lecture's reproduction suites."""

from typing import Any

from .collect import Cell, Collection, ReportError, collect, load_compare_dir

__all__ = ["Cell", "Collection", "ReportError", "ReportFiles", "build_report", "collect", "load_compare_dir",
           "write_report"]


def __getattr__(name: str) -> Any:
    # matplotlib loads only when a report is made: `transferlm --help` stays fast.
    if name in ("ReportFiles", "build_report", "write_report"):
        from . import report

        return getattr(report, name)
    raise AttributeError(name)
