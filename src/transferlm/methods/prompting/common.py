"""What the three prompt methods share: options, the head choice per model, and assembly."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ...data.example import Example
from ...data.tasks import TaskSpec
from ...errors import ConfigError
from ...io import write_json
from ...prompts.build import PromptSetup, build_prompt
from ...prompts.demonstrations import DemoSampler
from ...prompts.template import Template
from ...prompts.verbalizer import AGGREGATE, MULTI_TOKEN, SEARCH
from ..base import Method, MethodConfig

log = logging.getLogger(__name__)

AUTO_MODES = ("labels", "templates", "both")


@dataclass
class PromptConfig(MethodConfig):
    # By auto search; the poles of a regression task without defaults, from the training labels.
    resolved_from_data: ClassVar[tuple[str, ...]] = ("template", "label_words", "poles")
    # "{sentence} It was {answer}." etc.; default: the LM-BFF manual template of a registered task.
    template: str | None = None
    # {label: word | [words]} (label values or names as keys) or [word, ...] in class order.
    label_words: Any = None
    # Contextual calibration (Zhao et al. 2021) against the content-free input.
    calibrate: bool = False
    content_free: str = "N/A"
    # How a multi-token word's token log-probs combine ("mean" or "sum"), and a label's several words.
    multi_token: str = "mean"
    aggregate: str = "mean"
    # argmax, or sample the answer from the label distribution (evaluation only).
    answer_search: str = "argmax"
    # Regression only: the values of the two label words (default STS-B's 0 and 5).
    poles: list[float] | None = None
    # LM-BFF's automatic prompt, searched on this seed's train/dev before training: "labels" (label words
    # for the template), "templates" (a template from the built-in pool for the label words) or "both".
    auto: str | None = None
    auto_k: int = 10  # candidate words per class for "labels"

    def validate(self) -> None:
        for name, value, choices in (("multi_token", self.multi_token, MULTI_TOKEN),
                                     ("aggregate", self.aggregate, AGGREGATE),
                                     ("answer_search", self.answer_search, SEARCH)):
            if value not in choices:
                raise ConfigError(f"method_args.{name} must be one of {', '.join(choices)}, got '{value}'")
        if self.auto is not None and self.auto not in AUTO_MODES:
            raise ConfigError(f"method_args.auto must be one of {', '.join(AUTO_MODES)}, got '{self.auto}'")
        if self.auto_k < 1:
            raise ConfigError(f"method_args.auto_k must be >= 1, got {self.auto_k}")
        if self.template is not None:
            Template.parse(self.template)  # a bad template fails before any model is loaded
        if isinstance(self.label_words, str):
            # YAML/--set may give a JSON string: '{"0": "bad", "1": "good"}'.
            try:
                self.label_words = json.loads(self.label_words)
            except ValueError:
                raise ConfigError("method_args.label_words must be a mapping or a list, e.g. "
                                  "'{\"0\": terrible, \"1\": great}'") from None


@dataclass
class DemoConfig(PromptConfig):
    """Options of methods that put demonstrations in the context (icl, prompt-finetune)."""

    demo_separator: str | None = None  # between demonstrations: default "\n" (causal) or " " (MLM)
    demo_max_tokens: int | None = None  # cut each demonstration's inputs to fit this many tokens
    demo_overflow: str = "drop"  # demonstrations that do not fit: "drop" (logged) or "error"
    # Causal LMs at evaluation: reuse the keys/values of demonstrations shared by several rows, in up to this many
    # MB (0: every row runs whole). Same scores up to float rounding (prompts/prefix_cache.py).
    prefix_cache_mb: int = 1024

    def validate(self) -> None:
        super().validate()
        if self.demo_overflow not in ("drop", "error"):
            raise ConfigError(f"method_args.demo_overflow must be drop or error, got '{self.demo_overflow}'")
        if self.demo_max_tokens is not None and self.demo_max_tokens < 1:
            raise ConfigError(f"method_args.demo_max_tokens must be >= 1, got {self.demo_max_tokens}")
        if self.prefix_cache_mb < 0:
            raise ConfigError(f"method_args.prefix_cache_mb must be >= 0 (0 turns prefix reuse off), "
                              f"got {self.prefix_cache_mb}")


def prompt_head(model: str) -> str:
    """"mlm" or "causal" for ``model``, decided before loading it (run() loads the backbone with it)."""
    from ...models.loading import is_decoder_config
    from ...models.zoo import locate_model

    # locate_model: an unknown hub id fails here at once, not after the hub client's retries.
    resolved = locate_model(model)
    kind = resolved.kind
    if kind is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(resolved.path))
        except (OSError, ValueError):
            return "mlm"  # let load_backbone report the loading problem
        decoder = is_decoder_config(config)
        kind = "causal" if decoder else "mlm"
    if kind == "encoder":
        raise ConfigError(f"prompt methods need a masked or causal language model with its LM head; {model} is an "
                          "encoder without one (use e.g. splade-tiny or smollm2-135m)")
    return kind


def seed_of_run() -> int:
    # run() seeds torch with the run's seed right before prepare(): demonstrations draw from it.
    return int(torch.initial_seed()) % (2**31)


class PromptMethod(Method):
    backbone_head = "mlm"  # the usual case; head_for() decides per model

    def head_for(self, model: str) -> str:
        return prompt_head(model)

    def resolve(self, cfg: PromptConfig, backbone: Any, spec: TaskSpec, train: Sequence[Example],  # type: ignore[override]
                dev: Sequence[Example], *, max_length: int = 128) -> PromptConfig:
        """``auto``: replace the label words and/or template by the best candidate on dev (LM-BFF, slides 21-22).

        Regression: the poles are settled here (they may come from this seed's training labels), so the run
        records them, and a seed-free method's memoised test metrics are not reused under other poles.
        """
        if spec.regression and cfg.poles is None:
            from ...prompts.build import regression_poles

            cfg = dataclasses.replace(cfg, poles=list(regression_poles(spec, train, None)))
        if not cfg.auto:
            return cfg
        if not dev:
            raise ConfigError(f"method_args.auto ({cfg.auto}) picks the prompt on the dev split, but task {spec.name} "
                              "has none here; pass --dev-file or drop --auto")
        if spec.regression:
            raise ConfigError("method_args.auto searches label words/templates of classification tasks only")
        from ...prompts.defaults import get_default, resolve_template
        from ...prompts.search import pool_templates, search_label_words, search_templates

        max_length = self.search_length(backbone, cfg, max_length)
        template, words = cfg.template, cfg.label_words
        if cfg.auto in ("labels", "both"):
            tpl = resolve_template(spec, template, causal=backbone.is_decoder)
            found = search_label_words(backbone, spec, tpl, train, dev, k=cfg.auto_k, n=1,
                                       max_length=max_length)
            if not found["assignments"]:
                raise ConfigError(f"automatic label-word search found no assignment for {spec.name}")
            words = found["assignments"][0]["label_words"]
            log.info("auto label words (dev %.4f): %s", found["assignments"][0]["zero_shot"], words)
        if cfg.auto in ("templates", "both"):
            if words is None:
                default = get_default(spec.name)
                if default is None:
                    raise ConfigError(f"task {spec.name} has no default label words; set method_args.label_words "
                                      "or use auto: both")
                words = dict(default.mapping)
            ranked = search_templates(backbone, spec, words, pool_templates(spec.is_pair), dev,
                                     max_length=max_length)
            if not ranked:
                raise ConfigError(f"automatic template search found no usable template for {spec.name}")
            template = ranked[0]["template"]
            log.info("auto template (dev %.4f): %s", ranked[0]["zero_shot"], template)
        return dataclasses.replace(cfg, template=template, label_words=words)

    def search_length(self, backbone: Any, cfg: PromptConfig, max_length: int) -> int:
        """What the run will cut inputs to (a nested soft prompt takes positions): the searches rank at it."""
        return max_length

    def setup(self, backbone: Any, spec: TaskSpec, cfg: PromptConfig, *, max_length: int,
              train: Sequence[Example], sampler: DemoSampler | None = None, eval_samples: int = 1,
              ensemble: str = "prob") -> PromptSetup:
        demo = cfg if isinstance(cfg, DemoConfig) else DemoConfig()
        return build_prompt(backbone, spec, template=cfg.template, label_words=cfg.label_words,
                            max_length=max_length, train=train, calibrate=cfg.calibrate,
                            content_free=cfg.content_free, multi_token=cfg.multi_token, aggregate=cfg.aggregate,
                            search=cfg.answer_search, poles=cfg.poles, sampler=sampler, eval_samples=eval_samples,
                            ensemble=ensemble,
                            demo_separator=demo.demo_separator, demo_max_tokens=demo.demo_max_tokens,
                            demo_overflow=demo.demo_overflow, seed=seed_of_run(),
                            prefix_cache_mb=demo.prefix_cache_mb)

    def describe(self, setup: PromptSetup, cfg: MethodConfig) -> dict[str, Any]:
        """What was used, for method.json and the results: the template and every label's words."""
        return {"method": self.name, "config": cfg.to_dict(), "template": setup.template.source,
                "lm": setup.kind, "label_words": dict(zip(setup.verbalizer.label_names, setup.verbalizer.words,
                                                          strict=True))}

    def write_description(self, folder: Path, setup: PromptSetup, cfg: MethodConfig, spec: TaskSpec) -> None:
        # max_length: what the run cut inputs to (a nested soft prompt takes positions); serving uses it too.
        write_json(folder / "method.json", {**self.describe(setup, cfg), "task": spec.to_dict(),
                                            "max_length": setup.collate.max_length})


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model
