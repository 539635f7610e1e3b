"""Tables in the seed lecture's style: mean (std) per method, with trainable parameters."""

from __future__ import annotations

import math
from typing import Any

from ..evaluation.significance import ALPHA, vs_best

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
    lines += vs_best_lines(summary)
    if split == "dev":
        lines.append(DEV_ONLY_NOTE)
    reused = sum(r.get("reused_runs", 0) for r in summary["rows"])
    if reused:
        total = sum(r.get("runs", 0) for r in summary["rows"])
        lines.append(f"{reused} of {total} runs reused from the cache (same config); "
                     "train s/run is as measured when each was computed")
    return "\n".join(lines)


def p_text(p: float) -> str:
    """A p-value with two significant digits; never rounded up to the threshold it is under (0.0496 is not
    "p=0.05", which would read as within noise)."""
    if p < 0.001:
        return "p<0.001"
    shown = f"{p:.2f}" if p >= 0.1 else f"{p:.2g}"
    return f"p<{ALPHA:g}" if p < ALPHA <= float(shown) else f"p={shown}"


def _versus(c: dict[str, Any]) -> str:
    """One method against the best: "finetune -21.9 (behind on 5/5 seeds, p<0.001)"."""
    if c["mean_diff"] is None:
        return f"{c['method']} (no seed with both scores: no test possible)"
    parts = [f"behind on {c['losses']}/{c['n']} seed{'s' if c['n'] != 1 else ''}"]
    if c["ties"]:
        parts.append(f"{c['ties']} tied")
    if c["excluded"]:
        parts.append(f"{c['excluded']} NaN seed{'s' if c['excluded'] != 1 else ''} left out")
    if c["p_value"] is None:
        parts.append("no test possible")
    else:
        parts.append(p_text(c["p_value"]) + (": within seed noise" if c["within_noise"] else ""))
    return f"{c['method']} {100 * c['mean_diff']:+.1f} ({', '.join(parts)})"


def vs_best_lines(summary: dict[str, Any], width: int = 110) -> list[str]:
    """Whether the best mean's lead is beyond seed noise, from the summary's ``vs_best`` (computed from the
    rows when a summary from before it lacks one); nothing with one method."""
    section = summary.get("vs_best") or vs_best(summary["rows"], summary.get("seeds"))
    if not section or not section["comparisons"]:
        return []
    lines = [f"vs best mean ({section['best']}), ×100:"]
    for entry in map(_versus, section["comparisons"]):  # wrapped between methods, never inside one
        if len(lines[-1]) + 2 + len(entry) > width and lines[-1].strip().endswith(";"):
            lines.append(" ")
        lines[-1] += f" {entry};"
    lines[-1] = lines[-1].rstrip(";")
    tested = any(c["p_value"] is not None for c in section["comparisons"])
    lines.append(f"  ({section['test']})" if tested else "  (fewer than 2 seeds in common: no paired test possible)")
    return lines
