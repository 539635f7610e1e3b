"""Reports (tables, plots, one HTML page) over compare outputs, and the lecture's reproduction suites."""

from .collect import Cell, Collection, ReportError, collect, load_compare_dir
from .report import ReportFiles, build_report, write_report

__all__ = ["Cell", "Collection", "ReportError", "ReportFiles", "build_report", "collect", "load_compare_dir",
           "write_report"]
