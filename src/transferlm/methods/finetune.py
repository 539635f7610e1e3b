"""Standard fine-tuning: a classification head on a pooled representation, all weights trained.

Encoders pool the mean of tokens (or the first, [CLS], token); decoders pool the last
non-padding token, since a causal model has seen the whole input only there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import CheckpointError, ConfigError
from ..io import write_json
from ..training.layers import layer_of, layers_without_weights, num_layers, require_per_layer_weights
from .base import Batch, Method, MethodConfig, Prepared
from .registry import register

POOLINGS = ("auto", "cls", "mean", "last")


@dataclass
class FinetuneConfig(MethodConfig):
    # auto: mean of tokens for encoders (sentence encoders such as MiniLM are trained that way),
    # the last token for decoders.
    pooling: str = "auto"
    dropout: float = 0.1
    # Layer selection (Sun et al. 2019): which hidden states feed the head. 1..L are the blocks,
    # 0 the embeddings, negatives count from the top; None = the last block. Several are combined.
    layers: list[int] | None = None
    layer_combine: str = "concat"  # concat | mean
    # Freeze the embeddings and the lowest n blocks.
    freeze_layers: int = 0

    def validate(self) -> None:
        if self.layer_combine not in ("concat", "mean"):
            raise ConfigError(f"method_args.layer_combine must be concat or mean, got '{self.layer_combine}'")
        if self.freeze_layers < 0:
            raise ConfigError(f"method_args.freeze_layers must be >= 0, got {self.freeze_layers}")
        if self.layers is not None and not self.layers:
            raise ConfigError("method_args.layers must name at least one layer (or be omitted)")
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

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int, pooling: str, dropout: float,
                 layers: Sequence[int] | None = None, combine: str = "concat"):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.layers = resolve_layers(layers, num_layers(backbone)) if layers is not None else None
        self.combine = combine
        self.dropout = nn.Dropout(dropout)
        width = hidden_size * (len(self.layers) if self.layers and combine == "concat" else 1)
        self.head = nn.Linear(width, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.regression = num_labels == 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        if self.layers is None:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw)
            pooled = pool(out.last_hidden_state, attention_mask, self.pooling)
        else:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kw)
            chosen = [pool(out.hidden_states[i], attention_mask, self.pooling) for i in self.layers]
            pooled = torch.cat(chosen, -1) if self.combine == "concat" else torch.stack(chosen).mean(0)
        logits = self.head(self.dropout(pooled))
        return logits.squeeze(-1) if self.regression else logits


def resolve_layers(layers: Sequence[int], depth: int) -> list[int]:
    """Map 0..L / negative layer numbers to indices into ``hidden_states`` (0 = embeddings)."""
    out = []
    for k in layers:
        idx = k if k >= 0 else depth + 1 + k
        if not 0 <= idx <= depth:
            raise ConfigError(f"method_args.layers: layer {k} does not exist (the model has {depth} layers; "
                              f"use 0..{depth} or -1..-{depth + 1})")
        out.append(idx)
    return out


def freeze_lower_layers(model: nn.Module, n: int, depth: int) -> None:
    """Freeze the embeddings and blocks 1..n of the backbone (the head stays trainable)."""
    if n > depth:
        raise ConfigError(f"method_args.freeze_layers={n} exceeds the model's {depth} layers; use 0..{depth}")
    if n == depth and layers_without_weights(model.backbone, depth):
        # Blocks that share weights (ALBERT) are all frozen or none are: freezing every layer is well defined.
        model.backbone.requires_grad_(False)
        return
    require_per_layer_weights(model.backbone, depth, f"method_args.freeze_layers={n}")
    for name, p in model.named_parameters():
        k = layer_of(name)
        if name.startswith("backbone.") and k is not None and k <= n:
            p.requires_grad_(False)


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


def resolve_pooling(pooling: str, backbone: Any) -> str:
    """The pooling to use: ``auto`` is ``last`` on decoders and ``mean`` on encoders; ``cls`` on a decoder is an
    error (causal attention: the first position has seen only the first token, BOS or padding, the same for
    every input, so the head would get no information about the input)."""
    if pooling == "auto":
        return "last" if backbone.is_decoder else "mean"
    if pooling == "cls" and backbone.is_decoder:
        raise ConfigError("method_args.pooling=cls on a decoder-only model pools a first token that has seen "
                          "nothing of the input; use pooling last (or auto)")
    return pooling


@register("finetune")
class Finetune(Method):
    config_cls = FinetuneConfig
    description = "standard fine-tuning: classification head, all parameters trained"

    def prepare(self, backbone, spec: TaskSpec, cfg: FinetuneConfig, *, max_length: int,
                train: Sequence[Example]) -> Prepared:
        pooling = resolve_pooling(cfg.pooling, backbone)
        model = SequenceClassifier(backbone.model, backbone.hidden_size, spec.num_labels, pooling, cfg.dropout,
                                   layers=cfg.layers, combine=cfg.layer_combine)
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.freeze_layers:
            freeze_lower_layers(model, cfg.freeze_layers, num_layers(backbone.model))

        def save(folder: Path) -> None:
            # A complete, reloadable model: the fine-tuned backbone in HF format plus our head.
            model.backbone.save_pretrained(folder / "backbone")
            backbone.tokenizer.save_pretrained(folder / "backbone")
            save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(folder / "head.safetensors"))
            write_json(folder / "method.json", {"method": self.name, "config": cfg.to_dict(), "pooling": pooling,
                                                "task": spec.to_dict()})

        return Prepared(model=model, collate=make_collate(backbone.tokenizer, spec, max_length), save=save)


def load_finetuned(folder: str | Path) -> tuple[Any, SequenceClassifier]:
    """The backbone and classifier (eval mode) that a finetune run saved in ``folder`` with ``save_model: true``."""
    from ..models.loading import load_backbone

    folder = Path(folder)
    head_path = folder / "head.safetensors"
    if not (folder / "backbone").is_dir() or not head_path.is_file():
        raise ConfigError(f"{folder}: a finetune model needs its backbone/ folder and head.safetensors "
                          "(written by a run with save_model: true)")
    try:
        meta = json.loads((folder / "method.json").read_text(encoding="utf-8"))
        state = load_file(str(head_path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot read the saved finetune model ({str(e).splitlines()[0]})") from None
    cfg = Finetune().parse_config({k: v for k, v in (meta.get("config") or {}).items()
                                   if k in FinetuneConfig.__dataclass_fields__})
    if "weight" not in state or state["weight"].dim() != 2:
        raise CheckpointError(f"{head_path}: not a linear head (no 2-d 'weight')")
    backbone = load_backbone(str(folder / "backbone"))
    model = SequenceClassifier(backbone.model, backbone.hidden_size, state["weight"].shape[0],
                               meta.get("pooling") or "mean", 0.0, layers=cfg.layers, combine=cfg.layer_combine)
    try:
        model.head.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{head_path}: does not fit this backbone ({str(e).splitlines()[-1].strip()})") from None
    return backbone, model.eval()
