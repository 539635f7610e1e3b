"""Verbalizers: label -> one or more words, and LM scores at the answer slot -> label scores.

The pipeline (OpenPrompt's), each step a method so it can be tested and swapped on its own:

    process_logits  LM logits at the answer positions -> log-probabilities over the vocabulary
    project         -> one score per label word: its tokens' log-probs combined by ``multi_token``
                       ("mean", the default, length-normalised as GPT-3 scores multi-token answers;
                       or "sum", the word's joint log-probability, which favours short words)
    normalize       -> log-softmax over the label words only (LM-BFF's softmax over label words)
    calibrate       -> divide by the content-free prior p(word | "N/A") and renormalise (Zhao et al. 2021)
    aggregate       -> one score per label from its words: "mean" of log-probs, "max", or
                       "logsumexp" (the label's total probability)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn

from ..errors import ConfigError

MULTI_TOKEN = ("mean", "sum")
AGGREGATE = ("mean", "max", "logsumexp")
SEARCH = ("argmax", "sample")


class Verbalizer(nn.Module):
    def __init__(self, label_words: Sequence[Sequence[str]], tokenize: Callable[[str], list[int]], *,
                 label_names: Sequence[str], unk_token_id: int | None = None, multi_token: str = "mean",
                 aggregate: str = "mean", special_ids: Collection[int] = ()) -> None:
        """``special_ids``: the tokenizer's special tokens ([MASK], <s>, ...), which no label word may contain
        (the model would score its own markup, e.g. a mask in the answer slot, as the answer)."""
        super().__init__()
        if multi_token not in MULTI_TOKEN:
            raise ConfigError(f"method_args.multi_token must be one of {MULTI_TOKEN}, got '{multi_token}'")
        if aggregate not in AGGREGATE:
            raise ConfigError(f"method_args.aggregate must be one of {AGGREGATE}, got '{aggregate}'")
        if len(label_words) != len(label_names):
            raise ConfigError(f"label words name {len(label_words)} labels but the task has {len(label_names)} "
                              f"({', '.join(label_names)})")
        self.multi_token, self.how = multi_token, aggregate
        self.label_names = list(label_names)
        self.words: list[list[str]] = []
        self.word_ids: list[list[int]] = []
        owner: dict[tuple[int, ...], tuple[str, str]] = {}
        labels: list[int] = []
        for c, (name, words) in enumerate(zip(label_names, label_words, strict=True)):
            kept: list[str] = []
            for w in words:
                if not isinstance(w, str) or not w.strip():
                    raise ConfigError(f"label '{name}' has an empty label word; give each label a word, e.g. 'great'")
                ids = tokenize(w)
                if not ids or (unk_token_id is not None and unk_token_id in ids):
                    raise ConfigError(f"label word {w!r} (label '{name}') is unknown to the tokenizer "
                                      "(it tokenises to the unknown token); choose a word in the model's vocabulary")
                if special := sorted(set(ids) & set(special_ids)):
                    raise ConfigError(f"label word {w!r} (label '{name}') contains the tokenizer's special token id(s) "
                                      f"{', '.join(map(str, special))}; choose an ordinary word")
                key = tuple(ids)
                if key in owner:
                    other, ow = owner[key]
                    if other == name:
                        continue  # the same word twice for one label: harmless, keep one
                    raise ConfigError(f"labels '{other}' and '{name}' both map to the word {w!r}"
                                      + (f" (= {ow!r} for this tokenizer)" if ow != w else "")
                                      + "; each word may verbalise one label only")
                owner[key] = (name, w)
                kept.append(w.strip())
                self.word_ids.append(ids)
                labels.append(c)
            if not kept:
                raise ConfigError(f"label '{name}' has no label words")
            self.words.append(kept)
        n_words, width = len(self.word_ids), max(len(i) for i in self.word_ids)
        tok = torch.zeros(n_words, width, dtype=torch.long)
        mask = torch.zeros(n_words, width)
        for w, ids in enumerate(self.word_ids):
            tok[w, :len(ids)] = torch.tensor(ids)
            mask[w, :len(ids)] = 1.0
        member = torch.zeros(len(label_names), n_words, dtype=torch.bool)
        member[torch.tensor(labels), torch.arange(n_words)] = True
        # Buffers, not parameters: they move with .to(device) and never train or enter checkpoints.
        self.register_buffer("token_ids", tok, persistent=False)
        self.register_buffer("token_mask", mask, persistent=False)
        self.register_buffer("member", member, persistent=False)
        self.register_buffer("word_label", torch.tensor(labels), persistent=False)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def num_words(self) -> int:
        return len(self.word_ids)

    @property
    def max_tokens(self) -> int:
        return self.token_ids.shape[1]

    @property
    def lengths(self) -> list[int]:
        return [len(i) for i in self.word_ids]

    def first_word_ids(self, label: int) -> list[int]:
        """The ids of a label's first word (what a demonstration shows as its answer)."""
        return self.word_ids[int(self.word_label.tolist().index(label))]

    # -- the pipeline -------------------------------------------------------------------------------
    def process_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, L, V]`` LM logits at the answer positions -> log-probabilities over the vocabulary."""
        return logits.float().log_softmax(-1)

    def project(self, logprobs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``[R, L, V]`` log-probs and ``rows[n, w]`` (which row scores word w for unit n) -> ``[N, W]``."""
        n_pos = logprobs.shape[1]
        width = self.token_ids.shape[1]
        if n_pos < width:
            raise ValueError(f"{n_pos} answer positions for words of up to {width} tokens")
        pos = torch.arange(width, device=logprobs.device)
        per_token = logprobs[rows[:, :, None], pos[None, None, :], self.token_ids[None]]  # [N, W, L]
        total = (per_token * self.token_mask).sum(-1)
        return total / self.token_mask.sum(-1) if self.multi_token == "mean" else total

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.log_softmax(-1)

    def calibrate(self, scores: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """Zhao et al.'s W = diag(p_cf)^-1, b = 0, in log space: log p - log p_cf, renormalised."""
        if prior is None:
            return scores
        return (scores - prior).log_softmax(-1)

    def aggregate(self, scores: torch.Tensor) -> torch.Tensor:
        """``[N, W]`` word log-probs -> ``[N, C]`` label log-probs (renormalised over labels)."""
        if self.how == "mean":
            m = self.member.to(scores.dtype)
            out = scores @ m.T / m.sum(-1)
        else:
            masked = scores[:, None, :].masked_fill(~self.member[None], float("-inf"))
            out = masked.amax(-1) if self.how == "max" else masked.logsumexp(-1)
        return out.log_softmax(-1)

    def forward(self, logits: torch.Tensor, rows: torch.Tensor, prior_rows: torch.Tensor | None = None,
                prior_index: torch.Tensor | None = None) -> torch.Tensor:
        logprobs = self.process_logits(logits)
        scores = self.normalize(self.project(logprobs, rows))
        prior = None
        if prior_rows is not None:
            # The prior is a reference point, not a target: no gradient flows through it.
            prior = self.normalize(self.project(logprobs, prior_rows)).detach()
            prior = prior[prior_index] if prior_index is not None else prior.mean(0, keepdim=True)
        return self.aggregate(self.calibrate(scores, prior))


def answer_search(label_logprobs: torch.Tensor, how: str = "argmax", generator: torch.Generator | None = None) -> torch.Tensor:
    """Answer search over labels: the argmax, or a draw from the label distribution."""
    if how == "argmax":
        return label_logprobs.argmax(-1)
    if how == "sample":
        probs = label_logprobs.float().exp().cpu()
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(label_logprobs.device)
    raise ConfigError(f"method_args.answer_search must be one of {SEARCH}, got '{how}'")


def normalize_label_words(raw: object, labels: Sequence[str], label_names: Sequence[str]) -> list[list[str]]:
    """``{label: word | [words]}`` (keys: label values or names) or ``[word | [words], ...]`` in class order."""
    def as_list(v: object, name: str) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, list | tuple) and v:
            return [str(x) if not isinstance(x, str) else x for x in v]
        raise ConfigError(f"label words for '{name}' must be a word or a list of words, got {v!r}")

    shown = list(label_names) or list(labels)
    if isinstance(raw, dict):
        keys = {str(k): v for k, v in raw.items()}
        out = []
        for i, lab in enumerate(labels):
            name = label_names[i] if i < len(label_names) else lab
            given = lab in keys or name in keys
            v = keys.pop(lab, None)
            if v is None:
                v = keys.pop(name, None)
            if v is None and given:  # `{"0": null}` (or an empty YAML value): named, but with no word
                raise ConfigError(f"method_args.label_words gives label '{name}' an empty word; give it a word, "
                                  "e.g. 'great'")
            if v is None:
                raise ConfigError(f"method_args.label_words has no word for label '{lab}'"
                                  + (f" ({name})" if name != lab else "") + f"; labels are {', '.join(labels)}")
            out.append(as_list(v, name))
        if keys:
            raise ConfigError(f"method_args.label_words names unknown label(s) {', '.join(keys)}; "
                              f"labels are {', '.join(labels)}")
        return out
    if isinstance(raw, list | tuple):
        if len(raw) != len(labels):
            raise ConfigError(f"method_args.label_words lists {len(raw)} entries for {len(labels)} labels "
                              f"({', '.join(shown)})")
        return [as_list(v, shown[i]) for i, v in enumerate(raw)]
    raise ConfigError("method_args.label_words must map each label to a word, e.g. {'0': terrible, '1': great}")
