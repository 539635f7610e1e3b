"""The contract between a transfer method and the training engine.

A method turns (backbone, task) into a :class:`Prepared` bundle: a module that maps a
collated batch to per-class scores, a collate function, and which parameters train.
The engine only ever sees logits ``[batch, num_labels]`` (or ``[batch]`` for regression),
so every method — heads, prompts, adapters — is trained and evaluated by the same loop.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..config import from_dict
from ..data.example import Example
from ..data.tasks import TaskSpec

Batch = dict[str, torch.Tensor]


@dataclass
class Prepared:
    model: torch.nn.Module
    # Turns a list of examples into model inputs (labels are added by the engine).
    collate: Callable[[Sequence[Example]], Batch]
    trains: bool = True
    # Optional optimizer parameter groups (e.g. layer-wise learning rates); default: all trainable params.
    param_groups: list[dict[str, Any]] | None = None
    # Writes the method's own weights (and config) into a folder; None: nothing worth saving on its own.
    save: Callable[[Path], None] | None = None
    # Evaluation batches group examples of similar size; default: by input characters. Methods whose
    # inputs grow by more than the text (demonstrations) give each example's length in tokens.
    eval_lengths: Callable[[Sequence[Example]], list[int]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# Field metadata key: how runs recorded before an option existed behaved (see ``changed_default``).
WAS = "was"


def changed_default(default: Any, *, was: Any) -> Any:
    """A method option whose default is not what runs recorded before it existed did (they behaved as ``was``).

    An option added with a default that keeps the old behaviour needs nothing. When it does not, or when a
    default changes, compare's run cache must not reuse old runs for the new default: results.json
    records every option's value, and ``was`` stands in for the ones a run recorded before the option existed.
    """
    return field(default=default, metadata={WAS: was})


@dataclass
class MethodConfig:
    """Base for method options; subclasses add fields. Round-trips through dicts/JSON."""

    # Options that Method.resolve() may fill from the data when left unset (None).
    resolved_from_data: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sub_configs(self) -> dict[str, tuple[MethodConfig, ...]]:
        """Options given as a mapping that other config classes parse, each reading its own keys (e.g.
        prompt-finetune's ``peft``: which PEFT method, and that method's options)."""
        return {}

    def settings(self) -> dict[str, Any]:
        """Every option's value, defaults included, nested mappings too: what a run recorded with these
        options did, so that a later change of a default is seen (compare's run cache keys on this)."""
        d = self.to_dict()
        for key, subs in self.sub_configs().items():
            for sub in subs:
                d[key] = {**d[key], **sub.settings()}
        return d


class Method(ABC):
    name: ClassVar[str] = ""
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    # Which head the backbone is loaded with: "base", "mlm" or "causal".
    backbone_head: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    # False for methods that only evaluate (zero-shot prompting, in-context learning).
    trains: ClassVar[bool] = True

    def head_for(self, model: str) -> str:
        """The head to load ``model`` with; methods whose head depends on the model (prompting) override it."""
        return self.backbone_head

    def parse_config(self, args: dict[str, Any]) -> MethodConfig:
        cfg = from_dict(self.config_cls, dict(args), source=f"method_args ({self.name})")
        validate = getattr(cfg, "validate", None)
        if validate:
            validate()
        return cfg

    def seed_free(self, cfg: MethodConfig) -> bool:
        """Whether predictions depend only on the model and ``cfg``: not on the seed, the training split or
        training. ``compare`` then evaluates the (shared) test split once for all seeds."""
        return False

    def resolve(self, cfg: MethodConfig, backbone: Any, spec: TaskSpec, train: Sequence[Example],
                dev: Sequence[Example], *, max_length: int = 128) -> MethodConfig:
        """Settle options that depend on the data before ``prepare`` (e.g. automatic prompt search on dev).

        ``max_length``: the run's token budget per input, which any search must rank candidates under.

        The returned config is the one recorded in results.json, so a run says what it actually used.
        """
        return cfg

    @abstractmethod
    def prepare(self, backbone: Any, spec: TaskSpec, cfg: MethodConfig, *, max_length: int,
                train: Sequence[Example]) -> Prepared:
        """Build the trainable module for ``spec`` on ``backbone``."""


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), counting shared (tied) tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def freeze_unused_parameters(model: torch.nn.Module, batch: Batch) -> list[str]:
    """Stop training parameters the forward pass never reaches (e.g. BERT's pooler under our own head).

    They would never change anyway; freezing them keeps the trainable count honest and lets
    DistributedDataParallel run without ``find_unused_parameters``.
    """
    was_training = model.training
    model.eval()
    out = model(**batch)
    out.float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused
