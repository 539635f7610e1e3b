"""Methods that run through the ``peft`` library (LoRA, IA3), saved in PEFT's own format.

The folder a run writes loads with ``peft.PeftModel.from_pretrained(base, folder)``; ``adapter.json``
beside it carries our config and the base model's signature for :func:`load_task_adapter`.
peft is imported on first use: it costs seconds at start-up, and most commands never need it.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...errors import CheckpointError, ConfigError
from .core import HOST_ATTR, PeftBackbone, SavedAdapter

if TYPE_CHECKING:
    from peft import PeftConfig

PEFT_WEIGHTS = "adapter_model.safetensors"


class PeftLibBackbone(PeftBackbone):
    peft_prefix = ""  # peft's parameter prefix ("lora_"): adapter names inside it confuse peft's loading

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, train_lm_head: bool = False) -> None:
        super().__init__(model, tokenizer=tokenizer, train_lm_head=train_lm_head)
        self._train_lm_head = train_lm_head

    def peft_config(self, cfg: Any) -> PeftConfig:
        raise NotImplementedError

    def check_new_name(self, name: str) -> None:
        super().check_new_name(name)
        if self.peft_prefix and name in self.peft_prefix:
            raise ConfigError(f"adapter name '{name}' is part of peft's parameter prefix '{self.peft_prefix}', "
                              "which peft may mistake on loading; choose another name")

    @property
    def hf_model(self) -> nn.Module:
        from peft import PeftModel

        # Not get_base_model(): it looks up peft's active adapter, which is stale once the last one is deleted.
        return self.model.base_model.model if isinstance(self.model, PeftModel) else self.model

    def _add(self, name: str, cfg: Any) -> None:
        self._add_peft(name, self.peft_config(cfg))

    def _add_peft(self, name: str, pcfg: PeftConfig) -> None:
        from peft import PeftModel, get_peft_model

        try:
            if isinstance(self.model, PeftModel):
                self.model.add_adapter(name, pcfg)
            else:
                with warnings.catch_warnings():  # peft asks transformers a deprecated question
                    warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
                    self.model = get_peft_model(self.model, pcfg, adapter_name=name)
        except ValueError as e:  # e.g. "Target modules ... not found in the base model"
            raise ConfigError(f"{self.method}: {str(e).splitlines()[0][:300]}") from None
        if self._train_lm_head:  # peft freezes everything but its adapters
            self._unfreeze_head(self.hf_model)

    def set_adapter(self, name: str) -> None:
        frozen = not any(p.requires_grad for p in self.parameters())
        super().set_adapter(name)
        self.model.set_adapter(name)
        if frozen:  # peft's set_adapter makes the adapter trainable; a frozen wrapper (a teacher) stays frozen
            self.requires_grad_(False)

    def _activate(self, name: str) -> None:
        super()._activate(name)
        self.model.set_adapter(name)  # peft keeps its own active adapter (stale after deleting the last one)

    def _forward(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.active is None:  # every adapter deleted: the bare model, past peft's (adapterless) wrapper
            return self.hf_model(*args, **kwargs)
        return self.model(*args, **kwargs)

    def _delete(self, name: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):  # peft drops the adapter's layers and config
            self.model.delete_adapter(name)

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model, adapter_name=name)

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        expected = set(self.adapter_state(name))
        unexpected = sorted(set(state) - expected)
        missing = sorted(expected - set(state))
        if unexpected or missing:
            raise CheckpointError(f"{self.method} adapter weights do not match this model (missing {missing[:2]}, "
                                  f"unexpected {unexpected[:2]}); was it trained on another model class?")
        try:
            set_peft_model_state_dict(self.model, state, adapter_name=name)
        except RuntimeError as e:  # torch's multi-line size-mismatch report: keep its first mismatch
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise CheckpointError(f"{self.method} adapter '{name}': {lines[min(1, len(lines) - 1)][:300]}; "
                                  "was it trained on another base model?") from None

    def save_adapter(self, folder: Path, name: str) -> None:
        self.check_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        pcfg = copy.copy(self.model.peft_config[name])
        pcfg.inference_mode = True
        pcfg.base_model_name_or_path = getattr(self.hf_model.config, "_name_or_path", None) or None
        pcfg.save_pretrained(str(folder))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.adapter_state(name).items()},
                  str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})
        self.write_meta(folder, self.configs[name])

    @classmethod
    def read_adapter(cls, folder: Path) -> SavedAdapter:
        from peft import PeftConfig

        cfg, base = cls.read_config(folder)
        state = load_file(str(folder / PEFT_WEIGHTS))
        pcfg = PeftConfig.from_pretrained(str(folder))
        pcfg.inference_mode = False
        return SavedAdapter(folder, cfg, base, state, extra=pcfg)

    def attach_adapter(self, name: str, saved: SavedAdapter) -> None:
        self.check_signature(saved.base, str(saved.folder))
        self.check_new_name(name)
        self._add_peft(name, copy.copy(saved.extra))  # peft keeps the config it is given: one per adapter
        self.configs[name] = saved.config
        if self.active is None:
            self._activate(name)
        self.load_or_remove(name, saved.state)

    def merged_copy(self, name: str | None = None) -> nn.Module:
        """A copy of the base model with adapter ``name`` folded into its weights (no peft needed)."""
        name = name or self.active
        self.check_name(name)
        # The memo keeps the copy from dragging this wrapper along through the host marker.
        dup = copy.deepcopy(self.model, memo={id(self): None})
        merged = dup.merge_and_unload(adapter_names=[name])
        merged.__dict__.pop(HOST_ATTR, None)
        return merged
