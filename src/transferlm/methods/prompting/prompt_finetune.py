"""Prompt-based fine-tuning (PET / LM-BFF): train the LM's own head to put the right label word in the slot.

The engine's cross-entropy over the PromptModel's label-word log-probabilities is LM-BFF's objective.
With ``demonstrations: true`` (LM-BFF "+ demonstrations"), each input gets one demonstration per class,
drawn from the 50% of that class most similar by SBERT: a fresh draw every training step, and at
inference the mean prediction over ``demo_eval_samples`` draws (LM-BFF uses 16): the mean of the probabilities
(``demo_ensemble: prob``, the default) or of the label words' log-probabilities (``logit``: LM-BFF's own rule,
which averages the raw label-word logits; a per-draw constant apart, the same thing, so the same argmax).
``peft: {name: lora, r: 8, ...}`` trains a PEFT transformation of the LM instead of all its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ...config import from_dict
from ...data.example import Example
from ...data.tasks import TaskSpec
from ...errors import ConfigError
from ...prompts.build import regression_poles
from ...prompts.demonstrations import STRATEGIES, DemoSampler
from ...prompts.model import ENSEMBLES
from ..base import MethodConfig, Prepared
from ..registry import register
from .common import DemoConfig, PromptMethod, seed_of_run


@dataclass
class PromptFinetuneConfig(DemoConfig):
    demonstrations: bool = False
    demo_selection: str = "similar"  # LM-BFF; "random": any example of the class
    demo_top_fraction: float = 0.5
    demo_eval_samples: int = 16
    demo_ensemble: str = "prob"  # how draws combine: "prob" (mean probability) or "logit" (LM-BFF's mean logit)
    peft: dict[str, Any] | None = None

    def validate(self) -> None:
        super().validate()
        if self.demo_selection not in STRATEGIES:
            raise ConfigError(f"method_args.demo_selection must be one of {', '.join(STRATEGIES)}, "
                              f"got '{self.demo_selection}'")
        if not 0 < self.demo_top_fraction <= 1:
            raise ConfigError(f"method_args.demo_top_fraction must be in (0, 1], got {self.demo_top_fraction}")
        if self.demo_eval_samples < 1:
            raise ConfigError(f"method_args.demo_eval_samples must be >= 1, got {self.demo_eval_samples}")
        if self.demo_ensemble not in ENSEMBLES:
            raise ConfigError(f"method_args.demo_ensemble must be one of {', '.join(ENSEMBLES)}, "
                              f"got '{self.demo_ensemble}'")
        if self.peft is not None and not (isinstance(self.peft, dict) and self.peft.get("name")):
            raise ConfigError("method_args.peft must be a mapping with a name, e.g. {name: lora, r: 8}")

    def sub_configs(self) -> dict[str, tuple[MethodConfig, ...]]:
        if not self.peft:
            return {}
        choice, args = split_peft(self.peft)
        try:
            from ..efficient import config_from_dict
        except ImportError:  # without the PEFT package, apply_peft_if_asked says so when the run starts
            return {"peft": (choice,)}
        return {"peft": (choice, config_from_dict(choice.name, args, where="method_args.peft"))}


@dataclass
class PeftChoice(MethodConfig):
    """The keys of ``peft`` that are not the PEFT method's own options."""

    name: str = ""
    # The LM head stays frozen under PEFT unless asked (LM-BFF tunes it; adapters usually do not).
    train_lm_head: bool = False


PEFT_KEYS = tuple(f.name for f in fields(PeftChoice))


def split_peft(peft: dict[str, Any]) -> tuple[PeftChoice, dict[str, Any]]:
    """``peft`` as (which method and train_lm_head, the PEFT method's own options)."""
    choice = from_dict(PeftChoice, {k: v for k, v in peft.items() if k in PEFT_KEYS}, source="method_args.peft")
    return choice, {k: v for k, v in peft.items() if k not in PEFT_KEYS}


