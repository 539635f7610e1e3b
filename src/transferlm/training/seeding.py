"""Seeds and determinism."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A per-step seed, so dropout masks after a resume equal those of an uninterrupted run."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**63 - 1)
