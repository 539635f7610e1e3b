"""Is the winner's lead beyond seed noise? The paired test over seeds (edge cases, agreement with scipy), compare's
``vs_best`` section in summary.json and its lines in table.txt."""

from __future__ import annotations

import json
import math
import random
import types
from pathlib import Path

import pytest
from scipy.stats import ttest_rel

from transferlm.evaluation.significance import TEST, paired_test, vs_best
from transferlm.protocol.table import format_table, p_text

NAN, INF = float("nan"), float("inf")
S3 = [13, 21, 42]


@pytest.mark.parametrize("a, a_seeds, b, b_seeds, expected", [
    # (mean_diff, wins, ties, losses, n, excluded, p)
    pytest.param([0.8], [13], [0.7], [13], (0.1, 1, 0, 0, 1, 0, None), id="one seed: no test"),
    pytest.param([0.8, 0.9], [13, 21], [0.7, 0.6], [42, 87], (None, 0, 0, 0, 0, 0, None), id="no seed in common"),
    pytest.param([0.8, 0.7, 0.9], S3, [0.8, 0.7, 0.9], S3, (0.0, 0, 3, 0, 3, 0, 1.0), id="identical: p=1"),
    pytest.param([0.75, 0.5, 0.25], S3, [0.5, 0.25, 0.0], S3, (0.25, 3, 0, 0, 3, 0, 0.0), id="constant gap: p=0"),
    # 0.5-0.7, 0.6-0.8, 0.7-0.9 differ in the 17th digit: still a constant gap (scipy: p=3.5e-32 and a warning)
    pytest.param([0.5, 0.6, 0.7], S3, [0.7, 0.8, 0.9], S3, (-0.2, 0, 0, 3, 3, 0, 0.0), id="constant gap, float"),
    pytest.param([0.8, NAN, 0.9, 0.6], [*S3, 87], [0.7, 0.7, 0.9, 0.5], [*S3, 87],
                 (0.2 / 3, 2, 1, 0, 3, 1, float(ttest_rel([0.8, 0.9, 0.6], [0.7, 0.9, 0.5]).pvalue)),
                 id="a NaN seed is left out"),
    pytest.param([0.8, 0.8], [13, 21], [INF, 0.6], [13, 21], (0.2, 1, 0, 0, 1, 1, None), id="inf left out too"),
    pytest.param([NAN, NAN], [13, 21], [0.7, 0.6], [13, 21], (None, 0, 0, 0, 0, 2, None), id="all NaN"),
])
def test_paired_test_edge_cases(a, a_seeds, b, b_seeds, expected) -> None:
    t = paired_test(a, a_seeds, b, b_seeds)
    mean_diff, *counts, p = expected
    assert [t.wins, t.ties, t.losses, t.n, t.excluded] == counts
    assert t.mean_diff == (None if mean_diff is None else pytest.approx(mean_diff))
    assert t.p_value == (None if p is None else pytest.approx(p, rel=1e-12, abs=0))
    assert t.within_noise == (None if p is None else p >= 0.05)


def test_seeds_are_matched_by_value_not_position() -> None:
    a = paired_test([0.9, 0.5, 0.7], [13, 21, 42], [0.4, 0.8, 0.65], [21, 13, 42])  # b listed in another order
    aligned = paired_test([0.9, 0.5, 0.7], [13, 21, 42], [0.8, 0.4, 0.65], [13, 21, 42])
    assert a == aligned and (a.wins, a.losses) == (3, 0)
    assert a.p_value == pytest.approx(ttest_rel([0.9, 0.5, 0.7], [0.8, 0.4, 0.65]).pvalue, rel=1e-12)
    by_position = paired_test([0.9, 0.5, 0.7], [13, 21, 42], [0.4, 0.8, 0.65], [13, 21, 42])
    assert (by_position.wins, by_position.losses) == (2, 1)  # what pairing by position would have said
    # Seeds only one side ran are not paired with anything.
    extra = paired_test([0.9, 0.5, 0.7, 0.1], [13, 21, 42, 87], [0.65, 0.8, 0.4], [42, 13, 21])
    assert extra == aligned


