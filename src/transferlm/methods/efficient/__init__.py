"""Parameter-efficient fine-tuning as backbone transformations: lora, adapter, prefix, prompt-tuning, bitfit, ia3.

``apply_peft(backbone, name, cfg)`` freezes a backbone (bare, MLM or causal LM) and adds one
method's parameters, returning a module called like the original. The registered methods put
:class:`~transferlm.methods.finetune.SequenceClassifier`'s head on top; prompt-based methods can put
an LM head's verbalizer on top instead. ``load_task_adapter`` hosts several saved tasks on one base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ...config import from_dict
from ...errors import ConfigError
from ...models.loading import Backbone
from ..registry import register
from .adapter.config import AdapterOptions
from .adapter.model import AdapterBackbone
from .arch import ARCHS, Arch, ArchSpec, resolve_arch
from .bitfit.config import BitFitOptions
from .bitfit.model import BitFitBackbone
from .config import EfficientConfig
from .core import HOST_ATTR, PeftBackbone
from .ia3.config import IA3Options
from .ia3.model import IA3Backbone
from .lora.config import LoraOptions
from .lora.model import LoraBackbone
from .prefix.config import PrefixOptions
from .prefix.model import PrefixBackbone
from .prompt_tuning.config import PromptTuningOptions
from .prompt_tuning.model import PromptTuningBackbone


@dataclass(frozen=True)
class PeftMethodInfo:
    config: type[EfficientConfig]
    backbone: type[PeftBackbone]
    description: str


PEFT_METHODS: dict[str, PeftMethodInfo] = {
    "lora": PeftMethodInfo(LoraOptions, LoraBackbone, "LoRA via peft: low-rank updates of attention projections"),
    "adapter": PeftMethodInfo(AdapterOptions, AdapterBackbone,
                              "bottleneck adapters after attention and FFN (Houlsby; pfeiffer: FFN only)"),
    "prefix": PeftMethodInfo(PrefixOptions, PrefixBackbone, "prefix-tuning: trainable key/value prefixes per layer"),
    "prompt-tuning": PeftMethodInfo(PromptTuningOptions, PromptTuningBackbone,
                                    "prompt tuning: k trainable soft tokens before the input"),
    "bitfit": PeftMethodInfo(BitFitOptions, BitFitBackbone, "BitFit: only the bias terms train"),
    "ia3": PeftMethodInfo(IA3Options, IA3Backbone, "IA3 via peft: learned rescaling of keys, values, FFN"),
}


def _info(name: str) -> PeftMethodInfo:
    if name not in PEFT_METHODS:
        raise ConfigError(f"unknown parameter-efficient method '{name}'; available: {', '.join(PEFT_METHODS)}")
    return PEFT_METHODS[name]


def config_from_dict(name: str, options: dict[str, Any], where: str = "method_args") -> EfficientConfig:
    """Parse and validate the options of PEFT method ``name``, written under ``where`` in the run config.

    ``where`` is ``method_args`` for a PEFT method run on its own, ``method_args.peft`` where another
    method nests it; errors name the option by that path, so the user finds where it sits.
    """
    cfg = from_dict(_info(name).config, dict(options), source=f"{where} ({name})")
    try:
        cfg.validate()
    except ConfigError as e:
        # The options' checks name their field from the top ("method_args.init").
        message = str(e)
        if not message.startswith("method_args."):
            raise
        raise ConfigError(f"{where}.{message.removeprefix('method_args.')}") from None
    return cfg


def apply_peft(backbone: Any, name: str, cfg: EfficientConfig | dict[str, Any] | None = None, *,
               adapter_name: str = "default", train_lm_head: bool = False, tokenizer: Any = None) -> PeftBackbone:
    """Freeze ``backbone`` and add PEFT method ``name`` to it; returns the module to call instead.

    ``backbone`` is a :class:`~transferlm.models.loading.Backbone` or a Hugging Face model (bare,
    ``*ForMaskedLM`` or ``*ForCausalLM``). Its outputs keep their type and stay aligned with the input
    tokens. Only the method's parameters train; an LM head stays frozen unless ``train_lm_head``
    (a head tied to the input embeddings brings them along).
    """
    info = _info(name)
    if cfg is None or isinstance(cfg, dict):
        cfg = config_from_dict(name, cfg or {})
    elif not isinstance(cfg, info.config):
        raise ConfigError(f"{name} expects {info.config.__name__} options, got {type(cfg).__name__}")
    else:
        cfg.validate()
    if isinstance(backbone, PeftBackbone):
        raise ConfigError(f"this backbone is already a {backbone.method} transformation; use its add_adapter()")
    model = backbone.model if isinstance(backbone, Backbone) else backbone
    if not isinstance(model, nn.Module):
        raise ConfigError(f"apply_peft needs a Backbone or an nn.Module, got {type(backbone).__name__}")
    tokenizer = tokenizer if tokenizer is not None else getattr(backbone, "tokenizer", None)
    prior, flags = model.__dict__.get(HOST_ATTR), [p.requires_grad for p in model.parameters()]
    try:
        wrapped = info.backbone(model, tokenizer=tokenizer, train_lm_head=train_lm_head)
        wrapped.add_adapter(adapter_name, cfg)
    except Exception:
        # A failed transformation leaves the model as it was (reusable, trainability unchanged). The flags are
        # restored even when no marker was set: the wrapper freezes the model before train_lm_head can fail.
        if model.__dict__.get(HOST_ATTR) is not prior:
            model.__dict__.pop(HOST_ATTR, None)
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        raise
    return wrapped


from .method import EfficientMethod  # noqa: E402  (needs PEFT_METHODS)
from .tasks import SavedTask, TaskModel, attach_task_adapter, load_task_adapter, read_task_adapter  # noqa: E402

for _name, _info_ in PEFT_METHODS.items():
    register(_name)(type(f"PEFT_{_name.replace('-', '_')}", (EfficientMethod,),
                         {"config_cls": _info_.config, "description": _info_.description}))

__all__ = ["ARCHS", "Arch", "ArchSpec", "EfficientConfig", "PEFT_METHODS", "PeftBackbone", "SavedTask", "TaskModel",
           "apply_peft", "attach_task_adapter", "config_from_dict", "load_task_adapter", "read_task_adapter",
           "resolve_arch"]
