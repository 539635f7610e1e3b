"""PromptModel: a language model, read at the answer slot through a verbalizer, as a classifier.

It returns label log-probabilities ``[batch, num_labels]`` (or expected values ``[batch]`` for
regression), so the engine's cross-entropy over them is exactly the prompt-based fine-tuning loss
of PET / LM-BFF: -log p(label word of y | prompt), normalised over the label words.

Speed: the LM's output layer runs only at the answer positions (a pre-hook on the output embedding
gathers them), never over the whole sequence and vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .verbalizer import Verbalizer, answer_search


class PromptModel(nn.Module):
    def __init__(self, lm: nn.Module, verbalizer: Verbalizer | None, *, poles: tuple[float, float] | None = None,
                 search: str = "argmax", seed: int = 0, eval_chunk: int = 64) -> None:
        super().__init__()
        # Named "backbone" so optimiser helpers (layer-wise learning rates) find the transformer.
        self.backbone = lm
        self.verbalizer = verbalizer
        self.poles, self.search, self.seed, self.eval_chunk = poles, search, seed, eval_chunk
        self._positions: torch.Tensor | None = None
        self._seq_len = 0
        self._gathered = False
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

    def answer_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      positions: torch.Tensor) -> torch.Tensor:
        """LM logits ``[R, L, V]`` at ``positions`` (``[R, L]``) of each row."""
        if not torch.is_grad_enabled() and input_ids.shape[0] > self.eval_chunk:
            # Evaluation with many rows (demonstration ensembles): bounded memory, same numbers.
            parts = [self.answer_logits(input_ids[i:i + self.eval_chunk], attention_mask[i:i + self.eval_chunk],
                                        positions[i:i + self.eval_chunk])
                     for i in range(0, input_ids.shape[0], self.eval_chunk)]
            return torch.cat(parts)
        self._positions, self._seq_len, self._gathered = positions, input_ids.shape[1], False
        try:
            logits = self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            self._positions = None
        if not self._gathered:  # the head bypassed the hook (e.g. a functional tied head): gather here
            rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
            return logits[rows, positions + (logits.shape[1] - input_ids.shape[1])]
        return logits[:, logits.shape[1] - positions.shape[1]:]  # any virtual positions left in front

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                word_rows: torch.Tensor, n_samples: torch.Tensor, prior_rows: torch.Tensor | None = None,
                prior_index: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.answer_logits(input_ids, attention_mask, positions)
        scores = self.verbalizer(logits, word_rows, prior_rows, prior_index)  # [units, C] log-probs
        s = int(n_samples)
        if s > 1:  # LM-BFF's ensemble over demonstration sets: the mean of the probabilities
            scores = scores.view(-1, s, scores.shape[-1]).logsumexp(1) - math.log(s)
        if self.poles is not None:
            lo, hi = self.poles
            return lo + (hi - lo) * scores[:, -1].exp()  # expected value between the two poles
        if self.search == "sample" and not self.training:
            g = torch.Generator().manual_seed(self.seed + int(input_ids.sum()))
            picked = answer_search(scores, "sample", g)
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
