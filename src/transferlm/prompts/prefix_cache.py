"""Shared prompt prefixes at evaluation: their key/value states are computed once and reused.

A causal LM reads demonstrations before the input, so every row of one demonstration set starts with the
same tokens. LM-BFF draws one demonstration per class from the most similar half of that class: on a
binary task a few hundred distinct pairs serve thousands of (input, set) rows, and the demonstrations are
most of each row's tokens. While the weights stay fixed (one evaluation pass: :meth:`PromptModel.
inference_scope`), a prefix's keys and values depend only on its tokens, so they are computed once; each
row then runs only its own tokens (input and template) against them. The scores equal a full pass up to
float rounding.

With more classes whole demonstration sets rarely repeat (5 classes, one of 8 candidates each: tens of
thousands of sets), but their first demonstrations do. So the cache is a trie: the states of each
demonstration are stored under the tokens up to its end, and a row starts from the longest run of stored
demonstrations, computing only the rest of its prefix (on sst-5 about half of the demonstrations' tokens
are found). Where little is found (random in-context demonstrations), reuse cannot pay, and the cache
switches itself off after a probe of ``probe_rows`` rows that found under ``min_hit_rate`` of their
prefix tokens.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import compat
from ..models.loading import DECODER_TYPES
from .inputs import pad_rows

log = logging.getLogger(__name__)
Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, kv_heads, length, head_dim]
Segments = list[Layers]  # a prefix's states, one segment per demonstration, in order


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
    """A trie of demonstration states, least recently used segments evicted past ``max_bytes``.

    ``entries[tokens up to a demonstration's end] = (where its segment starts, the segment's states)``.
    A lookup touches a path's segments deepest first, so ancestors stay more recent than their children
    and are evicted after them.
    """

    max_bytes: int
    probe_rows: int = 256
    min_hit_rate: float = 0.15
    entries: OrderedDict[tuple[int, ...], tuple[int, Layers]] = field(default_factory=OrderedDict)
    bytes: int = 0
    rows: int = 0
    hits: int = 0  # rows whose whole prefix was stored (or computed earlier in the same batch)
    tokens: int = 0  # prefix tokens of all rows
    found: int = 0  # of those, the ones not computed
    active: bool = True

    def path(self, key: tuple[int, ...], bounds: Sequence[int]) -> Segments:
        """The stored segments of ``key`` from its start, as far as they reach (levels end at ``bounds``)."""
        found: list[tuple[int, ...]] = []
        out: Segments = []
        start = 0
        for b in bounds:
            entry = self.entries.get(key[:b])
            if entry is None or entry[0] != start:  # a segment cut elsewhere (another row's bounds): not ours
                break
            found.append(key[:b])
            out.append(entry[1])
            start = b
        for k in reversed(found):
            self.entries.move_to_end(k)
        return out

    def put(self, key: tuple[int, ...], start: int, layers: Layers) -> None:
        """Store the segment of ``key``'s positions ``start:`` (a whole prefix with ``start=0``)."""
        size = _nbytes(layers)
        if size > self.max_bytes:
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= _nbytes(old[1])
        self.entries[key] = (start, layers)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= _nbytes(self.entries.popitem(last=False)[1][1])

    def record(self, rows: int, hits: int, tokens: int, found: int) -> None:
        """Count rows and prefix tokens served; give up where too few tokens were found to pay."""
        self.rows += rows
        self.hits += hits
        self.tokens += tokens
        self.found += found
        if self.active and self.rows >= self.probe_rows and self.found < self.min_hit_rate * self.tokens:
            self.active = False
            self.entries.clear()
            self.bytes = 0
            log.info("prefix reuse off for this evaluation: %d of %d rows' prefix tokens were found cached",
                     self.found, self.tokens)


def _nbytes(layers: Layers) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def path_length(path: Segments) -> int:
    return sum(seg[0][0].shape[2] for seg in path)


def length_groups(lengths: Sequence[int], most: int, slack: float = 0.25) -> list[list[int]]:
    """Indices grouped by length (shortest first), each group padding at most ``slack`` beyond its real tokens.

    Rows are ordered by their whole length, but what a pass with reused prefixes runs is only their rest, whose
    lengths vary within a batch: grouping them keeps padding from eating the saving.
    """
    groups: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if cur and (len(cur) == most or lengths[i] * (len(cur) + 1) > (1 + slack) * (real + lengths[i])):
            groups.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += lengths[i]
    return groups + [cur] if cur else groups


