"""Tables in the lecture's style (methods × tasks, mean (std)), and their Markdown and CSV forms.

Scores are shown ×100 with one decimal, as LM-BFF, Gururangan et al. and the LoRA paper print them. In
each score column the best mean is marked (every method whose shown value equals the best one, so a
tie is never broken by digits the reader cannot see). Parameter and time columns are not marked. Beside it,
each task column marks with "≈" the methods whose gap to that column's best mean is within seed noise (a paired
t-test over seeds, p >= 0.05; see ``evaluation.significance``).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..evaluation.significance import ALPHA, TEST, best_by_mean, paired_test
from ..protocol.table import DEV_ONLY_NOTE, METRIC_ABBREV, human_count, percent_text
from .collect import Cell, Collection

CSV_COLUMNS = ("task", "method", "metric", "split", "mean", "std", "n_seeds", "seeds", "per_seed", "best",
               "p_vs_best", "near_best", "trainable_params", "total_params", "trainable_percent", "train_seconds",
               "eval_seconds", "model", "shots", "raw_method", "source")
MISSING = "–"
NEAR = "≈"  # behind the column's best, but within seed noise


@dataclass
class TableCell:
    text: str
    value: float | None = None  # the number the text shows (for marking the best)
    best: bool = False
    p_vs_best: float | None = None  # the paired test against the column's best mean (None: not tested)
    near_best: bool = False  # not the best, but its gap to the best is within seed noise

    @property
    def shown_text(self) -> str:
        """The text with the within-noise mark, as Markdown and HTML show it."""
        return f"{self.text} {NEAR}" if self.near_best else self.text


@dataclass
class Table:
    header: list[str]
    rows: list[list[TableCell]]
    caption: str = ""
    score_columns: list[int] = field(default_factory=list)
    legend: str = ""  # a line under the table: what the within-noise mark means

    def column(self, name: str) -> list[TableCell]:
        i = self.header.index(name)
        return [r[i] for r in self.rows]


def shown(x: float) -> float:
    """A score as the table shows it: ×100, one decimal."""
    return round(100.0 * x, 1)


def score_text(mean: float, std: float | None) -> str:
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ({100 * std:.1f})"


def column_name(task: str, metric: str) -> str:
    return f"{task} ({METRIC_ABBREV.get(metric, metric)})"


def mark_best(rows: list[list[TableCell]], columns: list[int]) -> None:
    """Mark, in each column, every cell whose shown value equals the column's best (higher is better)."""
    for j in columns:
        values = [r[j].value for r in rows if r[j].value is not None and not math.isnan(r[j].value)]
        if not values:
            continue
        top = max(values)
        for r in rows:
            r[j].best = r[j].value is not None and math.isclose(r[j].value, top, abs_tol=1e-9)


def mark_near_best(rows: list[list[TableCell]], j: int, cells: list[Cell | None]) -> bool:
    """Test, in column ``j``, every cell against the cell with the column's best mean (paired by seed), and
    mark those not significantly behind. ``cells``: the row's Cell per row. Whether any pair was tested.

    Only cells over the same K and split as the best are paired: another K draws other examples per seed."""
    top = best_by_mean([c for c in cells if c is not None], lambda c: c.mean)  # as compare's vs_best
    if top is None:
        return False
    tested = False
    for r, c in zip(rows, cells, strict=True):
        if c is None or c is top or c.shots != top.shots or c.split != top.split:
            continue
        try:
            r[j].p_vs_best = paired_test(c.per_seed, c.seeds, top.per_seed, top.seeds).p_value
        except ValueError:  # scores and seeds that do not line up (a hand-edited summary): no test
            continue
        tested = tested or r[j].p_vs_best is not None
        r[j].near_best = not r[j].best and r[j].p_vs_best is not None and r[j].p_vs_best >= ALPHA
    return tested


