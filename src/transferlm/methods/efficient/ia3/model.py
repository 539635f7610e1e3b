from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..peftlib import PeftLibBackbone
from .config import IA3Options

if TYPE_CHECKING:
    from peft import IA3Config


class IA3Backbone(PeftLibBackbone):
    method = "ia3"
    peft_prefix = "ia3_"
    mixed_batches = False  # peft's IA3 layers take no per-row adapter names

    def peft_config(self, cfg: IA3Options) -> IA3Config:
        from peft import IA3Config

        s = self.arch.spec
        return IA3Config(target_modules=self.arch.target_regex([s.k, s.v, s.ffn_down]),
                         feedforward_modules=self.arch.target_regex([s.ffn_down]))

    def _mixed_forward(self, names: list[str], args: tuple, kwargs: dict[str, Any]) -> Any:
        # peft's IA3 layers run peft's active adapter, so a batch (one adapter: no mixing) makes it active
        # for this call only: plain calls afterwards keep running the adapter that was active before.
        previous = self.active
        if previous == names[0]:
            return self.model(*args, **kwargs)
        self.set_adapter(names[0])
        try:
            return self.model(*args, **kwargs)
        finally:
            if previous is not None:
                self.set_adapter(previous)
