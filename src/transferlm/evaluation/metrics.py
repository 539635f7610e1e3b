"""Task metrics, computed with scikit-learn and scipy (no hub-loaded ``evaluate``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]


# scikit-learn and scipy are imported where used: at module level they add ~130 MB to every
# training process's resident memory (measured by benchmarks/train_speed.py) and ~1.5 s to start-up.

def _is_binary(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int | None) -> bool:
    """Whether binary F1 applies: decided by the task, not by which classes a subset happens to hold."""
    seen = set(np.unique(y_true).tolist()) | set(np.unique(y_pred).tolist())
    # The label check keeps sklearn's binary F1 from raising on labels outside {0, 1} whatever the caller says.
    return (num_labels is None or num_labels == 2) and seen <= {0, 1}


def _classification(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int | None) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(y_true, y_pred)),
           "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}
    if _is_binary(y_true, y_pred, num_labels):
        out["f1"] = float(f1_score(y_true, y_pred, average="binary", pos_label=1, zero_division=0))
    out["mcc"] = float(matthews_corrcoef(y_true, y_pred)) if len(np.unique(y_pred)) > 1 else 0.0
    return out


def _regression(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    # Constant predictions have no correlation; report 0 rather than NaN. Compared exactly, as scipy does:
    # np.std of equal floats can be ~1e-17 rather than 0 (0.1 three times), and scipy then returns NaN.
    if (y_pred == y_pred[0]).all() or (y_true == y_true[0]).all():
        return {"pearson": 0.0, "spearman": 0.0, "mse": float(np.mean((y_true - y_pred) ** 2))}
    return {"pearson": float(pearsonr(y_true, y_pred)[0]), "spearman": float(spearmanr(y_true, y_pred)[0]),
            "mse": float(np.mean((y_true - y_pred) ** 2))}


PRIMARY = ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman")


def compute_metrics(y_true: Sequence[float], y_pred: Sequence[float], *, regression: bool,
                    primary: str, num_labels: int | None = None) -> dict[str, float]:
    """All metrics of the task family; ``primary`` must be among them.

    ``num_labels``: the task's number of classes; binary F1 is reported only for two-class tasks. None:
    guessed from the labels seen in ``y_true`` and ``y_pred`` (binary when all are 0 or 1).
    """
    if primary not in PRIMARY:
        raise ConfigError(f"unknown metric '{primary}'; choose one of {', '.join(PRIMARY)}")
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if len(t) == 0:
        return {}
    out = _regression(t.astype(float), p.astype(float)) if regression else _classification(t.astype(int), p.astype(int), num_labels)
    if primary not in out:
        raise ConfigError(f"metric '{primary}' does not apply to this task (available: {', '.join(out)})")
    return out