def _legend(tested: bool, with_avg: bool) -> str:
    if not tested:
        return "No gap to a column's best is tested: fewer than 2 seeds in common."
    return (f"{NEAR}: behind the column's best mean, but within seed noise ({TEST}: p ≥ {ALPHA:g}; p_vs_best in "
            "results.csv). Within noise is not equal: with a handful of seeds the test has little power. Neither "
            f"bold nor {NEAR}: behind at p below {ALPHA:g}, or not tested (fewer than 2 shared seeds, or another K)"
            + ("; the Avg. column is not tested." if with_avg else "."))


def main_seeds(cells: list[Cell]) -> list[int]:
    """The seed list most cells share (on a tie, the longer one): the table's caption names it."""
    lists = [tuple(c.seeds) for c in cells]
    return list(max(dict.fromkeys(lists), key=lambda s: (lists.count(s), len(s))))


def seeds_mark(cell: Cell, main: list[int]) -> str:
    """" [n=k]" after a score over other seeds than the caption's (k of them), else ""."""
    return "" if list(cell.seeds) == main else f" [n={len(cell.seeds)}]"


def _caption(cells: list[Cell]) -> str:
    def joined(values: list[Any]) -> str:
        return ", ".join(str(v) for v in dict.fromkeys(values))

    main = main_seeds(cells)
    others = any(list(c.seeds) != main for c in cells)
    split = joined([c.split for c in cells])
    return (f"mean (std) over {len(main)} seed(s) ({', '.join(map(str, main))}) on the {split} split, ×100"
            + ("; [n=k]: that cell's mean (std) is over its own k seeds (listed in results.csv)" if others else "") +
            f"; model {joined([c.model for c in cells])}, K={joined([c.shots for c in cells])}; "
            "std is the population std over seeds; best per column in bold"
            + (f" ({DEV_ONLY_NOTE})" if "dev" in {c.split for c in cells} else ""))


def build_table(collection: Collection) -> Table:
    """Methods × tasks, then the average over tasks, trainable parameters (and %) and time per run."""
    tasks, methods = collection.tasks, collection.methods
    header = ["Method", *[column_name(t, collection.metric(t)) for t in tasks]]
    with_avg = len(tasks) > 1
    if with_avg:
        header.append("Avg.")
    header += ["# Trainable params", "Train s/run", "Eval s/run"]
    main = main_seeds(collection.cells)
    rows = []
    for m in methods:
        cells = [collection.get(t, m) for t in tasks]
        row = [TableCell(m)]
        for c in cells:
            row.append(TableCell(score_text(c.mean, c.std) + seeds_mark(c, main), shown(c.mean)) if c
                       else TableCell(MISSING))
        present = [c for c in cells if c is not None]
        if with_avg:
            if len(present) == len(tasks):
                avg = sum(c.mean for c in present) / len(present)
                row.append(TableCell(f"{100 * avg:.1f}", shown(avg)))
            else:
                row.append(TableCell(MISSING))
        biggest = max(present, key=lambda c: c.trainable_params)
        row.append(TableCell(f"{human_count(biggest.trainable_params)} ({percent_text(biggest.trainable_percent)})",
                             float(biggest.trainable_params)))
        train = sum(c.train_seconds for c in present) / len(present)
        evals = sum(c.eval_seconds for c in present) / len(present)
        row += [TableCell(f"{train:.1f}", train), TableCell(f"{evals:.1f}", evals)]
        rows.append(row)
    scores = list(range(1, 1 + len(tasks) + (1 if with_avg else 0)))
    mark_best(rows, scores)
    # The average over tasks has no per-seed scores of its own: only the task columns are tested.
    tested = [mark_near_best(rows, j, [collection.get(t, m) for m in methods]) for j, t in enumerate(tasks, 1)]
    legend = _legend(any(tested), with_avg) if len(methods) > 1 else ""
    return Table(header=header, rows=rows, caption=_caption(collection.cells), score_columns=scores, legend=legend)