@pytest.mark.parametrize("args, match", [
    (([0.8, 0.7], [13], [0.7], [13]), "2 scores for 1 seeds"),
    (([0.8, 0.7], [13, 13], [0.7, 0.6], [13, 21]), "listed twice"),
])
def test_scores_and_seeds_that_do_not_line_up_are_an_error(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        paired_test(*args)


@pytest.mark.parametrize("case", range(6))
def test_p_value_is_scipys_ttest_rel_on_ordinary_scores(case: int) -> None:
    rng = random.Random(case)
    n = 2 + case
    a = [rng.uniform(0.4, 0.9) for _ in range(n)]
    b = [x + rng.gauss(0.02 * case - 0.05, 0.05) for x in a]
    seeds = list(range(100, 100 + n))
    t = paired_test(a, seeds, b, seeds)
    expected = ttest_rel(a, b)
    assert t.p_value == pytest.approx(float(expected.pvalue), rel=1e-12)
    assert t.mean_diff == pytest.approx(sum(a) / n - sum(b) / n)
    assert t.wins + t.ties + t.losses == t.n == n


def _row(method: str, per_seed: list[float], seeds: list[int] | None = None) -> dict:
    finite = [x for x in per_seed if not math.isnan(x)]
    mean = sum(per_seed) / len(per_seed) if len(finite) == len(per_seed) else NAN
    row = {"method": method, "mean": mean, "std": 0.01, "per_seed": per_seed, "trainable_params": 10,
           "total_params": 10, "train_seconds": 1.0}
    return {**row, "seeds": seeds} if seeds is not None else row


S5 = [13, 21, 42, 87, 100]
ROWS = [_row("finetune", [0.60, 0.65, 0.62, 0.66, 0.62], S5),
        _row("prompt-finetune", [0.84, 0.86, 0.85, 0.85, 0.85], S5),
        _row("icl", [0.85, 0.84, 0.86, 0.84, 0.84], S5),
        _row("diverged", [0.85, NAN, 0.86, 0.84, 0.84], S5)]


def test_vs_best_pairs_every_other_method_with_the_best_mean() -> None:
    section = vs_best(ROWS)
    assert section["best"] == "prompt-finetune" and section["test"] == TEST and section["alpha"] == 0.05
    by = {c["method"]: c for c in section["comparisons"]}
    assert list(by) == ["finetune", "icl", "diverged"]  # the NaN mean is compared, never best
    assert by["finetune"]["losses"] == 5 and by["finetune"]["within_noise"] is False
    assert by["finetune"]["p_value"] == pytest.approx(ttest_rel(ROWS[0]["per_seed"], ROWS[1]["per_seed"]).pvalue)
    assert by["finetune"]["mean_diff"] == pytest.approx(ROWS[0]["mean"] - ROWS[1]["mean"])
    assert by["icl"]["within_noise"] is True and by["icl"]["p_value"] > 0.05
    assert (by["diverged"]["n"], by["diverged"]["excluded"]) == (4, 1)
    assert json.loads(json.dumps(section, allow_nan=False)) == section  # plain JSON: no NaN written


def test_vs_best_ties_seeds_fallback_and_nothing_to_compare() -> None:
    tie = vs_best([_row("a", [0.5, 0.7], [1, 2]), _row("b", [0.7, 0.5], [1, 2])])
    assert tie["best"] == "a" and tie["comparisons"][0]["mean_diff"] == 0.0  # the first of equal means
    old = vs_best([_row("a", [0.5, 0.7]), _row("b", [0.4, 0.5])], seeds=[1, 2])  # rows without their own seeds
    assert old["best"] == "a" and old["comparisons"][0]["n"] == 2
    assert vs_best([_row("a", [0.5])], seeds=[1])["comparisons"] == []
    assert vs_best([_row("a", [NAN, 0.5], [1, 2])]) is None


def _summary(rows: list[dict], seeds: list[int] = S5, **extra) -> dict:
    return {"task": "SST-2", "primary_metric": "accuracy", "seeds": seeds, "model": "m", "shots": 16,
            "split": "test", "rows": rows, **extra}


def test_table_says_which_gaps_are_within_seed_noise() -> None:
    text = format_table(_summary(ROWS, vs_best=vs_best(ROWS)))
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("vs best mean (prompt-finetune), ×100:"))
    assert lines[at].endswith(f"finetune -22.0 (behind on 5/5 seeds, {p_text(vs_best(ROWS)['comparisons'][0]['p_value'])});")
    assert "icl -0.4 (behind on 3/5 seeds, p=0.54: within seed noise)" in text
    assert "diverged +0.0 (behind on 2/4 seeds, 1 NaN seed left out, p=1.00: within seed noise)" in text
    assert lines[-1] == f"  ({TEST})"
    assert all(len(line) <= 110 for line in lines[at:])
    # A summary from before vs_best: the same lines, computed from its rows.
    assert format_table(_summary(ROWS)) == text


