from __future__ import annotations

import functools

import torch
from torch import nn

from ....errors import ConfigError
from ....training.layers import layer_of
from ..core import PeftBackbone, copy_into
from .config import BitFitOptions


def _key(path: str) -> str:
    return path.replace(".", "__")  # parameter names cannot contain dots


class BitFitBackbone(PeftBackbone):
    """Bias training as per-task bias *deltas* added by a forward hook: y = f(x) + Δb.

    For nn.Linear and nn.LayerNorm adding Δb to the output is exactly training the bias, and
    keeping it separate leaves the base model shared, so several BitFit tasks can live on one
    base model and rows of a batch can use different ones.
    """

    method = "bitfit"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sites = {path: m for path, m in self.arch.core.named_modules()
                      if isinstance(m, nn.Linear | nn.LayerNorm) and isinstance(m.bias, nn.Parameter)}
        if not self.sites:
            raise ConfigError(f"bitfit: this {self.arch.spec.family} model has no bias terms to train; "
                              "use lora, adapter or ia3")
        self.deltas = nn.ModuleDict()
        for path, m in self.sites.items():
            # A bound method (not a closure), so a deep copy of the model hooks in the copy's deltas.
            m.register_forward_hook(functools.partial(self._hook, _key(path)))

    def _hook(self, key: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            return output
        if self._rows is None:
            return output + self.deltas[self.active][key].to(output.dtype)
        table = torch.stack([self.deltas[n][key] for n in self.adapter_names])
        rows = table[self._rows]  # [batch, dim]
        return output + rows.view(rows.shape[0], *([1] * (output.dim() - 2)), rows.shape[1]).to(output.dtype)

    def layer_of_param(self, name: str) -> int | None:
        if name.startswith("deltas."):  # deltas.<adapter>.<site path with __>: the block of the biased module
            return layer_of(name.split(".", 2)[2].replace("__", ".") + ".")
        return super().layer_of_param(name)

    def _add(self, name: str, cfg: BitFitOptions) -> None:
        self.deltas[name] = nn.ParameterDict({_key(p): nn.Parameter(torch.zeros_like(m.bias))
                                              for p, m in self.sites.items()})

    def _delete(self, name: str) -> None:
        del self.deltas[name]

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v for k, v in self.deltas[name].items()}

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        copy_into(self.adapter_state(name), state, f"bitfit '{name}'")
