"""Optimizer parameter groups, including layer-wise decreasing learning rates (Sun et al. 2019).

With top block L at the base rate η, block k gets η·ξ^(L-k) (so η^(k-1) = ξ·η^k), the
embeddings get η·ξ^L (the lowest), and everything above the blocks (head, final norm) gets η.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..errors import ConfigError
from .layers import layer_of, num_layers, require_per_layer_weights

log = logging.getLogger(__name__)


def _no_decay(name: str, ndim: int) -> bool:
    # Biases, and gains that start at 1: LayerNorm weights and (IA)³'s rescaling vectors (peft stores those 2-d,
    # ``...ia3_l.<adapter>``). Decay pulls toward 0, i.e. toward switching activations off, not toward the base model.
    return ndim < 2 or "norm" in name.lower() or ".ia3_l." in name


def peft_blocks(model: nn.Module) -> dict[int, int | None]:
    """The block of each PEFT wrapper's parameter (by id), from the method itself: its names need not say it.

    (An adapter's ``banks.0_attn...`` or BitFit's ``deltas.t1.encoder__layer__0...`` carry no ``layer.N.``;
    a prefix encoder's ``embedding`` is not the model's embeddings.)
    """
    blocks: dict[int, int | None] = {}
    for module in model.modules():
        if not hasattr(module, "layer_of_param"):  # not a PeftBackbone (duck-typed: training does not import methods)
            continue
        if module.no_layer_decay:
            raise ConfigError(f"train.layer_decay does not apply to {module.method}: {module.no_layer_decay}; "
                              "remove train.layer_decay")
        for name, p in module.named_parameters():
            blocks.setdefault(id(p), module.layer_of_param(name))
    return blocks


def build_param_groups(model: nn.Module, backbone: nn.Module | None, lr: float, weight_decay: float,
                       layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Groups keyed by (learning rate, weight decay); only trainable parameters."""
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"train.layer_decay (ξ) must be in (0, 1], got {layer_decay}")
    depth = num_layers(backbone if backbone is not None else model) if layer_decay is not None else 0
    if layer_decay is not None:
        require_per_layer_weights(backbone if backbone is not None else model, depth, "train.layer_decay")
    if layer_decay is not None and depth and layer_decay ** depth < 0.01:
        # Measured: ξ=0.8 on 30-layer SmolLM2 cost 7.6 points on SST-2; the bottom rate is ξ^L, not ξ.
        log.warning("train.layer_decay ξ=%g over %d layers gives the embeddings %.2g of the base rate, so the lower "
                    "layers barely train; ξ=%.3f would give them 10%%", layer_decay, depth, layer_decay ** depth,
                    0.1 ** (1 / depth))
    blocks = peft_blocks(model) if layer_decay is not None else {}
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rate = lr
        if layer_decay is not None:
            k = blocks[id(p)] if id(p) in blocks else layer_of(name)
            if k is not None:
                rate = lr * layer_decay ** (depth - min(k, depth))
        wd = 0.0 if _no_decay(name, p.ndim) else weight_decay
        g = groups.setdefault((rate, wd), {"params": [], "names": [], "lr": rate, "weight_decay": wd})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())
