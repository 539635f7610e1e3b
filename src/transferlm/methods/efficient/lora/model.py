from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ....errors import ConfigError
from ..peftlib import PeftLibBackbone
from .config import LoraOptions

if TYPE_CHECKING:
    from peft import LoraConfig


def lora_targets(backbone: PeftLibBackbone, cfg: LoraOptions) -> list[str]:
    """Module names (relative to a layer) that LoRA wraps, from the preset or the explicit list."""
    s = backbone.arch.spec
    presets = {"qv": [s.q, s.v], "attention": [s.q, s.k, s.v, s.o],
               "all-linear": [s.q, s.k, s.v, s.o, *s.ffn_up, s.ffn_down]}
    if cfg.preset:
        return presets[cfg.preset]
    linears = backbone.arch.layer_linear_names()
    chosen: list[str] = []
    for want in cfg.target:
        hits = [n for n in linears if n == want or n.endswith("." + want)]
        if not hits:
            raise ConfigError(f"method_args.target: '{want}' matches no linear module in a "
                              f"{backbone.arch.spec.family} layer; available: {', '.join(linears)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


class LoraBackbone(PeftLibBackbone):
    method = "lora"
    peft_prefix = "lora_"

    def peft_config(self, cfg: LoraOptions) -> LoraConfig:
        from peft import LoraConfig

        return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                          target_modules=self.arch.target_regex(lora_targets(self, cfg)))

    def _mixed_forward(self, names: list[str], args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.training:
            raise ConfigError("LoRA batches that mix adapters run in eval mode only (peft); call .eval() first")
        # peft routes each row through its own LoRA weights.
        return self.model(*args, adapter_names=names, **kwargs)
