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
