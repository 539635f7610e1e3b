"""Tables in the seed lecture's style: mean (std) per method, with trainable parameters."""

from __future__ import annotations

import math
from typing import Any

METRIC_ABBREV = {"accuracy": "acc", "f1": "F1", "macro_f1": "macro-F1", "mcc": "Matt.", "pearson": "Pear.",
                 "spearman": "Spear."}


# A task without a test split is scored on the dev split that also chose each run's checkpoint: say so.
DEV_ONLY_NOTE = ("no test split: the dev split that selected each run's checkpoint also scores it, "
                 "so these numbers are optimistic")


def human_count(n: int) -> str:
    units = (("B", 1e9), ("M", 1e6), ("K", 1e3))
    for i, (unit, size) in enumerate(units):
        if n >= size:
            # 999,950 rounds to "1000.0K": say it in the next unit up instead.
            if i and round(n / size, 1) >= 1000:
                return f"{n / units[i - 1][1]:.1f}{units[i - 1][0]}"
            return f"{n / size:.1f}{unit}"
    return str(n)


def percent_text(pct: float) -> str:
    """A share of the parameters: two decimals, or two significant digits under 0.01%, so that a method
    training a few thousand of a large model's weights (prompt-tuning) does not read "0.00%" like zero-shot."""
    if 0 < pct < 0.01:
        return f"{pct:.{1 - math.floor(math.log10(pct))}f}%"
    return f"{pct:.2f}%"


def format_table(summary: dict[str, Any]) -> str:
    metric = METRIC_ABBREV.get(summary.get("primary_metric", ""), summary.get("primary_metric", ""))
    header = ["Method", f"{summary['task']} ({metric})", "# Trainable params", "Train s/run"]
    rows = [header]
    for r in summary["rows"]:
        pct = 100.0 * r["trainable_params"] / max(r.get("total_params") or 1, 1)
        rows.append([r["method"], f"{100 * r['mean']:.1f} ({100 * r['std']:.1f})",
                     f"{human_count(r['trainable_params'])} ({percent_text(pct)})", f"{r['train_seconds']:.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    split = summary.get("split", "test")
    lines.append(f"mean (std) over seeds {', '.join(map(str, summary['seeds']))} on the {split} split; "
                 f"model {summary['model']}, K={summary['shots']}")
    if split == "dev":
        lines.append(DEV_ONLY_NOTE)
    reused = sum(r.get("reused_runs", 0) for r in summary["rows"])
    if reused:
        total = sum(r.get("runs", 0) for r in summary["rows"])
        lines.append(f"{reused} of {total} runs reused from the cache (same config); "
                     "train s/run is as measured when each was computed")
    return "\n".join(lines)
