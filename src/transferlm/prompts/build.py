"""Assemble template + verbalizer + LM into a model and its collate function; zero-shot prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import ConfigError
from .defaults import get_default, resolve_prompt
from .demonstrations import DemoSampler
from .inputs import PromptCollator
from .model import PromptModel
from .template import Template, TemplateEncoder
from .verbalizer import Verbalizer, normalize_label_words

# Regression (STS-B): LM-BFF's two poles and their values.
REGRESSION_LABELS, REGRESSION_NAMES = ("0", "1"), ("low", "high")
STSB_POLES = (0.0, 5.0)


@dataclass
class PromptSetup:
    model: PromptModel
    collate: PromptCollator
    template: Template
    verbalizer: Verbalizer
    kind: str  # "mlm" | "causal"


def lm_kind(backbone: Any) -> str:
    kind = "causal" if backbone.is_decoder else backbone.kind
    if kind not in ("mlm", "causal"):
        raise ConfigError(f"prompting needs a masked or causal language model with its LM head; {backbone.name} "
                          "is loaded without one (use e.g. splade-tiny or smollm2-135m)")
    if kind == "mlm" and backbone.tokenizer.mask_token_id is None:
        raise ConfigError(f"model {backbone.name} has no mask token, so it cannot fill a cloze answer slot")
    return kind


def regression_poles(spec: TaskSpec, train: Sequence[Example], poles: Sequence[float] | None) -> tuple[float, float]:
    if poles is not None:
        if len(poles) != 2 or float(poles[0]) >= float(poles[1]):
            raise ConfigError(f"method_args.poles must be [low, high] with low < high, got {list(poles)}")
        return float(poles[0]), float(poles[1])
    if get_default(spec.name) is not None:
        return STSB_POLES
    values = [float(e.label) for e in train if e.label is not None]  # type: ignore[arg-type]
    if len(values) < 2 or min(values) == max(values):
        raise ConfigError(f"regression task {spec.name}: set method_args.poles=[low, high]")
    return min(values), max(values)


@dataclass
class PromptParts:
    """A prompt's template and verbalizer, tokenised: tokenizer work only, no LM is touched.

    A server builds them beside its forward passes; :func:`assemble_prompt` then puts them on the LM.
    """

    kind: str  # "mlm" | "causal"
    template: Template
    encoder: TemplateEncoder
    verbalizer: Verbalizer
    poles: tuple[float, float] | None  # regression only


def prompt_parts(backbone: Any, spec: TaskSpec, *, template: str | None, label_words: object,
                 train: Sequence[Example] = (), multi_token: str = "mean", aggregate: str = "mean",
                 poles: Sequence[float] | None = None) -> PromptParts:
    """Template, verbalizer and regression poles for ``spec`` on ``backbone``'s tokenizer."""
    kind = lm_kind(backbone)
    tpl, raw_words = resolve_prompt(spec, template, label_words, causal=kind == "causal")
    tok = backbone.tokenizer
    labels, names = (REGRESSION_LABELS, REGRESSION_NAMES) if spec.regression else (
        spec.labels, spec.label_names or spec.labels)
    words = normalize_label_words(raw_words, labels, names)
    enc = TemplateEncoder(tpl, tok)
    verb = Verbalizer(words, enc.word_ids, label_names=names, unk_token_id=tok.unk_token_id,
                      special_ids=tok.all_special_ids, multi_token=multi_token, aggregate=aggregate)
    if spec.regression and verb.num_labels != 2:
        raise ConfigError("regression prompts need exactly two label words (low and high pole)")
    pole_values = regression_poles(spec, train, poles) if spec.regression else None
    return PromptParts(kind, tpl, enc, verb, pole_values)


def build_prompt(backbone: Any, spec: TaskSpec, *, template: str | None, label_words: object, max_length: int,
                 train: Sequence[Example] = (), calibrate: bool = False, content_free: str = "N/A",
                 multi_token: str = "mean", aggregate: str = "mean", search: str = "argmax",
                 poles: Sequence[float] | None = None, sampler: DemoSampler | None = None, eval_samples: int = 1,
                 ensemble: str = "prob",
                 demo_separator: str | None = None, demo_max_tokens: int | None = None,
                 demo_overflow: str = "drop", seed: int = 0, prefix_cache_mb: int = 1024) -> PromptSetup:
    parts = prompt_parts(backbone, spec, template=template, label_words=label_words, train=train,
                         multi_token=multi_token, aggregate=aggregate, poles=poles)
    return assemble_prompt(backbone, spec, parts, max_length=max_length, calibrate=calibrate,
                           content_free=content_free, search=search, sampler=sampler, eval_samples=eval_samples,
                           ensemble=ensemble,
                           demo_separator=demo_separator, demo_max_tokens=demo_max_tokens,
                           demo_overflow=demo_overflow, seed=seed, prefix_cache_mb=prefix_cache_mb)


def assemble_prompt(backbone: Any, spec: TaskSpec, parts: PromptParts, *, max_length: int, calibrate: bool = False,
                    content_free: str = "N/A", search: str = "argmax", sampler: DemoSampler | None = None,
                    eval_samples: int = 1, ensemble: str = "prob", demo_separator: str | None = None,
                    demo_max_tokens: int | None = None,
                    demo_overflow: str = "drop", seed: int = 0, prefix_cache_mb: int = 1024) -> PromptSetup:
    """The prompt model on ``backbone``'s LM (it hooks the LM head) and its collate function."""
    tok, verb, pole_values = parts.encoder.tok, parts.verbalizer, parts.poles
    model = PromptModel(backbone.model, verb, search=search, seed=seed, poles=pole_values,
                        prefix_cache_mb=prefix_cache_mb, pad_id=tok.pad_token_id or 0, ensemble=ensemble)
    demo_label = (lambda e: int(e.label))  # type: ignore[arg-type]  # noqa: E731
    if pole_values is not None:
        # One per class: the word a demonstration shows must be that of the class it was drawn from. Otherwise
        # (k in-context examples) the nearer pole's.
        split = sampler.split if sampler is not None and sampler.per_class else None
        middle = split if split is not None else sum(pole_values) / 2
        demo_label = (lambda e: int(float(e.label) > middle))  # type: ignore[arg-type]  # noqa: E731
    collate = PromptCollator(parts.encoder, verb, kind=parts.kind, max_length=max_length, pad_id=tok.pad_token_id,
                             mask_id=tok.mask_token_id, sampler=sampler, eval_samples=eval_samples,
                             calibrate=calibrate, content_free=content_free, is_pair=spec.is_pair,
                             demo_separator=demo_separator, demo_max_tokens=demo_max_tokens,
                             on_overflow=demo_overflow, is_training=lambda: model.training, demo_label=demo_label)
    return PromptSetup(model, collate, parts.template, verb, parts.kind)


@torch.no_grad()
def predict_scores(setup: PromptSetup, examples: Sequence[Example], batch_size: int = 32) -> np.ndarray:
    """Label log-probabilities ``[N, C]`` (values ``[N]`` for regression) in the examples' order."""
    model = setup.model
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        with model.inference_scope():
            for i in range(0, len(examples), batch_size):
                batch = {k: v.to(device) for k, v in setup.collate(examples[i:i + batch_size]).items()}
                out.append(model(**batch).float().cpu())
    finally:
        model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0,))
