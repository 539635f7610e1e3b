"""The registry side: a PEFT backbone under finetune's classification head, and what a run saves."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file

from ...data.example import Example
from ...data.tasks import TaskSpec
from ...io import write_json
from ..base import Method, Prepared
from ..finetune import SequenceClassifier, make_collate, resolve_pooling
from .config import EfficientConfig

log = logging.getLogger(__name__)
METHOD_FILE = "method.json"
HEAD_FILE = "head.safetensors"


class EfficientMethod(Method):
    def prepare(self, backbone, spec: TaskSpec, cfg: EfficientConfig, *, max_length: int,
                train: Sequence[Example]) -> Prepared:
        from . import apply_peft

        pooling = resolve_pooling(cfg.pooling, backbone)
        peft = apply_peft(backbone, self.name, cfg)
        max_length = fit_positions(peft, self.name, cfg, max_length)
        model = SequenceClassifier(peft, backbone.hidden_size, spec.num_labels, pooling, cfg.head_dropout)

        def save(folder: Path) -> None:
            # The adapter's own weights (PEFT format for lora/prompt-tuning), the head, and what loading needs.
            peft.save_adapter(folder, peft.active)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                      str(folder / HEAD_FILE))
            write_json(folder / METHOD_FILE, {"method": self.name, "config": cfg.to_dict(), "pooling": pooling,
                                              "task": spec.to_dict(), "base": peft.signature,
                                              "num_labels": spec.num_labels,
                                              # what inputs were cut to (soft prompts take positions): serving too
                                              "max_length": max_length})
            if getattr(cfg, "merge", False):
                merged = peft.merged_copy()
                merged.save_pretrained(folder / "merged")
                backbone.tokenizer.save_pretrained(folder / "merged")

        return Prepared(model=model, collate=make_collate(backbone.tokenizer, spec, max_length), save=save,
                        extras={"peft": peft})


def fit_positions(model, method: str, options, max_length: int) -> int:
    """``max_length`` cut so ``method``'s soft prompt + the text fit an absolute-position model's table.

    One place for the run (``prepare``, also nested under prompt-finetune) and the server, which must tokenise
    alike. ``model`` is the Hugging Face model or its PEFT wrapper; ``options`` the method's config.
    """
    model = getattr(getattr(model, "arch", None), "model", model)  # a PeftBackbone: the model it wraps
    config = model.config
    table = getattr(config, "max_position_embeddings", None)
    k = getattr(options, "length", 0) if method == "prompt-tuning" else 0  # prefixes take no positions
    if not (k and table):
        return max_length
    from .arch import resolve_arch

    spec = resolve_arch(model).spec
    if not spec.absolute_positions:  # rotary: no table to overrun
        return max_length
    room = table - k - (config.pad_token_id + 1 if spec.position_offset_from_padding else 0)
    if max_length > room:
        log.warning("prompt-tuning: truncating inputs to %d tokens so %d soft tokens fit in %d positions",
                    room, k, table)
        return room
    return max_length
