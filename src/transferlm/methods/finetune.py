"""Standard fine-tuning: a classification head on a pooled representation, all weights trained.

Encoders pool the mean of tokens (or the first, [CLS], token); decoders pool the last
non-padding token, since a causal model has seen the whole input only there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..io import write_json
from .base import Batch, Method, MethodConfig, Prepared
from .registry import register

POOLINGS = ("auto", "cls", "mean", "last")


@dataclass
class FinetuneConfig(MethodConfig):
    # auto: mean of tokens for encoders (sentence encoders such as MiniLM are trained that way),
    # the last token for decoders.
    pooling: str = "auto"
    dropout: float = 0.1

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"method_args.pooling must be one of {POOLINGS}, got '{self.pooling}'")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"method_args.dropout must be in [0, 1), got {self.dropout}")


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "last":
        # Index of the last attended token per row; works for left and right padding.
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(how)


class SequenceClassifier(nn.Module):
    """Backbone + pooling + linear head; returns logits (``[N, C]``, or ``[N]`` for regression)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.regression = num_labels == 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw)
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling)
        logits = self.head(self.dropout(pooled))
        return logits.squeeze(-1) if self.regression else logits


def make_collate(tokenizer, spec: TaskSpec, max_length: int):
    """Tokenise once per example (cached by guid+text) and pad each batch to its own longest row."""
    cache: dict[tuple[str, str | None], dict[str, list[int]]] = {}

    def encode(ex: Example) -> dict[str, list[int]]:
        key = (ex.text_a, ex.text_b)
        if key not in cache:
            enc = tokenizer(ex.text_a, ex.text_b, truncation=True, max_length=max_length)
            cache[key] = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return cache[key]

    def collate(examples: Sequence[Example]) -> Batch:
        return dict(tokenizer.pad([encode(e) for e in examples], return_tensors="pt"))

    return collate


@register("finetune")
class Finetune(Method):
    config_cls = FinetuneConfig
    description = "standard fine-tuning: classification head, all parameters trained"

    def prepare(self, backbone, spec: TaskSpec, cfg: FinetuneConfig, *, max_length: int,
                train: Sequence[Example]) -> Prepared:
        pooling = cfg.pooling if cfg.pooling != "auto" else ("last" if backbone.is_decoder else "mean")
        model = SequenceClassifier(backbone.model, backbone.hidden_size, spec.num_labels, pooling, cfg.dropout)
        for p in model.parameters():
            p.requires_grad_(True)

        def save(folder: Path) -> None:
            # A complete, reloadable model: the fine-tuned backbone in HF format plus our head.
            model.backbone.save_pretrained(folder / "backbone")
            backbone.tokenizer.save_pretrained(folder / "backbone")
            save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(folder / "head.safetensors"))
            write_json(folder / "method.json", {"method": self.name, "config": cfg.to_dict(), "pooling": pooling,
                                                "task": spec.to_dict()})

        return Prepared(model=model, collate=make_collate(backbone.tokenizer, spec, max_length), save=save)
