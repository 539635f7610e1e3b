"""The report's figures, drawn with matplotlib and returned as SVG text to embed in the page.

No pyplot and no display: each figure is a :class:`matplotlib.figure.Figure` rendered by the SVG
backend, so this works headless and leaves the caller's backend alone. Output is deterministic (no
date, a fixed id salt per figure) and text stays text (``svg.fonttype: none``).

Every plotted series carries an SVG id (``point-<task>-<method>``, ``seeds-…``, ``loss-…``, ``dev-…``)
so the page, and the tests, can find one marker group per method.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ..protocol.table import METRIC_ABBREV, human_count
from .collect import Cell, Collection, Curve

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


@dataclass
class Plot:
    id: str
    title: str
    caption: str
    svg: str


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def plain(label: str) -> str:
    """``label`` as literal matplotlib text: an unescaped "$" starts mathtext (a method named "cost $5 vs $10"
    was drawn as math, and "t$x^$" made drawing fail), so each is escaped; "\\$" is drawn as "$"."""
    return label.replace("$", r"\$")


def colors(methods: list[str]) -> dict[str, str]:
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(methods)}


def to_svg(fig: Figure, name: str) -> str:
    """The figure as an ``<svg>`` element (no XML prolog), ready to inline in HTML."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"transferlm-{name}",
                                "svg.id": f"fig-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Format": None, "Type": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):].strip()


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _metric_label(cell: Cell) -> str:
    return plain(f"{cell.task} ({METRIC_ABBREV.get(cell.metric, cell.metric)}) ×100")


def _legend(fig: Figure, methods: list[str], palette: dict[str, str], marker: str = "o") -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[m], marker=marker, linestyle="", label=plain(m)) for m in methods]
    fig.legend(handles=handles, loc="lower center", ncols=min(len(methods), 3), frameon=False,
               bbox_to_anchor=(0.5, 0), fontsize=8)


def params_plot(collection: Collection) -> Plot:
    """Score against trainable parameters (log x), one point per method (± std over seeds) per task."""
    tasks, methods = collection.tasks, collection.methods
    palette = colors(methods)
    rows, cols = _grid(len(tasks))
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows + 0.5 + 0.25 * math.ceil(len(methods) / 3)))
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, k + 1)
        cells = [c for m in methods if (c := collection.get(task, m)) is not None]
        positive = [c.trainable_params for c in cells if c.trainable_params > 0]
        # Methods that train nothing (zero-shot, ICL) sit one decade left of the smallest, at a tick "0".
        e_low = math.floor(math.log10(min(positive))) - 1 if positive else 0
        e_high = math.floor(math.log10(max(positive))) if positive else 1
        low, high = 10.0 ** e_low, (max(positive) if positive else 10.0)
        for c in cells:
            x = c.trainable_params if c.trainable_params > 0 else low
            bars = ax.errorbar([x], [100 * c.mean], yerr=[100 * c.std], fmt="o", color=palette[c.method],
                               capsize=3, markersize=7)
            bars.lines[0].set_gid(f"point-{slug(task)}-{slug(c.method)}")
        ax.set_xscale("log")
        ax.set_xlim(low / 3, high * 3)
        ticks = [10.0 ** d for d in range(e_low, e_high + 1)]
        labels = [human_count(int(t)) for t in ticks]
        if any(c.trainable_params == 0 for c in cells):
            labels[0] = "0"  # the first decade is the zero-parameter slot
        ax.set_xticks(ticks, labels)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(_metric_label(cells[0]))
        ax.set_title(plain(task))
        ax.grid(True, alpha=0.3)
    _legend(fig, methods, palette)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(methods) / 3), 1, 1))
    return Plot("params", "Score vs trainable parameters",
                "One point per method: mean over seeds with ± std bars; x is log scale, methods that train "
                "nothing are at the '0' tick.", to_svg(fig, "params"))


