from __future__ import annotations

import torch
from torch import nn


class PrefixEncoder(nn.Module):
    """Key/value prefixes for every layer, as a ``[layers, 2, length, kv_dim]`` tensor.

    With ``reparam`` the prefixes are P = MLP(P') of a small matrix P' (Li & Liang train this way
    because optimising P directly is unstable); :meth:`fold` replaces the MLP by the tensor it
    produces, which is all that serving needs.
    """

    def __init__(self, length: int, num_layers: int, kv_dim: int, *, reparam: bool, mlp_hidden: int,
                 embed_dim: int) -> None:
        super().__init__()
        self.shape = (num_layers, 2, length, kv_dim)
        if reparam:
            self.embedding = nn.Parameter(torch.randn(length, embed_dim))
            self.mlp = nn.Sequential(nn.Linear(embed_dim, mlp_hidden), nn.Tanh(),
                                     nn.Linear(mlp_hidden, num_layers * 2 * kv_dim))
            self.register_parameter("prefix", None)
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
        return out.view(length, layers, two, kv_dim).permute(1, 2, 0, 3)

    @torch.no_grad()
    def fold(self) -> None:
        if self.prefix is None:
            self.prefix = nn.Parameter(self.kv().detach().clone(), requires_grad=self.embedding.requires_grad)
            del self.embedding, self.mlp
