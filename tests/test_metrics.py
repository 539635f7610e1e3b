"""Task metrics: which ones apply is decided by the task, never by the classes a subset happens to hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from transferlm.data.tasks import TaskSpec
from transferlm.errors import ConfigError
from transferlm.evaluation.metrics import compute_metrics


def test_a_prediction_outside_the_gold_classes_does_not_crash() -> None:
    # A 3-class task whose test subset holds only classes 0 and 1, and a prediction of class 2.
    m = compute_metrics([0, 1, 1, 0], [0, 2, 1, 0], regression=False, primary="accuracy", num_labels=3)
    assert m["accuracy"] == 0.75 and "f1" not in m and 0 < m["macro_f1"] < 1
    # Without the task's size, the labels seen decide: not binary either.
    assert "f1" not in compute_metrics([0, 1, 1, 0], [0, 2, 1, 0], regression=False, primary="macro_f1")


def test_binary_f1_follows_the_number_of_task_labels() -> None:
    three = compute_metrics([0, 1, 1, 0], [0, 1, 0, 0], regression=False, primary="accuracy", num_labels=3)
    assert "f1" not in three
    two = compute_metrics([0, 0, 0], [0, 0, 1], regression=False, primary="f1", num_labels=2)
    assert two["f1"] == 0.0  # a binary task keeps its F1 even when the gold subset has one class
    with pytest.raises(ConfigError, match=r"^metric 'f1' does not apply"):
        compute_metrics([0, 1, 2], [0, 1, 2], regression=False, primary="f1", num_labels=3)


def test_engine_scores_a_three_class_task_whose_subset_has_two_classes(tiny_bert: Path) -> None:
    from transferlm.config import TrainConfig
    from transferlm.data.example import Example
    from transferlm.methods import get_method
    from transferlm.models.loading import load_backbone
    from transferlm.training.engine import Engine

    spec = TaskSpec(name="three", labels=("a", "b", "c"), text_columns=("text",), label_column="label")
    examples = [Example(text_a=t, label=i % 2) for i, t in enumerate(["good movie", "bad film", "fun", "boring"] * 4)]
    method = get_method("finetune")
    prepared = method.prepare(load_backbone(str(tiny_bert)), spec, method.parse_config({}), max_length=16,
                              train=examples)
    engine = Engine(prepared, spec, TrainConfig(), seed=13, out_dir=None, quiet=True)
    metrics = engine.evaluate(examples).metrics
    assert "f1" not in metrics and set(metrics) >= {"accuracy", "macro_f1", "mcc"}


@pytest.mark.parametrize("constant", [0.0, 0.1, 0.3, 1e-9])
def test_constant_regression_predictions_score_zero_not_nan(constant: float) -> None:
    # np.std([0.1] * 3) is 1.4e-17, not 0: the guard must not let scipy's NaN through.
    m = compute_metrics([1.0, 2.0, 3.0], [constant] * 3, regression=True, primary="pearson")
    assert m["pearson"] == 0.0 and m["spearman"] == 0.0
    assert m["mse"] == pytest.approx(sum((t - constant) ** 2 for t in (1.0, 2.0, 3.0)) / 3)
    assert compute_metrics([0.1] * 3, [1.0, 2.0, 3.0], regression=True, primary="spearman")["spearman"] == 0.0
    good = compute_metrics([1.0, 2.0, 3.0], [0.1, 0.2, 0.4], regression=True, primary="pearson")
    assert 0.9 < good["pearson"] < 1.0 and good["spearman"] == pytest.approx(1.0)
