"""Where a backbone's layers are, found from the model itself rather than per-architecture code.

The transformer blocks are the ``nn.ModuleList`` whose length is ``config.num_hidden_layers``;
parameter names carry the block index (``...layer.3...`` / ``...layers.3...``), which is what
layer-wise learning rates and freezing key on. PEFT weights kept outside the layers (adapter banks,
BitFit deltas) are mapped by their method instead (``PeftBackbone.layer_of_param``).
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import ModelError

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
# The embeddings and what maps them into the blocks' width (OPT's project_in; ALBERT's embedding_hidden_mapping_in
# and ELECTRA's embeddings_project say "embed"). Projections after the blocks (OPT's project_out) sit above them.
_EMBEDDING = re.compile(r"embed|wte|wpe|shared\.|(?:^|\.)project_in\.")


def num_layers(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if n:
        return int(n)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ModelError(f"cannot find the transformer layers of {type(model).__name__} (no num_hidden_layers in its "
                         "config and no layer list); layer options (layers, freeze_layers, layer_decay, probe) need "
                         "a transformer backbone")
    return max(len(m) for m in lists)


def layer_of(param_name: str) -> int | None:
    """1-based transformer block of a parameter; 0 for embeddings; None for everything above the blocks."""
    m = _LAYER_INDEX.search(param_name)
    if m:
        return int(m.group(1)) + 1
    if _EMBEDDING.search(param_name):
        return 0
    return None


def layers_without_weights(model: nn.Module, depth: int) -> list[int]:
    """Blocks 1..depth that no parameter name of ``model`` points to (all of them for ALBERT)."""
    found = {k for name, _ in model.named_parameters() if (k := layer_of(name))}
    return sorted(set(range(1, depth + 1)) - found)


def require_per_layer_weights(model: nn.Module, depth: int, option: str) -> None:
    """Refuse a layer-wise option on a model whose parameter names do not give every block its own weights.

    Layer options key on the block index in parameter names. ALBERT's blocks share one set of weights
    (``albert_layer_groups.0...``, no per-layer index), so they would silently count as "above the blocks":
    never frozen, always at the top learning rate.
    """
    missing = layers_without_weights(model, depth)
    if not missing:
        return
    groups = getattr(getattr(model, "config", None), "num_hidden_groups", None)
    if isinstance(groups, int) and groups < depth:
        why = f"its {depth} layers share {groups} set{'s' if groups > 1 else ''} of weights (num_hidden_groups={groups})"
    else:
        why = f"no parameter name carries the index of layer {missing[0]} ('...layer.{missing[0] - 1}...' or alike)"
    raise ModelError(f"{option} needs one set of weights per layer, but in {type(model).__name__} {why}; "
                     "remove it for this model")
