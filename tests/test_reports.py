"""Reports: collecting compare folders, tables (best marked, numbers as given), CSV/Markdown round trips,
SVG plots (one marker group per method), the offline HTML page, and the `report` command's errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reports_fixtures import two_task_dirs, write_compare
from transferlm.cli import main
from transferlm.reports import ReportError, build_report, collect
from transferlm.reports.html import external_references, render_html
from transferlm.reports.plots import curves_plot, params_plot, seeds_plot
from transferlm.reports.tables import (
    build_reference_table,
    build_table,
    parse_markdown_table,
    read_csv,
    to_csv,
    to_markdown,
)


@pytest.fixture
def coll(tmp_path: Path):
    return collect(two_task_dirs(tmp_path))


def _row(table, method: str):
    return next(r for r in table.rows if r[0].text == method)


def test_collect_reads_every_row_and_the_selected_runs_curves(coll) -> None:
    assert coll.tasks == ["SST-2", "cr"]
    assert coll.methods == ["finetune", "lora", "bitfit", "prompt-zero-shot"]
    lora = coll.get("SST-2", "lora")
    assert lora.per_seed == [0.83, 0.81, 0.85] and lora.seeds == [13, 21, 42]
    assert lora.mean == pytest.approx(0.83) and lora.trainable_params == 150_000
    assert len(lora.curves) == 3 and lora.curves[0].steps == [1, 2, 3, 4, 5, 6] and lora.curves[0].dev_steps == [3, 6]
    assert coll.get("SST-2", "prompt-zero-shot").curves == []  # no training, no curve
    assert coll.get("cr", "bitfit") is None


def test_table_numbers_match_the_inputs(coll) -> None:
    table = build_table(coll)
    assert table.header == ["Method", "SST-2 (acc)", "cr (acc)", "Avg.", "# Trainable params", "Train s/run",
                            "Eval s/run"]
    for method in coll.methods:
        row = _row(table, method)
        for j, task in enumerate(coll.tasks, start=1):
            c = coll.get(task, method)
            expected = "–" if c is None else f"{100 * c.mean:.1f} ({100 * c.std:.1f})"
            assert row[j].text == expected
    assert _row(table, "finetune")[1].text == "82.0 (1.6)"  # std is the population std: sqrt(8/3)
    assert _row(table, "finetune")[3].text == "79.0"  # (82.0 + 76.0) / 2
    assert _row(table, "bitfit")[3].text == "–"  # no cr result: no average
    assert _row(table, "lora")[4].text == "150.0K (0.66%)"
    assert _row(table, "prompt-zero-shot")[4].text == "0 (0.00%)"


def test_a_tiny_share_of_parameters_is_not_shown_as_zero(tmp_path: Path) -> None:
    # Prompt-tuning (20 tokens × 384) on a 360M-parameter model trains 0.0021% of it; zero-shot trains 0%.
    write_compare(tmp_path / "big", "SST-2", {
        "prompt-tuning": {"per_seed": [0.6], "params": 7_680, "total": 360_000_000},
        "prompt-zero-shot": {"per_seed": [0.5], "params": 0, "total": 360_000_000, "trains": False}}, seeds=(13,))
    table = build_table(collect([tmp_path / "big"]))
    assert _row(table, "prompt-tuning")[2].text == "7.7K (0.0021%)"
    assert _row(table, "prompt-zero-shot")[2].text == "0 (0.00%)"


def test_best_per_column_is_marked_ties_included(coll) -> None:
    table = build_table(coll)
    best = {h: [r[0].text for r in table.rows if r[i].best] for i, h in enumerate(table.header) if i}
    assert best["SST-2 (acc)"] == ["lora"]  # 83.0 beats 82.0
    assert best["cr (acc)"] == ["finetune", "lora"]  # 76.0 and 76.0 (75.997) as shown
    assert best["Avg."] == ["lora"]
    assert best["# Trainable params"] == best["Train s/run"] == []  # only score columns are marked


def test_markdown_round_trip_keeps_every_cell_and_mark(coll) -> None:
    table = build_table(coll)
    parsed = parse_markdown_table(to_markdown(table))
    assert [c for c, _ in parsed[0]] == table.header
    assert [[(c.shown_text, c.best) for c in row] for row in table.rows] == parsed[1:]
    assert "**83.0 (1.6)**" in to_markdown(table)
    assert "| 82.0 (1.6) ≈ |" in to_markdown(table)  # finetune is within seed noise of lora on SST-2


# Labels come from configs and folder names: none of these may split a row, end a bold cell or become markup.
ODD_LABELS = ["**x** | `code` <b>y</b> &amp; [z](http://e.org)\nline 2", "*a*_b_ ~~c~~ $d$ \\", "t*ask_<i>"]


def test_markdown_escapes_every_special_character_of_a_label(tmp_path: Path) -> None:
    write_compare(tmp_path / "a", ODD_LABELS[2], {ODD_LABELS[0]: {"per_seed": [0.9, 0.9, 0.9]},
                                                   ODD_LABELS[1]: {"per_seed": [0.5, 0.6, 0.7]}})
    table = build_table(collect([tmp_path / "a"]))
    text = to_markdown(table)
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + len(table.rows)  # the line break in a label did not split its row
    parsed = parse_markdown_table(text)
    assert [c for c, _ in parsed[0]] == table.header
    flat = [[(c.text.replace("\n", " "), c.best) for c in row] for row in table.rows]
    assert parsed[1:] == flat and flat[0][0][0].endswith("http://e.org) line 2")
    for raw in ("<b>", "<i>", "`code`", "&amp;", "~~c~~", "$d$", "*a*", "](", "**x**"):
        assert not re.search(r"(?<!\\)" + re.escape(raw), text), raw  # only escaped
    # A Markdown renderer shows each label as written, in its own row, and bold only the best cells.
    import markdown_it  # a dev dependency: renders the table as a Markdown reader would
    page = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(text)
    assert "<b>" not in page and "<i>" not in page and "<a " not in page and "<code>" not in page and "<s>" not in page
    body = page.split("<tbody>")[1]
    cells = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S) for r in body.split("<tr>")[1:]]
    import html as html_lib
    assert [html_lib.unescape(re.sub(r"</?strong>", "", r[0])) for r in cells] == [f[0][0] for f in flat]
    assert [[c.startswith("<strong>") for c in r] for r in cells] == [[b for _, b in f] for f in flat]
    assert html_lib.unescape(re.findall(r"<th[^>]*>(.*?)</th>", page)[1]) == table.header[1]
    # The HTML page (tables, plots, run list) escapes them too.
    coll = collect([tmp_path / "a"])
    report = render_html(coll, table, None, [params_plot(coll), seeds_plot(coll)])
    assert "<b>" not in report and "<i>" not in report and "&lt;b&gt;y&lt;/b&gt;" in report


def test_csv_round_trip_is_exact(coll) -> None:
    rows = read_csv(to_csv(coll))
    assert len(rows) == len(coll.cells) == 7
    for r in rows:
        c = coll.get(r["task"], r["method"])
        assert (r["mean"], r["std"], r["per_seed"], r["seeds"]) == (c.mean, c.std, c.per_seed, c.seeds)
        assert (r["trainable_params"], r["total_params"], r["n_seeds"]) == (c.trainable_params, c.total_params, 3)
    assert {(r["task"], r["method"]) for r in rows if r["best"]} == {("SST-2", "lora"), ("cr", "finetune"),
                                                                     ("cr", "lora")}


def _groups(svg: str, prefix: str) -> dict[str, int]:
    """id -> number of markers drawn in that group."""
    out = {}
    for m in re.finditer(rf'<g id="({prefix}-[^"]+)">(.*?)</g>', svg, re.S):
        out[m.group(1)] = len(re.findall(r"<use ", m.group(2)))
    return out


def test_params_plot_has_one_marker_per_method_per_task(coll) -> None:
    svg = params_plot(coll).svg
    assert svg.startswith("<svg")
    groups = _groups(svg, "point")
    assert set(groups) == {f"point-{t}-{m}" for t, m in [
        ("sst-2", "finetune"), ("sst-2", "lora"), ("sst-2", "bitfit"), ("sst-2", "prompt-zero-shot"),
        ("cr", "finetune"), ("cr", "lora"), ("cr", "prompt-zero-shot")]}
    assert set(groups.values()) == {1}
    assert "log scale" in svg and ">0<" in svg  # the zero-parameter tick


def test_seeds_plot_has_one_point_per_seed(coll) -> None:
    plot = seeds_plot(coll)
    groups = _groups(plot.svg, "seeds")
    assert len(groups) == 7 and set(groups.values()) == {3}
    assert "one seed's test score" in plot.caption
    for c in coll.cells:  # a task without a test split (MNLI) is scored on dev: the caption says so
        c.split = "dev"
    assert "one seed's dev score" in seeds_plot(coll).caption


def test_curves_plot_only_for_methods_that_train(coll) -> None:
    svg = curves_plot(coll).svg
    ids = set(re.findall(r'<g id="((?:loss|dev)-[^"]+)"', svg))
    assert "loss-sst-2-finetune" in ids and "dev-cr-lora" in ids
    assert not any("zero-shot" in i for i in ids)


def test_a_dollar_in_a_label_is_drawn_as_written_not_as_math(tmp_path: Path) -> None:
    # matplotlib reads text between two "$" as mathtext: "cost $5 vs $10" was drawn as math, "t$x^$" failed.
    write_compare(tmp_path / "a", "t$x^$", {"cost $5 vs $10": {"per_seed": [0.8, 0.82, 0.84]},
                                            "lora": {"per_seed": [0.5, 0.6, 0.6]}})
    coll = collect([tmp_path / "a"])

    def texts(svg: str) -> list[str]:  # text drawn as plain text (svg.fonttype none; mathtext is tspans)
        return re.findall(r"<text[^>]*>([^<]*)</text>", svg)

    params, seeds, curves = params_plot(coll), seeds_plot(coll), curves_plot(coll)
    assert "cost $5 vs $10" in texts(params.svg) and "t$x^$" in texts(params.svg)  # legend, title
    assert "cost $5 vs $10" in texts(seeds.svg) and "t$x^$ (acc) ×100" in texts(seeds.svg)  # tick, y label
    assert "t$x^$: training loss" in texts(curves.svg) and "t$x^$: dev acc" in texts(curves.svg)
    assert not any("<tspan" in p.svg for p in (params, seeds, curves))


def test_html_page_is_self_contained(coll) -> None:
    table = build_table(coll)
    page = render_html(coll, table, build_reference_table(coll), [params_plot(coll), seeds_plot(coll)])
    assert external_references(page) == []
    assert page.count("<svg") == 2 and '<table id="results">' in page
    assert '<td class="best"><strong>83.0 (1.6)</strong></td>' in page
    # The check itself catches what it must.
    assert external_references('<img src="https://x.org/a.png"><script src="a.js"></script>')
    assert external_references('<div style="background: url(http://x/y.png)">')
    # Relative addresses are fetched too (from beside the file); in-page and inline ones are not.
    assert external_references('<img src="plot.png">') and external_references("<a href='other.html'>x</a>")
    assert external_references('<p style="background: url(bg.png)">')
    assert not external_references('<a href="#results">x</a><use xlink:href="#m1"/><img src="data:image/png;base64,AA">')
    assert not external_references('<p>data = src = url(x) in escaped text: &lt;img src="a.png"&gt;</p>')


def test_learning_curves_come_from_the_run_selected_on_dev(tmp_path: Path) -> None:
    grid = {"train.learning_rate": [1e-3, 3e-3]}
    folder = write_compare(tmp_path / "g", "SST-2", {"finetune": {
        "per_seed": [0.7, 0.8], "selected": [{"train.learning_rate": 3e-3}, {"train.learning_rate": 1e-3}]}},
        seeds=(13, 21), grid=grid)
    assert (folder / "finetune" / "seed-13" / "grid-1" / "results.json").is_file()
    cell = collect([folder]).cells[0]
    assert [c.seed for c in cell.curves] == [13, 21]


def test_a_curve_is_only_taken_from_the_run_the_summary_reports(tmp_path: Path) -> None:
    # compare rerun into the same folder with other settings, stopped before it wrote its summary: seed 21's
    # results.json is now the new run's, the summary still the old one's. Its curve is not the row's run.
    folder = write_compare(tmp_path / "c", "SST-2", {"finetune": {"per_seed": [0.7, 0.8, 0.9]}},
                           method_args={"dropout": 0})
    path = folder / "finetune" / "seed-21" / "results.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "metrics": {"accuracy": 0.55},
                                "history": [{"step": 1, "loss": 9.0}, {"step": 2, "loss": 8.0}]}))
    # And a rerun that happens to score the same: its recorded config says it is another run.
    path = folder / "finetune" / "seed-42" / "results.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "config": {"task": "SST-2", "method": "finetune", "seed": 42,
                                                     "method_args": {"dropout": 0}, "train": {"max_steps": 7}}}))
    summary = json.loads((folder / "summary.json").read_text())
    summary["config"]["run"]["train"] = {"max_steps": 5}
    (folder / "summary.json").write_text(json.dumps(summary))
    cell = collect([folder]).cells[0]
    assert [c.seed for c in cell.curves] == [13]
    # The same config (as compare records it: method, seed and output set) is the run's.
    path.write_text(json.dumps({**record, "config": {**record.get("config", {}), "task": "SST-2", "seed": 42,
                                                     "method": "finetune", "output": "x", "train": {"max_steps": 5},
                                                     "method_args": {"dropout": 0}}}))
    assert [c.seed for c in collect([folder]).cells[0].curves] == [13, 42]


def test_same_method_in_two_folders_is_told_apart(tmp_path: Path) -> None:
    write_compare(tmp_path / "runs" / "llrd", "SST-2", {"finetune": {"per_seed": [0.7]}}, seeds=(13,))
    write_compare(tmp_path / "runs" / "plain", "SST-2", {"finetune": {"per_seed": [0.6]}}, seeds=(13,))
    coll = collect([tmp_path / "runs"])  # found by walking the folder
    assert sorted(coll.methods) == ["finetune (llrd)", "finetune (plain)"]


def test_a_folder_named_twice_is_read_once(tmp_path: Path) -> None:
    sst2, _ = two_task_dirs(tmp_path / "runs")
    once = collect([tmp_path / "runs"])
    twice = collect([tmp_path / "runs", sst2])  # found by walking runs/, then named again
    assert len(twice.cells) == len(once.cells) == 7
    assert to_csv(twice) == to_csv(once)


def test_a_compare_folder_named_beside_its_suite_is_read_once(tmp_path: Path) -> None:
    # `report runs/reproduce-x runs/reproduce-x/SST-2/ft`: the folder was shown twice, as the suite's
    # "Fine-tuning" row and as a "finetune" row with the same numbers. Either order.
    suite = tmp_path / "suite"
    write_compare(suite / "SST-2" / "ft", "SST-2", {"finetune": {"per_seed": [0.7]}}, seeds=(13,))
    (suite / "suite.json").write_text(json.dumps({"title": "S", "entries": [
        {"label": "Fine-tuning", "task": "SST-2", "method": "finetune", "dir": "SST-2/ft"}]}))
    for folders in ([suite, suite / "SST-2" / "ft"], [suite / "SST-2" / "ft", suite]):
        assert collect(folders).methods == ["Fine-tuning"]


def test_a_row_is_one_configuration_on_every_task(tmp_path: Path) -> None:
    # The benchmark's layout: <task>/<variant>/, prompt-finetune with and without demonstrations.
    pf, demos = {"demonstrations": False}, {"demonstrations": True}
    write_compare(tmp_path / "b" / "SST-2" / "pft", "SST-2", {"prompt-finetune": {"per_seed": [0.8]}}, seeds=(13,),
                  method_args=pf)
    write_compare(tmp_path / "b" / "cr" / "pft-demos", "cr", {"prompt-finetune": {"per_seed": [0.9]}}, seeds=(13,),
                  method_args=demos)
    write_compare(tmp_path / "b" / "mr" / "pft", "mr", {"prompt-finetune": {"per_seed": [0.7]}}, seeds=(13,))
    # The same options on two tasks, one written out at its default: one row, no folder names.
    write_compare(tmp_path / "b" / "SST-2" / "lora", "SST-2", {"lora": {"per_seed": [0.6]}}, seeds=(13,),
                  method_args={"r": 8})
    write_compare(tmp_path / "b" / "cr" / "lora", "cr", {"lora": {"per_seed": [0.5]}}, seeds=(13,))
    coll = collect([tmp_path / "b"])
    assert coll.methods == ["lora", "prompt-finetune (pft)", "prompt-finetune (pft-demos)"]
    table = build_table(coll)
    assert table.header[1:4] == ["SST-2 (acc)", "cr (acc)", "mr (acc)"]
    assert [c.text for c in _row(table, "prompt-finetune (pft)")[1:4]] == ["80.0 (0.0)", "–", "70.0 (0.0)"]
    assert [c.text for c in _row(table, "prompt-finetune (pft-demos)")[1:4]] == ["–", "90.0 (0.0)", "–"]
    assert [c.text for c in _row(table, "lora")[1:4]] == ["60.0 (0.0)", "50.0 (0.0)", "–"]


def test_a_cell_over_other_seeds_says_how_many(tmp_path: Path) -> None:
    write_compare(tmp_path / "a", "SST-2", {"finetune": {"per_seed": [0.7, 0.8, 0.9]}, "lora": {"per_seed": [0.5, 0.6, 0.7]}},
                  seeds=(13, 21, 42))
    write_compare(tmp_path / "b", "cr", {"finetune": {"per_seed": [0.6, 0.8]}}, seeds=(13, 21))
    table = build_table(collect([tmp_path / "a", tmp_path / "b"]))
    assert _row(table, "finetune")[1].text == "80.0 (8.2)"
    assert _row(table, "finetune")[2].text == "70.0 (10.0) [n=2]"
    assert table.caption.startswith("mean (std) over 3 seed(s) (13, 21, 42) on the test split, ×100; [n=k]: that cell")
    same = build_table(collect([tmp_path / "a"]))
    assert "[n=" not in same.caption and all("[n=" not in c.text for r in same.rows for c in r)


def test_a_task_scored_on_its_dev_split_is_flagged_as_optimistic(tmp_path: Path) -> None:
    # MNLI-like: no test split, so the dev split that chose each run's checkpoint also scores it.
    import json

    from transferlm.protocol.table import format_table

    folder = write_compare(tmp_path / "a", "MNLI", {"finetune": {"per_seed": [0.4, 0.5, 0.6]}})
    assert "optimistic" not in build_table(collect([folder])).caption
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "split": "dev"}))
    caption = build_table(collect([folder])).caption
    assert "on the dev split" in caption and "optimistic" in caption
    text = format_table({**summary, "split": "dev"})
    assert text.splitlines()[-1].endswith("so these numbers are optimistic")
    assert "optimistic" not in format_table(summary)


def test_suite_folder_labels_order_and_reference(tmp_path: Path) -> None:
    write_compare(tmp_path / "s" / "SST-2" / "ft", "SST-2", {"finetune": {"per_seed": [0.7]}}, seeds=(13,))
    write_compare(tmp_path / "s" / "SST-2" / "zs", "SST-2", {"prompt-zero-shot": {"per_seed": [0.6], "params": 0}},
                  seeds=(13,))
    (tmp_path / "s" / "suite.json").write_text(json.dumps({
        "title": "Suite X", "notes": ["a note"],
        "reference": {"source": "slide 25", "rows": [{"method": "Fine-tuning", "task": "SST-2", "value": 81.4,
                                                      "std": 3.8}]},
        "entries": [{"label": "Zero-shot", "task": "SST-2", "method": "prompt-zero-shot", "dir": "SST-2/zs"},
                    {"label": "Fine-tuning", "task": "SST-2", "method": "finetune", "dir": "SST-2/ft"},
                    {"label": "Not run yet", "task": "SST-2", "method": "lora", "dir": "SST-2/lora"}]}))
    coll = collect([tmp_path / "s"])
    assert coll.title == "Suite X" and coll.methods == ["Zero-shot", "Fine-tuning"]
    ref = build_reference_table(coll)
    assert ref.rows[0][0].text == "Fine-tuning" and ref.rows[0][1].text == "81.4 (3.8)"


def test_build_report_writes_three_files(tmp_path: Path) -> None:
    files = build_report(two_task_dirs(tmp_path / "in"), tmp_path / "out")
    assert files.html.is_file() and files.markdown.is_file() and files.csv.is_file()
    assert "| lora |" in files.markdown.read_text()
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporaries


def test_folder_without_summary_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no summary.json"):
        collect([tmp_path / "empty"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        collect([bad])
    (bad / "summary.json").write_text(json.dumps({"task": "x", "rows": [{"method": "m"}], "primary_metric": "a"}))
    with pytest.raises(ReportError, match="lacks mean"):
        collect([bad])


@pytest.mark.parametrize("where, damage", [
    ("rows[0].mean", lambda s: s["rows"][0].update(mean="0.8")),
    ("rows[0].mean", lambda s: s["rows"][0].update(mean=None)),
    ("rows[0].per_seed", lambda s: s["rows"][0].update(per_seed=0.8)),
    ("rows[0].seeds", lambda s: s["rows"][0].update(seeds="13,21,42")),
    ("rows[0].method", lambda s: s["rows"][0].update(method=5)),
    ("rows[0].train_seconds", lambda s: s["rows"][0].update(train_seconds=None)),
    ("rows[0].selected", lambda s: s["rows"][0].update(selected=["a", "b", "c"])),
    ("rows[1]", lambda s: s["rows"].append("lora")),
    ("rows", lambda s: s.update(rows={"finetune": 1})),
    ("grid", lambda s: s.update(grid=[1])),
    ("config", lambda s: s.update(config=["run"])),
])
def test_a_summary_with_a_value_of_the_wrong_type_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, damage) -> None:
    # README: a malformed summary.json is a one-line error (naming the file and what to do), as truncated JSON
    # already was; a value of the wrong type was a traceback (ValueError, TypeError, AttributeError).
    good = write_compare(tmp_path / "runs" / "sst2", "SST-2", {"finetune": {"per_seed": [0.8, 0.82, 0.84]}})
    bad = write_compare(tmp_path / "runs" / "cr", "cr", {"finetune": {"per_seed": [0.7, 0.72, 0.74]}})
    summary = json.loads((bad / "summary.json").read_text())
    damage(summary)
    (bad / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match=re.escape(f"{bad / 'summary.json'}: {where} is")):
        collect([good, bad])
    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(bad / "summary.json") in err and "rerun" in err
    assert not (tmp_path / "rep").exists()


def test_a_damaged_run_record_is_a_one_line_error(tmp_path: Path) -> None:
    folder = write_compare(tmp_path / "sst2", "SST-2", {"finetune": {"per_seed": [0.8, 0.82, 0.84]}})
    record = folder / "finetune" / "seed-13" / "results.json"
    res = json.loads(record.read_text())
    record.write_text(json.dumps({**res, "history": [{"step": "one", "loss": 1.0}]}))
    with pytest.raises(ReportError, match=re.escape(f"{record}: unreadable run record")):
        collect([folder])


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirs = two_task_dirs(tmp_path / "in")
    assert main(["report", *map(str, dirs), "--output", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "| lora |" in out
    assert main(["report", str(tmp_path / "nope"), "--output", str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("transferlm: error:")
    assert not (tmp_path / "rep2").exists()
    for cmd in ("report", "reproduce"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_parameter_counts_never_read_1000k() -> None:
    from transferlm.protocol.table import human_count

    assert human_count(999_950) == "1.0M" and human_count(999_940) == "999.9K"
    assert human_count(1_500) == "1.5K" and human_count(12) == "12" and human_count(2_000_000_000) == "2.0B"
