from __future__ import annotations

import torch
from torch import nn

_ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class Adapter(nn.Module):
    """h -> up(act(down(h))): the residual branch of a bottleneck adapter (the caller adds h).

    ``up`` starts at zero, so a freshly added adapter leaves the model's outputs exactly unchanged
    (Houlsby's near-identity initialisation) while gradients still reach it.
    """

    def __init__(self, dim: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = _ACT[activation]()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Adapters keep their own (float32) weights under a half-precision base model.
        return self.up(self.act(self.down(h.to(self.down.weight.dtype)))).to(h.dtype)