def build_reference_table(collection: Collection) -> Table | None:
    """The published numbers for the tasks this report has (None when there are none)."""
    ref = collection.reference
    if ref is None:
        return None
    tasks = [t for t in collection.tasks if any(r["task"] == t for r in ref.rows)]
    if not tasks:
        return None
    methods = list(dict.fromkeys(r["method"] for r in ref.rows if r["task"] in tasks))
    has_params = any(r.get("params") for r in ref.rows)
    header = ["Method", *[column_name(t, collection.metric(t)) for t in tasks]]
    if has_params:
        header.append("# Trainable params")
    rows = []
    for m in methods:
        row = [TableCell(m)]
        for t in tasks:
            r = next((r for r in ref.rows if r["method"] == m and r["task"] == t), None)
            if r is None or r.get("value") is None:
                row.append(TableCell(MISSING))
            else:
                std = r.get("std")
                text = f"{r['value']:.1f}" + (f" ({std:.1f})" if std is not None else "")
                row.append(TableCell(text, float(r["value"])))
        if has_params:
            row.append(TableCell(next((str(r["params"]) for r in ref.rows if r["method"] == m and r.get("params")),
                                      MISSING)))
        rows.append(row)
    scores = list(range(1, 1 + len(tasks)))
    mark_best(rows, scores)
    return Table(header=header, rows=rows, caption=f"{ref.source}. {ref.note}".strip(), score_columns=scores)


def build_pretraining_table(collection: Collection) -> Table | None:
    """DAPT/TAPT cost (wall time, tokens/s) and held-out perplexity per phase; None without pretraining."""
    if not collection.pretraining:
        return None
    header = ["Pretraining", "Text", "Steps", "Train texts", "Perplexity before → after", "Seconds", "Tokens/s"]

    def num(x: Any, fmt: str) -> str:
        return MISSING if x is None else format(x, fmt)

    rows = []
    for r in collection.pretraining:
        seconds = num(r["seconds"], ".0f")
        if r.get("resumed_from_step"):  # the time covers only the part after the resume
            seconds += f" (from step {r['resumed_from_step']})"
        rows.append([TableCell(str(r["step"])), TableCell(str(r["phase"])), TableCell(num(r["steps"], "d")),
                     TableCell(num(r["train_texts"], ",d")),
                     TableCell(f"{num(r['perplexity_before'], '.1f')} → {num(r['perplexity_after'], '.1f')}"),
                     TableCell(seconds), TableCell(num(r["tokens_per_second"], ".0f"))])
    return Table(header=header, rows=rows, caption="Continued pretraining: held-out perplexity before and after "
                                                   "each phase, and its wall time on this machine.")


# --- Markdown -------------------------------------------------------------------------------------------

# Characters that mean something inside a Markdown table cell (GitHub-flavoured: code spans, emphasis and bold,
# raw HTML and entities, strikethrough, math, the cell separator), each escaped with a backslash; "]" only where a
# link would start ("[x](url)", "[x][ref]"), so that "[n=3]" and "[bf16]" stay as written.
_MD_SPECIAL = re.compile(r"[\\`*_<&|~$]|\](?=[(\[])")
_MD_UNESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark: a backslash escapes any ASCII punctuation


