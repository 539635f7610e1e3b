"""Shared by the pretraining tests: a small text corpus, a quick config, and an interrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import killed_when
from transferlm.training.pretrain import PretrainConfig, Pretrainer, pretrain

TEXT = ["the movie was good", "the plot is boring", "very fun acting and a good story", "I hate the film",
        "the cat and the dog", "a great story but the acting was bad", "love it", "not very fun"] * 3


def write_text_file(path: Path) -> Path:
    path.write_text("\n".join(TEXT) + "\n")
    return path


def pretrain_cfg(model: Path, texts: list[str], out: Path, **kw) -> PretrainConfig:
    return PretrainConfig(model=str(model), texts=texts, output=str(out), steps=6, batch_size=4, eval_every=3,
                          checkpoint_every=2, head_warmup_steps=2, quiet=True, **kw)


def cut_after_step_4(monkeypatch: pytest.MonkeyPatch, cfg: PretrainConfig) -> None:
    """Run ``cfg`` until it is interrupted after its step-4 checkpoint, as a killed run would be."""
    killed_when(monkeypatch, Pretrainer, "_batch", lambda self, rows, step: step == 5, lambda: pretrain(cfg))


def strict_json(path: Path):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)