def test_table_with_one_seed_says_no_test_is_possible_and_one_method_says_nothing() -> None:
    one = [_row("a", [0.8], [13]), _row("b", [0.6], [13])]
    lines = format_table(_summary(one, seeds=[13])).splitlines()
    assert lines[-2] == "vs best mean (a), ×100: b -20.0 (behind on 1/1 seed, no test possible)"
    assert lines[-1] == "  (fewer than 2 seeds in common: no paired test possible)"
    alone = format_table(_summary([_row("a", [0.8, 0.7], [13, 21])], seeds=[13, 21]))
    assert "vs best" not in alone and alone.splitlines()[-1].startswith("mean (std) over seeds 13, 21")


@pytest.mark.parametrize("p, shown", [(0.0, "p<0.001"), (0.0004, "p<0.001"), (0.0012, "p=0.0012"),
                                      (0.0496, "p<0.05"), (0.05, "p=0.05"), (0.81, "p=0.81"), (1.0, "p=1.00")])
def test_p_text_never_rounds_across_the_threshold(p: float, shown: str) -> None:
    assert p_text(p) == shown


def test_compare_writes_vs_best_to_summary_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No training: each (method, seed) run returns a fixed score, as in test_compare_grid's NaN test.
    import transferlm.protocol.compare as compare_mod
    from transferlm.config import CompareConfig, RunConfig

    scores = {"finetune": [0.60, 0.65, 0.62], "lora": [0.80, 0.83, 0.81], "bitfit": [0.81, 0.80, 0.82]}
    seeds = [13, 21, 42]

    def fake_run(cfg, **kw):
        score = scores[cfg.method][seeds.index(cfg.seed)]
        res = {"task": "toy", "shots": 8, "split": "test", "primary_metric": "accuracy",
               "metrics": {"accuracy": score}, "dev_metrics": {"accuracy": 0.5}, "trainable_params": 1,
               "total_params": 1, "trainable_percent": 100.0, "train_seconds": 0.0, "eval_seconds": 0.0}
        return types.SimpleNamespace(results=res, finish_test=None)

    monkeypatch.setattr(compare_mod, "run", fake_run)
    run_cfg = RunConfig.from_dict({"task": "toy", "quiet": True, "data": {"data_dir": str(tmp_path / "absent")}})
    out = tmp_path / "cmp"
    compare_mod.compare(CompareConfig(run=run_cfg, methods=list(scores), seeds=seeds, output=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    section = summary["vs_best"]
    assert section["best"] == "lora" and section["test"] == TEST
    by = {c["method"]: c for c in section["comparisons"]}
    assert set(by) == {"finetune", "bitfit"}
    assert by["finetune"]["p_value"] == pytest.approx(ttest_rel(scores["finetune"], scores["lora"]).pvalue)
    assert by["bitfit"]["within_noise"] is True and (by["bitfit"]["wins"], by["bitfit"]["losses"]) == (2, 1)
    table = (out / "table.txt").read_text()
    assert "vs best mean (lora), ×100: finetune -19.0 (behind on 3/3 seeds, p<0.001);" in table
    assert "bitfit -0.3 (behind on 1/3 seeds, p=0.83: within seed noise)" in table