def _md_escape(text: str) -> str:
    """``text`` as literal Markdown inline text: a label from a config or a folder name ("a|b", "*x*",
    "<br>", a line break) shows as written and cannot split its row or end the bold of a best cell."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), re.sub(r"\s*[\r\n]+\s*", " ", text))


def _md_code(text: str) -> str:
    """``text`` as a code span: fenced by more backticks than any run inside it (a folder named "a`b")."""
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    one_line = re.sub(r"[\r\n]+", " ", text)
    return f"{fence}{pad}{one_line}{pad}{fence}"


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table; best cells in **bold**, cells within noise of the best with "≈"."""
    def fmt(c: TableCell) -> str:
        return f"**{_md_escape(c.shown_text)}**" if c.best else _md_escape(c.shown_text)

    lines = ["| " + " | ".join(_md_escape(h) for h in table.header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.header))) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"*{_md_escape(table.caption)}*"]
    if table.legend:
        lines += ["", f"*{_md_escape(table.legend)}*"]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[list[tuple[str, bool]]]:
    """The rows of the first Markdown table in ``text`` as (cell text, bold) pairs, header first."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in _split_row(line)]
        if all(set(c) <= set("-:") and c for c in cells):
            continue  # the separator row
        rows.append([(_MD_UNESCAPE.sub(r"\1", c[2:-2]), True) if c.startswith("**") and c.endswith("**")
                     else (_MD_UNESCAPE.sub(r"\1", c), False) for c in cells])
    return rows


def _split_row(line: str) -> list[str]:
    """A table row's cells, split at the pipes that are not backslash-escaped (escapes are kept)."""
    cells, current, i = [], "", 1  # line[0] is the leading pipe
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            current += line[i:i + 2]
            i += 2
            continue
        if ch == "|":
            cells.append(current)
            current = ""
        else:
            current += ch
        i += 1
    if current.strip():
        cells.append(current)  # a row without the closing pipe
    return cells


# --- CSV ------------------------------------------------------------------------------------------------

def csv_rows(collection: Collection, table: Table | None = None) -> list[dict[str, Any]]:
    """One tidy row per (task, method), with the exact numbers (fractions, not ×100)."""
    table = table or build_table(collection)
    marks = {(task, row[0].text): row[j] for j, task in enumerate(collection.tasks, start=1) for row in table.rows}
    out = []
    for c in collection.cells:
        mark = marks[c.task, c.method]
        out.append({"task": c.task, "method": c.method, "metric": c.metric, "split": c.split, "mean": c.mean,
                    "std": c.std, "n_seeds": len(c.per_seed), "seeds": ";".join(map(str, c.seeds)),
                    "per_seed": ";".join(repr(x) for x in c.per_seed), "best": int(mark.best),
                    "p_vs_best": mark.p_vs_best, "near_best": int(mark.near_best),
                    "trainable_params": c.trainable_params, "total_params": c.total_params,
                    "trainable_percent": c.trainable_percent, "train_seconds": c.train_seconds,
                    "eval_seconds": c.eval_seconds, "model": c.model, "shots": c.shots, "raw_method": c.raw_method,
                    "source": c.source})
    return out


def to_csv(collection: Collection, table: Table | None = None) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(collection, table):
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def read_csv(text: str) -> list[dict[str, Any]]:
    """Parse :func:`to_csv`'s output back into typed rows."""
    floats = ("mean", "std", "trainable_percent", "train_seconds", "eval_seconds")
    ints = ("n_seeds", "best", "near_best", "trainable_params", "total_params")
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = dict(r)
        for k in floats:
            row[k] = float(row[k])
        for k in ints:
            row[k] = int(row[k])
        row["per_seed"] = [float(x) for x in row["per_seed"].split(";") if x]
        row["p_vs_best"] = float(row["p_vs_best"]) if row["p_vs_best"] else None  # empty: not tested
        row["seeds"] = [int(x) for x in row["seeds"].split(";") if x]
        rows.append(row)
    return rows


def markdown_report(collection: Collection, table: Table, reference: Table | None) -> str:
    parts = [f"# {collection.title}", "", to_markdown(table)]
    if reference is not None:
        parts += ["", "## Published numbers", "", to_markdown(reference)]
    pretraining = build_pretraining_table(collection)
    if pretraining is not None:
        parts += ["", "## Pretraining", "", to_markdown(pretraining)]
    if collection.notes:
        parts += ["", "## Notes", "", *[f"- {n}" for n in collection.notes]]
    sources = list(dict.fromkeys(c.source for c in collection.cells))
    parts += ["", "## Sources", "", *[f"- {_md_code(s)}" for s in sources], "",
              "Plots (accuracy vs trainable parameters, per-seed spread, learning curves) are in report.html.", ""]
    return "\n".join(parts)
