"""compare with a grid: candidates are chosen on dev, and the test split is evaluated once per seed, for the
selected candidate only (LM-BFF's protocol without wasted test evaluations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transferlm.config import CompareConfig, RunConfig
from transferlm.protocol.compare import compare
from transferlm.protocol.run import run
from transferlm.training.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")
GRID = {"train.learning_rate": [1e-3, 3e-3, 1e-2]}


def _run_cfg(model: Path, data: Path) -> RunConfig:
    return RunConfig.from_dict({"task": "toy", "model": str(model), "method": "finetune", "quiet": True,
                                "data": {"data_dir": str(data), "shots": 8},
                                "train": {"max_steps": 6, "eval_every": 3, "checkpoint_every": 0}})


@pytest.fixture
def test_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The description of every test-split evaluation the engine runs."""
    seen: list[str] = []
    real = Engine.evaluate

    def counting(self, examples, desc="eval"):
        if desc == "test":
            seen.append(desc)
        return real(self, examples, desc=desc)

    monkeypatch.setattr(Engine, "evaluate", counting)
    return seen


def test_the_test_split_is_evaluated_once_per_seed_for_the_selected_point(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, test_evaluations: list[str]) -> None:
    out = tmp_path / "cmp"
    cfg = CompareConfig(run=_run_cfg(tiny_bert, toy_data), methods=["finetune"], seeds=[13, 21], grid=GRID,
                        output=str(out))
    (row,) = compare(cfg)["rows"]
    assert len(test_evaluations) == 2  # one per seed, not one per candidate (6)
    for seed, selected, score in zip((13, 21), row["selected"], row["per_seed"], strict=True):
        chosen = GRID["train.learning_rate"].index(selected["train.learning_rate"])
        records = [json.loads((out / "finetune" / f"seed-{seed}" / f"grid-{i}" / "results.json").read_text())
                   for i in range(3)]
        # The selected candidate has the best dev score (the first of equals), and its test metrics.
        devs = [r["dev_metrics"]["accuracy"] for r in records]
        assert chosen == devs.index(max(devs))
        assert "test_deferred" not in records[chosen] and records[chosen]["metrics"]["accuracy"] == score
        assert all(r.get("test_deferred") and r["metrics"] == {} for i, r in enumerate(records) if i != chosen)
        # The same numbers as a plain run of that point, which evaluates test at once.
        plain = _run_cfg(tiny_bert, toy_data)
        plain.seed, plain.train.learning_rate = seed, selected["train.learning_rate"]
        assert run(plain).results["metrics"]["accuracy"] == score
    # The report's learning curves are the selected runs' (their records are the summary's runs).
    from transferlm.reports import collect

    assert [c.seed for c in collect([out]).cells[0].curves] == [13, 21]
    # A rerun reuses every candidate: nothing is trained or evaluated on test again.
    test_evaluations.clear()
    (again,) = compare(cfg)["rows"]
    assert again["per_seed"] == row["per_seed"] and again["reused_runs"] == 6 and test_evaluations == []


def test_a_selected_candidate_recorded_without_test_is_trained_again_and_evaluated(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, test_evaluations: list[str]) -> None:
    # A compare killed after its candidates but before the test evaluation: the winner's record has dev only.
    out = tmp_path / "cmp"
    cfg = CompareConfig(run=_run_cfg(tiny_bert, toy_data), methods=["finetune"], seeds=[13], grid=GRID,
                        output=str(out))
    (row,) = compare(cfg)["rows"]
    chosen = GRID["train.learning_rate"].index(row["selected"][0]["train.learning_rate"])
    path = out / "finetune" / "seed-13" / f"grid-{chosen}" / "results.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "metrics": {}, "test_deferred": True}))
    test_evaluations.clear()
    (again,) = compare(cfg)["rows"]
    assert again["per_seed"] == row["per_seed"] and len(test_evaluations) == 1
    assert "test_deferred" not in json.loads(path.read_text())


@pytest.mark.parametrize("methods,seeds,named", [(["finetune"], [13, 21, 13], "seeds 13"),
                                                 (["finetune", "finetune"], [13], "methods finetune")])
def test_a_repeated_seed_or_method_is_an_error(tmp_path: Path, methods: list[str], seeds: list[int],
                                               named: str) -> None:
    # A repeated seed ran once (one run dir) but counted twice in the mean and the std.
    from transferlm.errors import ConfigError

    run_cfg = RunConfig.from_dict({"task": "toy", "data": {"data_dir": str(tmp_path / "absent")}})
    cfg = CompareConfig(run=run_cfg, methods=methods, seeds=seeds, output=str(tmp_path / "cmp"))
    with pytest.raises(ConfigError, match=rf"^compare: {named} listed more than once"):
        compare(cfg)


def test_a_candidate_with_a_nan_dev_score_is_never_selected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A diverged candidate (regression predictions all NaN: pearson NaN) compared as `nan > x`, which is always
    # False: listed first, it beat every later candidate and its test score was reported.
    import types

    import transferlm.protocol.compare as compare_mod

    dev = {1e-3: float("nan"), 3e-3: 0.7, 1e-2: 0.6}

    def fake_run(cfg, **kw):
        lr = cfg.train.learning_rate
        res = {"task": "toy", "shots": 8, "split": "test", "primary_metric": "pearson", "metrics": {"pearson": lr},
               "dev_metrics": {"pearson": dev[lr]}, "trainable_params": 1, "total_params": 1,
               "trainable_percent": 100.0, "train_seconds": 0.0, "eval_seconds": 0.0}
        return types.SimpleNamespace(results=res, finish_test=None)

    monkeypatch.setattr(compare_mod, "run", fake_run)
    run_cfg = RunConfig.from_dict({"task": "toy", "quiet": True, "data": {"data_dir": str(tmp_path / "absent")}})
    cfg = CompareConfig(run=run_cfg, methods=["finetune"], seeds=[13], grid=GRID, output=str(tmp_path / "cmp"))
    (row,) = compare(cfg)["rows"]
    assert row["selected"] == [{"train.learning_rate": 3e-3}] and row["per_seed"] == [3e-3]
