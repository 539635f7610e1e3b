from __future__ import annotations

import functools

import torch
from torch import nn

from ..core import PeftBackbone, copy_into
from .config import AdapterOptions
from .layer import Adapter


class AdapterBackbone(PeftBackbone):
    """Adapters on the output projection of each attention block and FFN, before residual + norm.

    A forward hook on that projection (BERT's ``attention.output.dense``/``output.dense``, Llama's
    ``o_proj``/``down_proj``) adds the adapter branch to its output, so the model's own forward
    code runs unchanged. Weights live in ``banks[<layer>_<site>][<adapter name>]``.
    """

    method = "adapter"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.banks = nn.ModuleDict()

    def _bank(self, layer: int, site: str) -> nn.ModuleDict:
        key = f"{layer}_{site}"
        if key not in self.banks:
            bank = nn.ModuleDict()
            self.banks[key] = bank
            rel = self.arch.spec.o if site == "attn" else self.arch.spec.ffn_down
            # A bound method (not a closure): a deep copy of the model (self-distillation's teacher) rebinds it
            # to the copy's own banks instead of running the original's weights.
            self.arch.site(layer, rel).register_forward_hook(functools.partial(self._hook, key))
        return self.banks[key]

    def _hook(self, key: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.active is None:
            return output
        bank = self.banks[key]

        def branch(name: str, y: torch.Tensor) -> torch.Tensor:
            # A task whose variant has no adapter at this site passes through.
            return bank[name](y) if name in bank else torch.zeros_like(y)

        return output + self.route(output, branch)

    def layer_of_param(self, name: str) -> int | None:
        if name.startswith("banks."):  # banks.<layer>_<site>.<adapter>...: 0-based layer in the bank key
            return int(name.split(".")[1].split("_")[0]) + 1
        return super().layer_of_param(name)

    def _add(self, name: str, cfg: AdapterOptions) -> None:
        for layer in range(self.arch.num_layers):
            for site in cfg.sites:
                rel = self.arch.spec.o if site == "attn" else self.arch.spec.ffn_down
                dim = self.arch.site(layer, rel).out_features
                self._bank(layer, site)[name] = Adapter(dim, cfg.bottleneck, cfg.activation)

    def _delete(self, name: str) -> None:
        for bank in self.banks.values():
            if name in bank:
                del bank[name]  # an emptied bank's hook passes outputs through

    def _params(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{key}.{k}": p for key, bank in self.banks.items() if name in bank
                for k, p in bank[name].named_parameters()}

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        return self._params(name)

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        copy_into(self._params(name), state, f"adapter '{name}'")
