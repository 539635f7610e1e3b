"""Prompt-based zero-shot prediction: the frozen LM fills the answer slot; no training."""

from __future__ import annotations

from collections.abc import Sequence

from ...data.example import Example
from ...data.tasks import TaskSpec
from ..base import Prepared
from ..registry import register
from .common import PromptConfig, PromptMethod, frozen


@register("prompt-zero-shot")
class PromptZeroShot(PromptMethod):
    config_cls = PromptConfig
    trains = False
    description = "prompt-based zero-shot: template + label words, frozen LM (MLM cloze or causal next token)"

    def seed_free(self, cfg: PromptConfig) -> bool:  # type: ignore[override]
        # auto searches on this seed's train/dev; sampled answers draw from the seed.
        return cfg.auto is None and cfg.answer_search == "argmax"

    def prepare(self, backbone, spec: TaskSpec, cfg: PromptConfig, *, max_length: int,
                train: Sequence[Example]) -> Prepared:
        setup = self.setup(backbone, spec, cfg, max_length=max_length, train=train)
        frozen(setup.model)
        return Prepared(model=setup.model, collate=setup.collate, eval_lengths=setup.collate.eval_lengths,
                        trains=False,
                        extras={"prompt": self.describe(setup, cfg)})
