"""Shared prompt prefixes at evaluation: their key/value states are computed once and reused.

A causal LM reads demonstrations before the input, so every row of one demonstration set starts with the
same tokens. LM-BFF draws one demonstration per class from the most similar half of that class: on a
binary task a few hundred distinct pairs serve thousands of (input, set) rows, and the demonstrations are
most of each row's tokens. While the weights stay fixed (one evaluation pass: :meth:`PromptModel.
inference_scope`), a prefix's keys and values depend only on its tokens, so they are computed once; each
row then runs only its own tokens (input and template) against them. The scores equal a full pass up to
float rounding.

Where prefixes rarely repeat (5 or 6 classes: one of 8 candidates per class gives tens of thousands of
sets; random in-context demonstrations), reuse cannot pay, and the cache switches itself off after a
probe of ``probe_rows`` rows with a hit rate under ``min_hit_rate``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import compat
from ..models.loading import DECODER_TYPES
from .inputs import pad_rows

log = logging.getLogger(__name__)
Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, kv_heads, length, head_dim]


def supports_prefix_reuse(lm: nn.Module) -> bool:
    """Whether ``lm`` can run a row's tokens against cached prefix states with an explicit 4D mask.

    Decoders with full attention everywhere, under sdpa or eager attention, and no PEFT method that puts its
    own tokens in front (prefix- and prompt-tuning: ``extends_context``).
    """
    if getattr(lm, "extends_context", False):
        return False
    hf = compat.hf_model(lm)
    if hf is None:
        return False
    cfg = hf.config
    if not (cfg.model_type in DECODER_TYPES or getattr(cfg, "is_decoder", False)):
        return False
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return False
    return not (getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True))


@dataclass
class PrefixCache:
    """Prefix token ids → their layers' keys and values, least recently used evicted past ``max_bytes``."""

    max_bytes: int
    probe_rows: int = 256
    min_hit_rate: float = 0.3
    entries: OrderedDict[tuple[int, ...], Layers] = field(default_factory=OrderedDict)
    bytes: int = 0
    rows: int = 0
    hits: int = 0
    active: bool = True

    def get(self, key: tuple[int, ...]) -> Layers | None:
        layers = self.entries.get(key)
        if layers is not None:
            self.entries.move_to_end(key)
        return layers

    def put(self, key: tuple[int, ...], layers: Layers) -> None:
        size = _nbytes(layers)
        if size > self.max_bytes:
            return
        self.entries[key] = layers
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= _nbytes(self.entries.popitem(last=False)[1])

    def record(self, rows: int, hits: int) -> None:
        """Count rows served and how many found their prefix cached; give up where reuse does not pay."""
        self.rows += rows
        self.hits += hits
        if self.active and self.rows >= self.probe_rows and self.hits < self.min_hit_rate * self.rows:
            self.active = False
            self.entries.clear()
            self.bytes = 0
            log.info("prefix reuse off for this evaluation: %d of %d rows found their demonstrations cached",
                     self.hits, self.rows)


def _nbytes(layers: Layers) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def split_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                   prefix_lengths: torch.Tensor) -> tuple[list[tuple[int, ...]], torch.Tensor, torch.Tensor]:
    """Each row's prefix key (its first tokens), prefix length and total length.

    A prefix never reaches a position that is read (the LM head runs on the row's own tokens only), so every
    row keeps at least one token of its own.
    """
    lengths = attention_mask.sum(1)
    shared = torch.minimum(prefix_lengths.to(lengths.device), positions.min(1).values).clamp(min=0)
    keys = [tuple(input_ids[r, :s].tolist()) for r, s in enumerate(shared.tolist())]
    return keys, shared, lengths


def compute_prefixes(run: Any, keys: list[tuple[int, ...]], pad_id: int, device: torch.device,
                     chunk: int) -> dict[tuple[int, ...], Layers]:
    """Keys and values of each prefix: right-padded batches (causal attention keeps pads out of real tokens).

    ``run(batch)`` takes ``pad_rows``' batch (one read position per row, the first token) and returns the model
    output with its cache (``use_cache=True``).
    """
    out: dict[tuple[int, ...], Layers] = {}
    for i in range(0, len(keys), chunk):
        part = keys[i:i + chunk]
        batch = {k: v.to(device) for k, v in pad_rows([(list(k), 0) for k in part], pad_id).items()}
        layers = compat.kv_tensors(compat.output_cache(run(batch)))
        for r, k in enumerate(part):
            out[k] = [(key[r:r + 1, :, :len(k)].clone(), val[r:r + 1, :, :len(k)].clone()) for key, val in layers]
    return out


def assemble(states: list[Layers | None], shared: torch.Tensor) -> tuple[Layers, torch.Tensor]:
    """One batch of prefix states, each row's own right-padded to the longest, and the mask of real slots."""
    longest = int(shared.max())
    ref = next(s for s in states if s is not None)
    rows = len(states)
    batch: Layers = []
    for layer, (k0, v0) in enumerate(ref):
        k = k0.new_zeros((rows, k0.shape[1], longest, k0.shape[3]))
        v = v0.new_zeros((rows, v0.shape[1], longest, v0.shape[3]))
        for r, s in enumerate(states):
            if s is not None:
                n = s[layer][0].shape[2]
                k[r, :, :n] = s[layer][0][0]
                v[r, :, :n] = s[layer][1][0]
        batch.append((k, v))
    slots = torch.arange(longest, device=shared.device)[None, :] < shared[:, None]
    return batch, slots


def query_inputs(input_ids: torch.Tensor, shared: torch.Tensor, lengths: torch.Tensor, pad_id: int,
                 prefix_slots: torch.Tensor, eager_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Each row's own tokens (after its prefix), their positions, and the 4D mask over prefix slots + them.

    The mask is explicit because prefixes of different lengths leave padded slots between a row's prefix and
    its tokens. Booleans (True: attend) for sdpa; an additive float mask for eager attention.
    """
    own = lengths - shared
    width = int(own.max())
    rows = input_ids.shape[0]
    ids = torch.full((rows, width), pad_id, dtype=torch.long, device=input_ids.device)
    for r in range(rows):
        s, n = int(shared[r]), int(own[r])
        ids[r, :n] = input_ids[r, s:s + n]
    steps = torch.arange(width, device=input_ids.device)
    positions = shared[:, None] + steps[None, :]
    causal = steps[None, :] <= steps[:, None]  # [width, width]: token j visible to token i
    real = steps[None, :] < own[:, None]  # [rows, width]
    mine = causal[None] & real[:, None, :]
    mask = torch.cat([prefix_slots[:, None, :].expand(rows, width, -1), mine], dim=2)[:, None]
    if eager_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=eager_dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(eager_dtype).min)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
