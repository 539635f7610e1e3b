"""Evaluate a seed-free method's test split once for all seeds of a comparison.

A method that neither trains nor reads the seed or the training split (zero-shot prompting with argmax
answers) predicts the same labels on the same test examples under every seed; LM-BFF's k-shot folders
carry the same test file for each seed. Evaluating it five times is pure waste (on SmolLM2, 140 s per
SST-2 evaluation). The memo stores the test metrics under a key of everything the predictions depend
on: the model's actual weights, the method and its resolved options, the evaluation settings, the
library versions and device, and the test examples themselves. A different model folder with the same
name, another template or another test sample is another key, so a stale result is never reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.example import Example, examples_digest
from ..io import as_json, write_json
from ..training.checkpoint import weights_digest


@dataclass
class EvalMemo:
    """The test metrics of one (model, method options, evaluation settings, test set), in ``folder``."""

    folder: Path
    key: str
    facts: dict[str, Any]

    @classmethod
    def for_run(cls, folder: str | Path, *, model: torch.nn.Module, method: str, method_config: dict[str, Any],
                train_settings: dict[str, Any], device: str, test: Sequence[Example]) -> EvalMemo:
        facts = {"method": method, "method_config": method_config,
                 # Only what changes the predictions: length, padding per batch, precision.
                 "eval": {k: train_settings.get(k) for k in ("max_length", "eval_batch_size", "mixed_precision")},
                 "weights": weights_digest(model), "test": examples_digest(test), "test_size": len(test),
                 "transferlm": __version__, "torch": torch.__version__, "device": device}
        key = hashlib.blake2b(json.dumps(facts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()
        return cls(Path(folder), key, facts)

    @property
    def path(self) -> Path:
        return self.folder / f"{self.key}.json"

    def load(self) -> dict[str, Any] | None:
        """The stored entry (``metrics``, ``seconds``, ``seed``), or None if absent or unreadable."""
        try:
            entry = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if entry.get("facts") != as_json(self.facts):
            return None  # a digest collision or a hand-edited file: compute afresh
        return entry

    def store(self, metrics: dict[str, float], seconds: float, seed: int) -> None:
        write_json(self.path, {"facts": self.facts, "metrics": metrics, "seconds": round(seconds, 3), "seed": seed})
