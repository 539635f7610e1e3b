"""In-context learning (GPT-3): k labelled demonstrations from the training split in the context; no training.

Demonstrations are random or the SBERT-nearest to each input; k=0 is zero-shot, k=1 one-shot.
Those that do not fit train.max_length are dropped, whole, and the drop is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...data.example import Example
from ...data.tasks import TaskSpec
from ...errors import ConfigError
from ...prompts.demonstrations import STRATEGIES, DemoSampler
from ..base import Prepared
from ..registry import register
from .common import DemoConfig, PromptMethod, frozen, seed_of_run


@dataclass
class ICLConfig(DemoConfig):
    k: int = 4
    selection: str = "random"  # or "similar": the k nearest training examples by SBERT

    def validate(self) -> None:
        super().validate()
        if self.k < 0:
            raise ConfigError(f"method_args.k must be >= 0, got {self.k}")
        if self.selection not in STRATEGIES:
            raise ConfigError(f"method_args.selection must be one of {', '.join(STRATEGIES)}, got '{self.selection}'")


@register("icl")
class InContextLearning(PromptMethod):
    config_cls = ICLConfig
    trains = False
    description = "in-context learning: k demonstrations (random or SBERT-nearest) in the prompt, frozen LM"

    def prepare(self, backbone, spec: TaskSpec, cfg: ICLConfig, *, max_length: int,
                train: Sequence[Example]) -> Prepared:
        sampler = None
        if cfg.k > 0:
            sampler = DemoSampler(train, num_labels=spec.num_labels, strategy=cfg.selection, k=cfg.k,
                                  seed=seed_of_run(), regression=spec.regression)
        setup = self.setup(backbone, spec, cfg, max_length=max_length, train=train, sampler=sampler)
        frozen(setup.model)
        return Prepared(model=setup.model, collate=setup.collate, eval_lengths=setup.collate.eval_lengths,
                        trains=False,
                        extras={"prompt": self.describe(setup, cfg)})