def seeds_plot(collection: Collection) -> Plot:
    """Per-seed scores (strip plot) with each method's mean as a bar: how much the seed matters."""
    tasks, methods = collection.tasks, collection.methods
    palette = colors(methods)
    rows, cols = _grid(len(tasks))
    fig = Figure(figsize=(max(4.4, 0.9 * len(methods) + 1.5) * cols, 3.6 * rows))
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, k + 1)
        cells = [c for m in methods if (c := collection.get(task, m)) is not None]
        for i, c in enumerate(cells):
            n = len(c.per_seed)
            xs = [i + (0.3 * (j / (n - 1) - 0.5) if n > 1 else 0.0) for j in range(n)]
            ax.scatter(xs, [100 * s for s in c.per_seed], color=palette[c.method], s=22, zorder=3,
                       gid=f"seeds-{slug(task)}-{slug(c.method)}")
            ax.hlines(100 * c.mean, i - 0.28, i + 0.28, color="black", linewidth=1.5, zorder=4)
        ax.set_xticks(range(len(cells)), [plain(c.method) for c in cells], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(cells) - 0.4)
        ax.set_ylabel(_metric_label(cells[0]))
        ax.set_title(plain(task))
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    # Tasks without a test split (MNLI, QQP, ...) are scored on dev: the caption names what was plotted.
    splits = sorted({c.split for t in tasks for m in methods if (c := collection.get(t, m)) is not None})
    return Plot("seeds", "Per-seed spread",
                f"Each dot is one seed's {' or '.join(splits) or 'test'} score; the black bar is the mean over seeds.",
                to_svg(fig, "seeds"))


def _mean_curve(curves: list[Curve], dev: bool) -> tuple[list[int], list[float], list[float], list[float]]:
    """Mean, min and max over seeds at each step that every seed logged."""
    per_step: dict[int, list[float]] = {}
    for c in curves:
        steps, values = (c.dev_steps, c.dev) if dev else (c.steps, c.loss)
        for s, v in zip(steps, values, strict=True):
            per_step.setdefault(s, []).append(v)
    steps = sorted(s for s, v in per_step.items() if len(v) == len(curves))
    return (steps, [sum(per_step[s]) / len(per_step[s]) for s in steps], [min(per_step[s]) for s in steps],
            [max(per_step[s]) for s in steps])


def curves_plot(collection: Collection) -> Plot | None:
    """Training loss and dev metric against step, mean over seeds (band: min–max), per task."""
    methods = collection.methods
    palette = colors(methods)
    tasks = [t for t in collection.tasks
             if any((c := collection.get(t, m)) is not None and c.curves for m in methods)]
    if not tasks:
        return None
    fig = Figure(figsize=(10, 3.3 * len(tasks) + 0.4 + 0.25 * math.ceil(len(methods) / 3)))
    shown: list[str] = []
    for k, task in enumerate(tasks):
        ax_loss = fig.add_subplot(len(tasks), 2, 2 * k + 1)
        ax_dev = fig.add_subplot(len(tasks), 2, 2 * k + 2)
        for m in methods:
            c = collection.get(task, m)
            if c is None or not c.curves:
                continue
            shown.append(m)
            for ax, dev, prefix in ((ax_loss, False, "loss"), (ax_dev, True, "dev")):
                steps, mean, lo, hi = _mean_curve(c.curves, dev)
                if not steps:
                    continue
                ax.plot(steps, [100 * v for v in mean] if dev else mean, color=palette[m], linewidth=1.4,
                        marker="o" if dev else None, markersize=3, gid=f"{prefix}-{slug(task)}-{slug(m)}")
                if len(c.curves) > 1:
                    scale = 100 if dev else 1
                    ax.fill_between(steps, [scale * v for v in lo], [scale * v for v in hi], color=palette[m],
                                    alpha=0.15, linewidth=0)
        metric = plain(METRIC_ABBREV.get(collection.metric(task), collection.metric(task)))
        ax_loss.set_title(plain(f"{task}: training loss"))
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss")
        ax_dev.set_title(f"{plain(task)}: dev {metric}")
        ax_dev.set_xlabel("step")
        ax_dev.set_ylabel(f"dev {metric} ×100")
        for ax in (ax_loss, ax_dev):
            ax.grid(True, alpha=0.3)
    in_plot = [m for m in methods if m in shown]
    _legend(fig, in_plot, palette, marker="s")
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(in_plot) / 3), 1, 1))
    return Plot("curves", "Learning curves",
                "Mean over seeds (band: min to max) of the training loss at each step and of the dev metric at "
                "each evaluation. Methods that do not train (zero-shot, in-context learning) have no curve.",
                to_svg(fig, "curves"))


def all_plots(collection: Collection) -> list[Plot]:
    plots = [params_plot(collection), seeds_plot(collection), curves_plot(collection)]
    return [p for p in plots if p is not None]
