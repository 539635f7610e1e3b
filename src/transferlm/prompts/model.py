"""PromptModel: a language model, read at the answer slot through a verbalizer, as a classifier.

It returns label log-probabilities ``[batch, num_labels]`` (or expected values ``[batch]`` for
regression), so the engine's cross-entropy over them is exactly the prompt-based fine-tuning loss
of PET / LM-BFF: -log p(label word of y | prompt), normalised over the label words.

Speed: the LM's output layer runs only at the answer positions (a pre-hook on the output embedding
gathers them), never over the whole sequence and vocabulary. During one evaluation pass
(:meth:`PromptModel.inference_scope`), rows that start with the same demonstrations reuse their keys and
values (``prefix_cache``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .. import compat
from ..errors import ConfigError
from .demonstrations import stable_seed
from .prefix_cache import (
    Layers,
    PrefixCache,
    Segments,
    assemble,
    cut_levels,
    extend_prefixes,
    length_groups,
    path_length,
    query_inputs,
    split_prefixes,
    supports_prefix_reuse,
)
from .verbalizer import Verbalizer, answer_search

log = logging.getLogger(__name__)


# How predictions over several demonstration sets combine: the mean probability, or the mean log-probability
# (LM-BFF's mean of the raw label-word logits, up to a constant per set).
ENSEMBLES = ("prob", "logit")


class PromptModel(nn.Module):
    def __init__(self, lm: nn.Module, verbalizer: Verbalizer | None, *, poles: tuple[float, float] | None = None,
                 search: str = "argmax", seed: int = 0, eval_chunk: int = 64, prefix_cache_mb: int = 1024,
                 pad_id: int = 0, ensemble: str = "prob") -> None:
        super().__init__()
        if ensemble not in ENSEMBLES:
            raise ConfigError(f"method_args.demo_ensemble must be one of {', '.join(ENSEMBLES)}, got '{ensemble}'")
        self.ensemble = ensemble
        # Named "backbone" so optimiser helpers (layer-wise learning rates) find the transformer.
        self.backbone = lm
        self.verbalizer = verbalizer
        self.poles, self.search, self.seed, self.eval_chunk = poles, search, seed, eval_chunk
        self._positions: torch.Tensor | None = None
        self._seq_len = 0
        self._gathered = False
        self.prefix_cache_mb, self.pad_id = prefix_cache_mb, pad_id
        self._prefixes: PrefixCache | None = None
        head = output_head(lm)
        self._hook = head.register_forward_pre_hook(self._gather_hook) if head is not None else None

    def remove_hook(self) -> None:
        """Detach from the LM (for short-lived readers; a method's model keeps its hook for the run)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _gather_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._positions is None or not args or args[0].dim() != 3:
            return None
        hidden = args[0]
        # PEFT prompt methods prepend virtual tokens: answer positions shift by their number. The virtual
        # positions stay in front of the gathered ones, since a wrapper may strip them from the logits
        # (ours does, to align outputs with the input) or may not (answer_logits keeps the last ones).
        offset = hidden.shape[1] - self._seq_len
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        self._gathered = True
        return (torch.cat([hidden[:, :offset], hidden[rows, self._positions + offset]], dim=1), *args[1:])

    @contextmanager
    def inference_scope(self) -> Iterator[None]:
        """One evaluation pass of fixed weights: rows may reuse the keys and values of shared prefixes.

        The engine opens it around each evaluation; outside it (training, or weights that may change
        between calls) every row runs whole.
        """
        if self.prefix_cache_mb <= 0 or not supports_prefix_reuse(self.backbone):
            yield
            return
        self._prefixes = cache = PrefixCache(self.prefix_cache_mb * 2**20)
        try:
            yield
        finally:
            self._prefixes = None
            log.debug("prefix reuse: %d of %d rows found their whole prefix, %d of %d prefix tokens found "
                      "(%d segments, %.0f MB)", cache.hits, cache.rows, cache.found, cache.tokens, len(cache.entries),
                      cache.bytes / 2**20)

    def answer_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                      prefix_bounds: torch.Tensor | None = None) -> torch.Tensor:
        """LM logits ``[R, L, V]`` at ``positions`` (``[R, L]``) of each row.

        ``prefix_bounds``: where each row's demonstrations end (``[R, D]``, 0 = none), or only the last of
        them (``[R]``): its first tokens that rows of other inputs may share.
        """
        if not torch.is_grad_enabled() and input_ids.shape[0] > self.eval_chunk:
            # Evaluation with many rows (demonstration ensembles): bounded memory, same numbers.
            c = self.eval_chunk
            return torch.cat([self.answer_logits(input_ids[i:i + c], attention_mask[i:i + c], positions[i:i + c],
                                                 None if prefix_bounds is None else prefix_bounds[i:i + c])
                              for i in range(0, input_ids.shape[0], c)])
        cache = self._prefixes
        if (cache is not None and cache.active and prefix_bounds is not None and not torch.is_grad_enabled()
                and int(prefix_bounds.max()) > 0):
            return self._reusing_prefixes(cache, input_ids, attention_mask, positions, prefix_bounds)
        return self._read({"input_ids": input_ids, "attention_mask": attention_mask}, positions, input_ids.shape[1])

    @contextmanager
    def _reading(self, positions: torch.Tensor, seq_len: int) -> Iterator[None]:
        """LM passes inside read their head only at ``positions`` (of the ``seq_len`` tokens given)."""
        self._positions, self._seq_len, self._gathered = positions, seq_len, False
        try:
            yield
        finally:
            self._positions = None

    def _read(self, inputs: dict[str, Any], positions: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Run the LM on ``inputs`` and return its logits at ``positions`` (of the ``seq_len`` tokens given)."""
        with self._reading(positions, seq_len):
            logits = self.backbone(**inputs).logits
        if not self._gathered:  # the head bypassed the hook (e.g. a functional tied head): gather here
            rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
            return logits[rows, positions + (logits.shape[1] - seq_len)]
        return logits[:, logits.shape[1] - positions.shape[1]:]  # any virtual positions left in front

    def _reusing_prefixes(self, cache: PrefixCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          positions: torch.Tensor, prefix_bounds: torch.Tensor) -> torch.Tensor:
        keys, bounds, shared, lengths = split_prefixes(input_ids, attention_mask, positions, prefix_bounds)
        if not any(keys):  # nothing before the read positions to share
            return self._read({"input_ids": input_ids, "attention_mask": attention_mask}, positions,
                              input_ids.shape[1])
        paths = self._prefix_states(cache, keys, bounds)
        return self._after_prefixes(input_ids, attention_mask, positions, keys, paths, shared, lengths)

    def _prefix_states(self, cache: PrefixCache, keys: list[tuple[int, ...]], bounds: list[list[int]]
                       ) -> dict[tuple[int, ...], Segments]:
        """Each distinct prefix's states: the stored run of its demonstrations, the rest computed and stored."""
        levels = {k: b for k, b in zip(keys, bounds, strict=True) if k}  # distinct prefixes, first seen first
        paths = {k: cache.path(k, b) for k, b in levels.items()}
        have = {k: path_length(paths[k]) for k, b in levels.items() if len(paths[k]) < len(b)}  # the missing
        missing = list(have)
        computed = sum(len(k) - have[k] for k in missing)
        eager = compat.hf_model(self.backbone).config._attn_implementation == "eager"
        for group in length_groups([len(k) - have[k] for k in missing], self.eval_chunk):
            part = [missing[i] for i in group]
            new = extend_prefixes(self._run_with_cache, part, [paths[k] for k in part], self.pad_id,
                                  next(self.backbone.parameters()).device, eager)
            for k, layers in zip(part, new, strict=True):
                segments = cut_levels(layers, have[k], levels[k])
                for lo, hi, seg in reversed(segments):  # deepest first: ancestors end up the more recent
                    cache.put(k[:hi], lo, seg)
                paths[k] = paths[k] + [seg for _, _, seg in segments]
        used = [k for k in keys if k]
        tokens = sum(map(len, used))
        cache.record(len(used), len(used) - len(missing), tokens, tokens - computed)
        return paths

    def _after_prefixes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                        keys: list[tuple[int, ...]], paths: dict[tuple[int, ...], Segments], shared: torch.Tensor,
                        lengths: torch.Tensor) -> torch.Tensor:
        """Logits of each row's own tokens run against its prefix's states, rows grouped by own length."""
        hf = compat.hf_model(self.backbone)
        eager = hf.config._attn_implementation == "eager"
        out: torch.Tensor | None = None
        for group in length_groups((lengths - shared).tolist(), self.eval_chunk):
            rows = torch.tensor(group, device=input_ids.device)
            if not any(keys[r] for r in group):  # rows without demonstrations: whole
                width = int(lengths[rows].max())
                logits = self._read({"input_ids": input_ids[rows, :width],
                                     "attention_mask": attention_mask[rows, :width]}, positions[rows], width)
            else:
                past, slots = assemble([paths.get(keys[r]) for r in group], shared[rows])
                inputs = query_inputs(input_ids[rows], shared[rows], lengths[rows], self.pad_id, slots,
                                      past[0][0].dtype if eager else None)
                inputs[compat.cache_kwarg(hf)] = compat.kv_cache(hf.config, past)
                logits = self._read(inputs, positions[rows] - shared[rows, None], inputs["input_ids"].shape[1])
            if out is None:
                out = logits.new_empty((input_ids.shape[0], *logits.shape[1:]))
            out[rows] = logits
        assert out is not None
        return out

    def _run_with_cache(self, inputs: dict[str, torch.Tensor], past: Layers | None) -> Any:
        """One LM pass returning its keys and values; the head reads one position per row (not used)."""
        hf = compat.hf_model(self.backbone)
        if past is not None:
            inputs = {**inputs, compat.cache_kwarg(hf): compat.kv_cache(hf.config, past)}
        one = torch.zeros((inputs["input_ids"].shape[0], 1), dtype=torch.long, device=inputs["input_ids"].device)
        with self._reading(one, inputs["input_ids"].shape[1]):
            return self.backbone(**inputs, use_cache=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                word_rows: torch.Tensor, n_samples: torch.Tensor, prior_rows: torch.Tensor | None = None,
                prior_index: torch.Tensor | None = None, prefix_bounds: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.answer_logits(input_ids, attention_mask, positions, prefix_bounds)
        scores = self.verbalizer(logits, word_rows, prior_rows, prior_index)  # [units, C] log-probs
        s = int(n_samples)
        if s > 1:  # the ensemble over demonstration sets (LM-BFF: 16), as log-probabilities
            per_set = scores.view(-1, s, scores.shape[-1])
            if self.ensemble == "logit" and self.poles is None:
                # LM-BFF averages the raw label-word logits: up to a constant per set, these log-probabilities,
                # so the same argmax; renormalised to log-probabilities over the labels.
                scores = per_set.mean(1).log_softmax(-1)
            else:  # the mean of the probabilities (regression: of the high pole's, its expected value)
                scores = per_set.logsumexp(1) - math.log(s)
        if self.poles is not None:
            lo, hi = self.poles
            return lo + (hi - lo) * scores[:, -1].exp()  # expected value between the two poles
        if self.search == "sample" and not self.training:
            # One generator per input, seeded by its own first row: its answer does not depend on which
            # other inputs share its batch (batch size, length-sorted batching).
            first = word_rows[::s, 0].tolist()
            picked = torch.cat([answer_search(scores[n:n + 1], "sample", torch.Generator().manual_seed(
                stable_seed(self.seed, *input_ids[r][attention_mask[r].bool()].tolist()) % 2**63))
                for n, r in enumerate(first)])
            scores = torch.full_like(scores, -1e4).scatter(1, picked[:, None], 0.0)
        return scores


def output_head(lm: nn.Module) -> nn.Module | None:
    """The LM's output projection, looking through wrappers (PEFT) that do not expose it themselves."""
    for _ in range(3):
        get = getattr(lm, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if isinstance(head, nn.Module):
            return head
        inner = getattr(lm, "model", None) or getattr(lm, "base_model", None)
        if not isinstance(inner, nn.Module) or inner is lm:
            return None
        lm = inner
    return None
