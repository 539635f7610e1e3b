"""Optimizer parameter groups, including layer-wise decreasing learning rates (Sun et al. 2019).

With top block L at the base rate η, block k gets η·ξ^(L-k) (so η^(k-1) = ξ·η^k), the
embeddings get η·ξ^L (the lowest), and everything above the blocks (head, final norm) gets η.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .layers import layer_of, num_layers


def _no_decay(name: str, ndim: int) -> bool:
    return ndim < 2 or "norm" in name.lower()


def build_param_groups(model: nn.Module, backbone: nn.Module | None, lr: float, weight_decay: float,
                       layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Groups keyed by (learning rate, weight decay); only trainable parameters."""
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"train.layer_decay (ξ) must be in (0, 1], got {layer_decay}")
    depth = num_layers(backbone if backbone is not None else model) if layer_decay is not None else 0
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rate = lr
        if layer_decay is not None:
            k = layer_of(name)
            if k is not None:
                rate = lr * layer_decay ** (depth - min(k, depth))
        wd = 0.0 if _no_decay(name, p.ndim) else weight_decay
        g = groups.setdefault((rate, wd), {"params": [], "names": [], "lr": rate, "weight_decay": wd})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())