def split_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                   prefix_bounds: torch.Tensor) -> tuple[list[tuple[int, ...]], list[list[int]], torch.Tensor,
                                                         torch.Tensor]:
    """Each row's prefix key (its first tokens), the ends of its levels, prefix length and total length.

    ``prefix_bounds``: ``[rows]`` (one level) or ``[rows, levels]`` (each demonstration's end, 0 = none).
    A prefix never reaches a position that is read (the LM head runs on the row's own tokens only), so every
    row keeps at least one token of its own.
    """
    lengths = attention_mask.sum(1)
    marks = prefix_bounds.to(lengths.device)
    marks = marks[:, None] if marks.dim() == 1 else marks
    cap = positions.min(1).values.clamp(min=0)
    shared = torch.minimum(marks.max(1).values, cap).clamp(min=0)
    bounds: list[list[int]] = []
    for row, s in zip(marks.tolist(), shared.tolist(), strict=True):
        bounds.append([b for b in row if 0 < b < s] + ([s] if s else []))
    keys = [tuple(input_ids[r, :s].tolist()) for r, s in enumerate(shared.tolist())]
    return keys, bounds, shared, lengths


def extend_prefixes(run: Callable[[dict[str, torch.Tensor], Layers | None], Any], keys: list[tuple[int, ...]],
                    found: list[Segments], pad_id: int, device: torch.device, eager: bool) -> list[Layers]:
    """The states of each key's tokens after its found segments (all of them where none is found).

    ``run(inputs, past)`` runs the LM with ``use_cache=True`` on ``inputs`` after the states ``past`` (or
    none) and returns its output. Without found segments the keys run as right-padded rows (causal attention
    keeps pads out of real tokens); otherwise as rows against their found states.
    """
    have = torch.tensor([path_length(p) for p in found], device=device)
    padded = pad_rows([(list(k), 0) for k in keys], pad_id)
    ids = padded["input_ids"].to(device)
    if int(have.max()) == 0:
        layers = compat.kv_tensors(compat.output_cache(run({"input_ids": ids,
                                                            "attention_mask": padded["attention_mask"].to(device)},
                                                           None)))
        return [[(k[r:r + 1, :, :len(key)], v[r:r + 1, :, :len(key)]) for k, v in layers]
                for r, key in enumerate(keys)]
    lengths = torch.tensor([len(k) for k in keys], device=device)
    past, slots = assemble(found, have)
    inputs = query_inputs(ids, have, lengths, pad_id, slots, past[0][0].dtype if eager else None)
    layers = compat.kv_tensors(compat.output_cache(run(inputs, past)))
    start = slots.shape[1]  # the new tokens follow the padded found states
    return [[(k[r:r + 1, :, start:start + n], v[r:r + 1, :, start:start + n]) for k, v in layers]
            for r, n in enumerate((lengths - have).tolist())]


def cut_levels(new: Layers, start: int, bounds: Sequence[int]) -> list[tuple[int, int, Layers]]:
    """Cut the states of positions ``start:`` into one segment per level: (from, to, states), copied."""
    out = []
    for b in bounds:
        if b <= start:
            continue
        lo = out[-1][1] if out else start
        out.append((lo, b, [(k[:, :, lo - start:b - start].clone(), v[:, :, lo - start:b - start].clone())
                            for k, v in new]))
    return out


def assemble(paths: Sequence[Segments | None], shared: torch.Tensor) -> tuple[Layers, torch.Tensor]:
    """One batch of prefix states, each row's own right-padded to the longest, and the mask of real slots."""
    longest = int(shared.max())
    ref = next(p[0] for p in paths if p)
    rows = len(paths)
    batch: Layers = []
    for layer, (k0, v0) in enumerate(ref):
        k = k0.new_zeros((rows, k0.shape[1], longest, k0.shape[3]))
        v = v0.new_zeros((rows, v0.shape[1], longest, v0.shape[3]))
        for r, path in enumerate(paths):
            at = 0
            for seg in path or ():
                sk, sv = seg[layer]
                n = sk.shape[2]
                k[r, :, at:at + n] = sk[0]
                v[r, :, at:at + n] = sv[0]
                at += n
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
