"""What the prompt tests share: a toy two-class task's prompt, a demonstration pool and a run config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transferlm.config import RunConfig
from transferlm.data.example import Example
from transferlm.data.tasks import TaskSpec

SPEC = TaskSpec(name="toy", labels=("0", "1"), label_names=("negative", "positive"))
PROMPT = {"template": "{sentence} it was {answer} .", "label_words": {"0": "bad", "1": "good"}}


class FakeEmbedder:
    """Embeds "good"-ish texts near (1, 0) and the rest near (0, 1), the index spreading them."""

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            v = np.array([1.0, 0.0]) if "good" in t else np.array([0.0, 1.0])
            v = v + 0.01 * (sum(map(ord, t)) % 7)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def demo_pool() -> list[Example]:
    pos = [Example(f"good {w}", label=1) for w in ("movie", "film", "plot", "story")] + \
          [Example(f"fun {w}", label=1) for w in ("movie", "film", "plot", "story")]
    neg = [Example(f"good but bad {w}", label=0) for w in ("movie", "film")] + \
          [Example(f"bad {w}", label=0) for w in ("movie", "film", "plot", "story", "acting", "cat")]
    return pos + neg


def prompt_cfg(model: Path, data: Path, method: str, **args) -> RunConfig:
    return RunConfig.from_dict({
        "task": "toy", "model": str(model), "method": method, "quiet": True,
        "data": {"data_dir": str(data), "shots": 8}, "method_args": {**PROMPT, **args},
        "train": {"max_steps": 24, "learning_rate": 3e-3, "eval_every": 8, "checkpoint_every": 0, "max_length": 48}})
