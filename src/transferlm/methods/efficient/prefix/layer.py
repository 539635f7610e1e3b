from __future__ import annotations

import torch
from torch import nn


class PrefixEncoder(nn.Module):
    """Key/value prefixes for every layer, as a ``[layers, 2, length, kv_dim]`` tensor.

    With ``reparam`` the prefixes are P = MLP(P') of a small matrix P' (Li & Liang train this way
    because optimising P directly is unstable); :meth:`fold` replaces the MLP by the tensor it
    produces, which is all that serving needs. Given ``init`` (a ``[layers, 2, length, kv_dim]`` start),
    P = init + MLP(P') with the MLP's output layer zeroed, so training starts exactly at ``init``.
    """

    def __init__(self, length: int, num_layers: int, kv_dim: int, *, reparam: bool, mlp_hidden: int,
                 embed_dim: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.shape = (num_layers, 2, length, kv_dim)
        if init is not None and tuple(init.shape) != self.shape:
            raise ValueError(f"prefix init has shape {tuple(init.shape)}, expected {self.shape}")
        self.register_buffer("base", init.detach().clone() if init is not None and reparam else None)
        if reparam:
            self.embedding = nn.Parameter(torch.randn(length, embed_dim))
            self.mlp = nn.Sequential(nn.Linear(embed_dim, mlp_hidden), nn.Tanh(),
                                     nn.Linear(mlp_hidden, num_layers * 2 * kv_dim))
            if init is not None:
                nn.init.zeros_(self.mlp[2].weight)
                nn.init.zeros_(self.mlp[2].bias)
            self.register_parameter("prefix", None)
        elif init is not None:
            self.prefix = nn.Parameter(init.detach().clone())
        else:
            self.prefix = nn.Parameter(torch.randn(*self.shape) * 0.02)

    @property
    def length(self) -> int:
        return self.shape[2]

    @property
    def folded(self) -> bool:
        return self.prefix is not None

    def kv(self) -> torch.Tensor:
        if self.prefix is not None:
            return self.prefix
        out = self.mlp(self.embedding)  # [length, layers * 2 * kv_dim]
        layers, two, length, kv_dim = self.shape
        out = out.view(length, layers, two, kv_dim).permute(1, 2, 0, 3)
        return out if self.base is None else self.base + out

    @torch.no_grad()
    def fold(self) -> None:
        if self.prefix is None:
            self.prefix = nn.Parameter(self.kv().detach().clone(), requires_grad=self.embedding.requires_grad)
            del self.embedding, self.mlp
            self.base = None
