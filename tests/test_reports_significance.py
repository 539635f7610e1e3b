"""The report marks, beside each column's best, the methods whose gap to it is within seed noise ("≈", a paired
t-test over seeds), in the table, Markdown, HTML and CSV; summaries from before compare wrote ``vs_best`` and
columns gathered from several compare folders are tested from their per-seed scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from scipy.stats import ttest_rel

from reports_fixtures import two_task_dirs, write_compare
from transferlm.evaluation.significance import vs_best
from transferlm.reports import build_report, collect
from transferlm.reports.tables import build_table, read_csv, to_csv, to_markdown

LORA_SST2 = [0.83, 0.81, 0.85]


def _marks(table, column: str) -> dict[str, tuple[bool, bool, float | None]]:
    """method -> (best, near_best, p_vs_best) in one column."""
    j = table.header.index(column)
    return {r[0].text: (r[j].best, r[j].near_best, r[j].p_vs_best) for r in table.rows}


@pytest.fixture
def table(tmp_path: Path):
    return build_table(collect(two_task_dirs(tmp_path)))


@pytest.mark.parametrize("column, method, best, near, p", [
    # SST-2: lora has the best mean; finetune's gap is noise, bitfit's just is not (p=0.045), zero-shot's is not.
    ("SST-2 (acc)", "lora", True, False, None),
    ("SST-2 (acc)", "finetune", False, True, ttest_rel([0.80, 0.82, 0.84], LORA_SST2).pvalue),
    ("SST-2 (acc)", "bitfit", False, False, ttest_rel([0.70, 0.75, 0.72], LORA_SST2).pvalue),
    ("SST-2 (acc)", "prompt-zero-shot", False, False, ttest_rel([0.61] * 3, LORA_SST2).pvalue),
    # cr: finetune's mean is the top one; lora ties it as shown, so it is bold, not "≈" (its p is still given).
    ("cr (acc)", "finetune", True, False, None),
    ("cr (acc)", "lora", True, False, ttest_rel([0.7604, 0.7598, 0.7597], [0.75, 0.77, 0.76]).pvalue),
    ("cr (acc)", "bitfit", False, False, None),  # no result
    # The average over tasks has no per-seed scores: never tested.
    ("Avg.", "finetune", False, False, None),
])
def test_each_cell_is_tested_against_its_columns_best_mean(table, column, method, best, near, p) -> None:
    got_best, got_near, got_p = _marks(table, column)[method]
    assert (got_best, got_near) == (best, near)
    assert got_p == (None if p is None else pytest.approx(float(p), rel=1e-12))


def test_markdown_and_legend(table) -> None:
    text = to_markdown(table)
    assert "| finetune | 82.0 (1.6) ≈ | **76.0 (0.8)** |" in text
    assert "| bitfit | 72.3 (2.1) |" in text  # p=0.045: behind, no mark
    legend = text.splitlines()[-1]
    assert legend.startswith("*≈: behind the column's best mean, but within seed noise (paired t-test over seeds")
    assert "little power" in legend and "Avg. column is not tested" in legend


def test_html_marks_the_cell_and_keeps_the_best_cell_as_it_was(tmp_path: Path) -> None:
    page = build_report(two_task_dirs(tmp_path / "in"), tmp_path / "out").html.read_text()
    results = re.search(r'<table id="results">(.*?)</table>', page, re.S).group(1)
    assert '<td class="best"><strong>83.0 (1.6)</strong></td>' in results  # what the browser test checks
    assert re.search(r'<td class="near">82\.0 \(1\.6\) <span title="within seed noise of the best '
                     r'\(paired t-test, p=0\.48\)">≈</span></td>', results)
    assert results.count('class="near"') == 1 and len(re.findall(r"<tr>", results)) == 1 + 4
    assert re.search(r'</table></div><p class="legend" id="results-legend">≈: behind', page)


def test_csv_has_p_vs_best_and_the_mark(tmp_path: Path) -> None:
    coll = collect(two_task_dirs(tmp_path))
    text = to_csv(coll)
    assert text.splitlines()[0].startswith("task,method,metric,split,mean,std,n_seeds,seeds,per_seed,best,p_vs_best,"
                                           "near_best,")
    rows = {(r["task"], r["method"]): r for r in read_csv(text)}
    assert rows["SST-2", "lora"]["p_vs_best"] is None and rows["SST-2", "lora"]["best"] == 1
    assert rows["SST-2", "finetune"]["p_vs_best"] == ttest_rel([0.80, 0.82, 0.84], LORA_SST2).pvalue
    assert {k for k, r in rows.items() if r["near_best"]} == {("SST-2", "finetune")}


def test_a_summary_written_with_vs_best_reports_the_same(tmp_path: Path) -> None:
    # compare now writes vs_best (null p-values included); the report reads per-seed scores either way.
    folders = two_task_dirs(tmp_path / "old")
    before = to_csv(collect(folders))
    for folder in folders:
        path = folder / "summary.json"
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, "vs_best": vs_best(summary["rows"], summary["seeds"])}))
        assert "comparisons" in json.loads(path.read_text())["vs_best"]
    assert to_csv(collect(folders)) == before


def test_a_column_from_several_folders_is_paired_by_seed_value(tmp_path: Path) -> None:
    # A suite's layout: one compare folder per method, the seeds listed in another order in one of them.
    write_compare(tmp_path / "ft", "SST-2", {"finetune": {"per_seed": [0.70, 0.80, 0.75]}}, seeds=(13, 21, 42))
    write_compare(tmp_path / "lora", "SST-2", {"lora": {"per_seed": [0.82, 0.71, 0.77]}}, seeds=(21, 13, 42))
    marks = _marks(build_table(collect([tmp_path / "ft", tmp_path / "lora"])), "SST-2 (acc)")
    assert marks["lora"][0] and marks["finetune"][2] == pytest.approx(
        ttest_rel([0.70, 0.80, 0.75], [0.71, 0.82, 0.77]).pvalue, rel=1e-12)
    # By position the pairs would be (0.70, 0.82), (0.80, 0.71), (0.75, 0.77): another p.
    assert marks["finetune"][2] != pytest.approx(ttest_rel([0.70, 0.80, 0.75], [0.82, 0.71, 0.77]).pvalue)


def test_cells_over_another_k_are_not_paired(tmp_path: Path) -> None:
    write_compare(tmp_path / "a", "SST-2", {"finetune": {"per_seed": [0.70, 0.80, 0.75]}})
    write_compare(tmp_path / "b", "SST-2", {"lora": {"per_seed": [0.72, 0.81, 0.74]}})
    path = tmp_path / "b" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "shots": 32}))
    table = build_table(collect([tmp_path / "a", tmp_path / "b"]))
    assert _marks(table, "SST-2 (acc)")["finetune"] == (False, False, None)
    assert table.legend.startswith("No gap to a column's best is tested")


def test_one_seed_no_test_and_one_method_no_legend(tmp_path: Path) -> None:
    write_compare(tmp_path / "a", "SST-2", {"finetune": {"per_seed": [0.7]}, "lora": {"per_seed": [0.6]}}, seeds=(13,))
    table = build_table(collect([tmp_path / "a"]))
    assert _marks(table, "SST-2 (acc)")["lora"] == (False, False, None)
    assert table.legend == "No gap to a column's best is tested: fewer than 2 seeds in common."
    assert to_markdown(table).splitlines()[-1] == f"*{table.legend}*"
    write_compare(tmp_path / "b", "SST-2", {"finetune": {"per_seed": [0.7, 0.8]}}, seeds=(13, 21))
    assert build_table(collect([tmp_path / "b"])).legend == ""


def test_a_nan_seed_is_left_out_and_mismatched_seeds_are_not_tested(tmp_path: Path) -> None:
    folder = write_compare(tmp_path / "a", "SST-2", {"finetune": {"per_seed": [0.70, 0.80, 0.75, 0.7]},
                                                     "lora": {"per_seed": [0.72, 0.83, 0.78, 0.9]}},
                           seeds=(13, 21, 42, 87))
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    summary["rows"][0]["per_seed"][3] = float("nan")  # a diverged run: json writes NaN, the report reads it
    summary["rows"][0]["mean"] = float("nan")
    path.write_text(json.dumps(summary))
    marks = _marks(build_table(collect([folder])), "SST-2 (acc)")
    assert marks["finetune"][2] == pytest.approx(ttest_rel([0.70, 0.80, 0.75], [0.72, 0.83, 0.78]).pvalue, rel=1e-12)
    summary["rows"][0]["per_seed"] = [0.70, 0.80]  # fewer scores than seeds (hand-edited): no test, no traceback
    path.write_text(json.dumps(summary))
    assert _marks(build_table(collect([folder])), "SST-2 (acc)")["finetune"] == (False, False, None)
