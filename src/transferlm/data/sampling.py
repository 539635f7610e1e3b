"""In-memory few-shot splits that follow the LM-BFF sampling procedure.

Same rule as the paper's ``generate_k_shot_data.py`` (and :mod:`.kshot`, which writes
files): seed numpy with the seed, shuffle the training pool, group by label in
first-seen order, take the first K of each class for train and the next K for dev.
Given the pool in file order this reproduces the paper's splits exactly.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .example import Example


def _group_key(ex: Example, regression: bool) -> int | float | None:
    # LM-BFF balances STS-B on the binarised score.
    if regression:
        return 0 if float(ex.label) < 2.5 else 1
    return ex.label


def sample_kshot(pool: list[Example], k: int, seed: int, *, regression: bool = False,
                 source: str = "training pool", label_names: tuple[str, ...] = ()) -> tuple[list[Example], list[Example]]:
    """Return (train, dev): K per class each, drawn as LM-BFF does."""
    if k <= 0:
        raise DataError(f"--shots must be a positive number of examples per class or 'full', got {k}")
    shuffled = list(pool)
    # The paper's np.random.seed + shuffle stream, without reseeding numpy's global generator for everyone else.
    np.random.RandomState(seed).shuffle(shuffled)
    groups: dict[object, list[Example]] = {}
    for ex in shuffled:
        groups.setdefault(_group_key(ex, regression), []).append(ex)
    for key, items in groups.items():
        if len(items) < k:
            name = label_names[key] if isinstance(key, int) and key < len(label_names) else key
            raise DataError(f"--shots {k} is larger than class '{name}' has ({len(items)} examples in the {source}); "
                            "use a smaller --shots or --shots full")
    train = [ex for items in groups.values() for ex in items[:k]]
    dev = [ex for items in groups.values() for ex in items[k:2 * k]]
    return train, dev


def holdout(pool: list[Example], seed: int, fraction: float = 0.1, max_size: int = 1000) -> tuple[list[Example], list[Example]]:
    """Split a seeded dev set off a training pool that comes without one."""
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(pool))
    n_dev = max(1, min(max_size, int(round(len(pool) * fraction))))
    dev_idx = set(order[:n_dev].tolist())
    return ([ex for i, ex in enumerate(pool) if i not in dev_idx],
            [ex for i, ex in enumerate(pool) if i in dev_idx])
