"""One self-contained HTML page: inline CSS, inline SVG plots, no scripts and nothing fetched at view time."""

from __future__ import annotations

import html
import re
import time

from .. import __version__
from ..protocol.table import p_text
from .collect import Collection
from .plots import Plot
from .tables import NEAR, Table, build_pretraining_table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #666; font-size: .9rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th { background: #f5f5f7; border-bottom: 2px solid #ccc; }
th:first-child, td:first-child { text-align: left; }
td.best { font-weight: 700; background: #e8f4ea; }
td.near { background: #f4f9f5; }
.legend { color: #555; font-size: .85rem; margin-top: -.4rem; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: .85rem; padding-top: .4rem; }
figure { margin: 1rem 0 2rem; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .88rem; }
.scroll { overflow-x: auto; }
#runs td, #runs th { text-align: left; }
code { background: #f5f5f7; padding: 0 .25rem; border-radius: 3px; }
"""


def table_html(table: Table, table_id: str) -> str:
    head = "".join(f"<th scope=\"col\">{html.escape(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = []
        for i, c in enumerate(row):
            text = html.escape(c.text)
            if i == 0:
                cells.append(f"<th scope=\"row\">{text}</th>")
            elif c.best:
                cells.append(f"<td class=\"best\"><strong>{text}</strong></td>")
            elif c.near_best and c.p_vs_best is not None:
                tip = html.escape(f"within seed noise of the best (paired t-test, {p_text(c.p_vs_best)})")
                cells.append(f"<td class=\"near\">{text} <span title=\"{tip}\">{NEAR}</span></td>")
            else:
                cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    legend = f"<p class=\"legend\" id=\"{table_id}-legend\">{html.escape(table.legend)}</p>" if table.legend else ""
    return (f"<div class=\"scroll\"><table id=\"{table_id}\">{caption}<thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>{legend}")


def plot_html(plot: Plot) -> str:
    return (f"<figure id=\"plot-{plot.id}\"><h3>{html.escape(plot.title)}</h3>{plot.svg}"
            f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")


def _runs_html(collection: Collection) -> str:
    rows = []
    for c in collection.cells:
        per_seed = ", ".join(f"{s}: {100 * v:.1f}" for s, v in zip(c.seeds, c.per_seed, strict=False))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
            c.task, c.method, c.raw_method, per_seed, f"{c.trainable_params:,}", f"{c.total_params:,}",
            c.model, c.source)) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Task", "Method", "Registered method", "Per seed (×100)",
                                               "Trainable", "Total params", "Model", "Folder"))
    return f"<div class=\"scroll\"><table id=\"runs\"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def render_html(collection: Collection, table: Table, reference: Table | None, plots: list[Plot]) -> str:
    title = html.escape(collection.title)
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{title}</title><style>{CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f"<p class=\"meta\">transferlm {html.escape(__version__)} · generated {time.strftime('%Y-%m-%d %H:%M')} · "
        f"{len(collection.tasks)} task(s), {len(collection.methods)} method(s)</p>",
        "<h2>Results</h2>", table_html(table, "results"),
    ]
    if reference is not None:
        parts += ["<h2>Published numbers</h2>", table_html(reference, "reference")]
    pretraining = build_pretraining_table(collection)
    if pretraining is not None:
        parts += ["<h2>Pretraining</h2>", table_html(pretraining, "pretraining")]
    if collection.notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{html.escape(n)}</li>" for n in collection.notes], "</ul>"]
    parts += ["<h2>Plots</h2>", *[plot_html(p) for p in plots]]
    parts += ["<h2>Runs</h2>", _runs_html(collection), "</body></html>"]
    page = "\n".join(parts) + "\n"
    assert_offline(page)
    return page


# Page text is escaped, so "<" opens only real tags: addresses are looked for in tags and in the style sheet,
# never in text (a task named "url(x)" is no fetch). Any address counts but an in-page "#..." or an inline
# "data:" one: a relative "x.png" is fetched from beside the file, which a single-file report lacks.
_ATTR = re.compile(r"""\s(?:src|href|xlink:href|action|poster|data|srcset)\s*=\s*["']?\s*(?!#|data:)[^\s"'>]""",
                   re.IGNORECASE)
_URL = re.compile(r"""url\(\s*["']?\s*(?!#|data:)[^\s"')]|@import""", re.IGNORECASE)
_ACTIVE = re.compile(r"<script\b|<link\b|<iframe\b", re.IGNORECASE)


def external_references(page: str) -> list[str]:
    """Anything in ``page`` a browser would fetch or run: addresses in src/href/url(), scripts, links, frames."""
    tags = re.findall(r"<[^>]+>", page)
    sheets = re.findall(r"<style\b[^>]*>(.*?)</style>", page, re.IGNORECASE | re.DOTALL)
    return ([m.group(0) for t in tags for m in _ATTR.finditer(t)]
            + [m.group(0) for part in tags + sheets for m in _URL.finditer(part)]
            + [m.group(0) for m in _ACTIVE.finditer(page)])


def assert_offline(page: str) -> None:
    found = external_references(page)
    if found:  # a bug in the report code, not the user's input
        raise AssertionError(f"report page would fetch or run external content: {found[:3]}")