def apply_peft_if_asked(lm: torch.nn.Module, peft: dict[str, Any] | None) -> torch.nn.Module:
    """Wrap the LM with transferlm.methods.efficient's PEFT transformation (imported only when asked)."""
    if not peft:
        return lm
    try:
        from .. import efficient
    except ImportError:
        efficient = None
    apply = getattr(efficient, "apply_peft", None)
    if apply is None:
        raise ConfigError("method_args.peft needs transferlm.methods.efficient.apply_peft, which this "
                          "installation does not have; drop method_args.peft")
    choice, args = split_peft(peft)
    options = efficient.config_from_dict(choice.name, args, where="method_args.peft")
    extra = {"train_lm_head": True} if choice.train_lm_head else {}
    out = apply(lm, choice.name, options, **extra)
    # apply_peft may wrap the model or transform it in place.
    return out if isinstance(out, torch.nn.Module) else lm


def fit_soft_prompt(lm: torch.nn.Module, max_length: int) -> int:
    """``max_length`` cut so a nested prompt-tuning's soft tokens fit beside the prompt in the position table."""
    configs, active = getattr(lm, "configs", None), getattr(lm, "active", None)
    if not configs or active is None:  # not a PEFT wrapper (or one with no adapter yet)
        return max_length
    from ..efficient.method import fit_positions

    return fit_positions(lm, lm.method, configs[active], max_length)


def planned_max_length(lm: torch.nn.Module, peft: dict[str, Any] | None, max_length: int) -> int:
    """The ``max_length`` a run will cut inputs to once ``peft`` (method_args.peft) is applied to ``lm``.

    What :func:`fit_soft_prompt` gives after the wrapping, known before it: automatic label-word/template search
    runs on the bare LM first and must rank candidates on the inputs the run will see.
    """
    if not peft:
        return max_length
    choice, args = split_peft(peft)
    try:
        from ..efficient import config_from_dict
        from ..efficient.method import fit_positions
    except ImportError:  # without the PEFT package, apply_peft_if_asked says so when the run starts
        return max_length
    return fit_positions(lm, choice.name, config_from_dict(choice.name, args, where="method_args.peft"), max_length)


@register("prompt-finetune")
class PromptFinetune(PromptMethod):
    config_cls = PromptFinetuneConfig
    description = "prompt-based fine-tuning (LM-BFF): train the LM head to fill the answer slot, opt. demonstrations"

    def search_length(self, backbone: Any, cfg: PromptFinetuneConfig, max_length: int) -> int:  # type: ignore[override]
        return planned_max_length(backbone.model, cfg.peft, max_length)

    def prepare(self, backbone, spec: TaskSpec, cfg: PromptFinetuneConfig, *, max_length: int,
                train: Sequence[Example]) -> Prepared:
        sampler = None
        if cfg.demonstrations:
            # Regression: LM-BFF splits the demonstrations' two classes at the middle of the poles (2.5 on STS-B).
            split = sum(regression_poles(spec, train, cfg.poles)) / 2 if spec.regression else None
            sampler = DemoSampler(train, num_labels=spec.num_labels, strategy=cfg.demo_selection, per_class=True,
                                  top_fraction=cfg.demo_top_fraction, seed=seed_of_run(), regression=spec.regression,
                                  split=split)
        if cfg.peft:
            backbone.model = apply_peft_if_asked(backbone.model, cfg.peft)
            max_length = fit_soft_prompt(backbone.model, max_length)
        else:
            for p in backbone.model.parameters():
                p.requires_grad_(True)
        setup = self.setup(backbone, spec, cfg, max_length=max_length, train=train, sampler=sampler,
                           eval_samples=cfg.demo_eval_samples, ensemble=cfg.demo_ensemble)

        def save(folder: Path) -> None:
            # A reloadable model: the tuned LM (or its adapter) in its own format, plus the prompt.
            lm = setup.model.backbone
            if hasattr(lm, "save_adapter"):  # PEFT: the adapter only (the base model is the zoo's)
                lm.save_adapter(folder / "adapter", getattr(lm, "active", None) or "default")
            else:
                lm.save_pretrained(folder / "backbone")
                backbone.tokenizer.save_pretrained(folder / "backbone")
            self.write_description(folder, setup, cfg, spec)

        return Prepared(model=setup.model, collate=setup.collate, eval_lengths=setup.collate.eval_lengths,
                        save=save,
                        extras={"prompt": self.describe(setup, cfg)})
