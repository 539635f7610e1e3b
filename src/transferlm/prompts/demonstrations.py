"""Demonstrations: which training examples go into the context, and how they fit in it.

Two uses:
- in-context learning (GPT-3): ``k`` examples, random or the SBERT-nearest to the input;
- LM-BFF: one example per class, drawn at random from the 50% of that class most similar to the
  input by SBERT (sentence-transformers on the packaged ``minilm-l6``).

Draws are a function of (seed, input text, draw number), never of batch order, so evaluation gives
the same demonstrations whatever the engine's length-sorted batching does.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from ..data.example import Example
from ..errors import ConfigError

log = logging.getLogger(__name__)
STRATEGIES = ("random", "similar")
Embedder = Callable[[list[str]], np.ndarray]


def example_text(e: Example) -> str:
    return e.text_a if e.text_b is None else f"{e.text_a} {e.text_b}"


def stable_seed(*parts: object) -> int:
    """A seed from values (Python's hash() of strings changes between processes)."""
    return int.from_bytes(hashlib.md5("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


class SbertEmbedder:
    """Normalised sentence embeddings with the packaged MiniLM (loaded on first use, cached per text)."""

    def __init__(self, model: str = "minilm-l6") -> None:
        self.model_name = model
        self._model = None
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                from ..models.zoo import locate_model

                self._model = SentenceTransformer(str(locate_model(self.model_name).path), device="cpu")
            vecs = self._model.encode(todo, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False)
            self._cache.update(zip(todo, vecs, strict=True))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1), dtype=np.float32)


class DemoSampler:
    """Picks demonstrations for one input from the training pool.

    ``per_class=True`` is LM-BFF (one per class from the ``top_fraction`` most similar of that class);
    otherwise ``k`` examples (GPT-3 in-context learning), random or the nearest by SBERT.
    """

    def __init__(self, train: Sequence[Example], *, num_labels: int, strategy: str = "random", k: int = 1,
                 per_class: bool = False, top_fraction: float = 0.5, seed: int = 0,
                 embedder: Embedder | None = None, regression: bool = False, split: float | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"demonstration selection must be one of {STRATEGIES}, got '{strategy}'")
        if not 0 < top_fraction <= 1:
            raise ConfigError(f"method_args.demo_top_fraction must be in (0, 1], got {top_fraction}")
        if k < 0:
            raise ConfigError(f"method_args.k must be >= 0, got {k}")
        self.pool = [e for e in train if e.label is not None]
        if (k > 0 or per_class) and not self.pool:
            raise ConfigError("demonstrations need labelled training examples, and the training split is empty")
        self.k, self.per_class, self.top_fraction, self.seed = k, per_class, top_fraction, seed
        self.strategy = strategy
        self.embedder = embedder or (SbertEmbedder() if strategy == "similar" else None)
        # Regression: two "classes", above and below ``split`` (LM-BFF: 2.5 on STS-B, the poles' middle; the
        # median where none is given). A demonstration shows the word of its class (PromptCollator.demo_label).
        self.split: float | None = None
        if regression:
            values = [float(e.label) for e in self.pool]  # type: ignore[arg-type]
            self.split = float(split) if split is not None else float(np.median(values))
            self.classes = [[i for i, v in enumerate(values) if (v > self.split) == bool(c)] for c in (0, 1)]
        else:
            self.classes = [[i for i, e in enumerate(self.pool) if e.label == c] for c in range(num_labels)]
        self._where: dict[tuple[str, str | None], set[int]] = {}
        for i, e in enumerate(self.pool):
            self._where.setdefault((e.text_a, e.text_b), set()).add(i)
        self._pool_vecs: np.ndarray | None = None
        self._ranked: dict[str, list[int]] = {}

    def _similarity_order(self, example: Example) -> list[int]:
        """Pool indices sorted from most to least similar to ``example`` (cached per input text)."""
        key = example_text(example)
        if key not in self._ranked:
            if self._pool_vecs is None:
                self._pool_vecs = self.embedder([example_text(e) for e in self.pool])  # type: ignore[misc]
            sims = self._pool_vecs @ self.embedder([key])[0]  # type: ignore[misc]
            # Stable sort: ties keep pool order, so the ranking is deterministic.
            self._ranked[key] = np.argsort(-sims, kind="stable").tolist()
        return self._ranked[key]

    def prepare(self, examples: Sequence[Example]) -> None:
        """Embed a batch of inputs at once (one SBERT call instead of one per input)."""
        if self.strategy == "similar":
            if self._pool_vecs is None:
                self._pool_vecs = self.embedder([example_text(e) for e in self.pool])  # type: ignore[misc]
            self.embedder([example_text(e) for e in examples])  # type: ignore[misc]

    def sample(self, example: Example, draw: int | str = 0) -> list[Example]:
        """The demonstrations for ``example``; ``draw`` numbers independent draws (LM-BFF's ensemble)."""
        rng = random.Random(stable_seed(self.seed, example.text_a, example.text_b, draw))
        itself = self._where.get((example.text_a, example.text_b), set())  # an input is never its own demo
        if self.per_class:
            rank = None
            if self.strategy == "similar":
                rank = {i: r for r, i in enumerate(self._similarity_order(example))}
            picks = []
            for members in self.classes:
                cands = [i for i in members if i not in itself]
                if not cands:
                    continue
                if rank is not None:
                    cands.sort(key=rank.__getitem__)
                    cands = cands[:max(1, math.ceil(self.top_fraction * len(cands)))]
                picks.append(rng.choice(cands))
            return [self.pool[i] for i in picks]
        if self.k == 0:
            return []
        if self.strategy == "similar":
            nearest = [i for i in self._similarity_order(example) if i not in itself][:self.k]
            return [self.pool[i] for i in nearest]
        n = len(self.pool)
        drawn = [i for i in rng.sample(range(n), min(n, self.k + len(itself))) if i not in itself]
        return [self.pool[i] for i in drawn[:self.k]]


class DropLog:
    """Collects the demonstrations a batch had to leave out, for one log line (or one error)."""

    def __init__(self, context: int, on_overflow: str = "drop") -> None:
        if on_overflow not in ("drop", "error"):
            raise ConfigError(f"method_args.demo_overflow must be 'drop' or 'error', got '{on_overflow}'")
        self.context, self.on_overflow = context, on_overflow
        self.dropped: list[tuple[Example, list[str], int]] = []  # (input, labels of those dropped, asked)
        self.total_dropped = 0

    def add(self, example: Example, dropped: Sequence[str], asked: int) -> None:
        """``dropped``: the labels of the input's demonstrations that were left out."""
        if dropped:
            self.dropped.append((example, list(dropped), asked))

    def flush(self, n_inputs: int) -> None:
        if not self.dropped:
            return
        # Per label: with one demonstration per class (LM-BFF), drops leave the classes unbalanced.
        by_label = Counter(label for _, labels, _ in self.dropped for label in labels)
        n = sum(by_label.values())
        ex, labels, asked = self.dropped[0]
        msg = (f"demonstrations do not fit the context of {self.context} tokens (train.max_length): dropped {n} "
               f"({', '.join(f'{k} {v}' for k, v in sorted(by_label.items()))} by label) for {len(self.dropped)} "
               f"of {n_inputs} inputs, e.g. {len(labels)} of {asked} ({', '.join(labels)}) for input "
               f"{(ex.guid or ex.text_a[:40])!r}")
        self.dropped.clear()
        self.total_dropped += n
        if self.on_overflow == "error":
            raise ConfigError(msg + "; raise train.max_length, lower method_args.k or set "
                              "method_args.demo_max_tokens, or set method_args.demo_overflow=drop")
        log.warning(msg)
