"""Where the parts of each transformer family live: module names as data, not code paths.

Every PEFT method places itself through these maps (LoRA targets, adapter sites, IA3 scalings,
prefix shapes), so supporting a new family is one entry here. Names are relative to one layer
of the layer list; the layer list is relative to the *core* model (``model.base_model``), so the
same map serves ``BertModel`` and ``BertForMaskedLM``, ``LlamaModel`` and ``LlamaForCausalLM``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ...errors import ConfigError


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_types: tuple[str, ...]
    layers: str  # the ModuleList of transformer layers, relative to the core model
    q: str
    k: str
    v: str
    o: str  # attention output projection (before the residual): adapter site "attn"
    ffn_up: tuple[str, ...]  # up (and gate) projections
    ffn_down: str  # FFN output projection (before the residual): adapter site "ffn"
    # Prefix-tuning feeds key/value prefixes through the model's KV cache; families without one can't.
    prefix: bool = True
    # Absolute position embeddings: prefix/prompt code must pass positions explicitly.
    absolute_positions: bool = False
    # RoBERTa counts positions from padding_idx + 1.
    position_offset_from_padding: bool = False


_BERT = dict(layers="encoder.layer", q="attention.self.query", k="attention.self.key", v="attention.self.value",
             o="attention.output.dense", ffn_up=("intermediate.dense",), ffn_down="output.dense",
             absolute_positions=True)
_LLAMA = dict(layers="layers", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
              o="self_attn.o_proj", ffn_up=("mlp.gate_proj", "mlp.up_proj"), ffn_down="mlp.down_proj")

ARCHS: tuple[ArchSpec, ...] = (
    ArchSpec("bert", ("bert",), **_BERT),
    ArchSpec("roberta", ("roberta", "xlm-roberta", "camembert"), **_BERT, position_offset_from_padding=True),
    # DistilBERT's attention has no KV cache, so no prefix-tuning.
    ArchSpec("distilbert", ("distilbert",), layers="transformer.layer", q="attention.q_lin", k="attention.k_lin",
             v="attention.v_lin", o="attention.out_lin", ffn_up=("ffn.lin1",), ffn_down="ffn.lin2", prefix=False,
             absolute_positions=True),
    ArchSpec("llama", ("llama", "mistral", "smollm3", "olmo", "olmo2"), **_LLAMA),
    ArchSpec("gemma", ("gemma", "gemma2", "gemma3", "gemma3_text"), **_LLAMA),
    ArchSpec("qwen2", ("qwen2", "qwen3"), **_LLAMA),
)


@dataclass
class Arch:
    """An :class:`ArchSpec` resolved against one model instance."""

    spec: ArchSpec
    model: nn.Module  # the model as given (possibly with an LM head)
    core: nn.Module  # the transformer without its head
    core_prefix: str  # name of ``core`` inside ``model`` ("" when they are the same)
    layers: nn.ModuleList

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        cfg = self.config
        return getattr(cfg, "hidden_size", None) or cfg.dim

    @property
    def num_heads(self) -> int:
        cfg = self.config
        return getattr(cfg, "num_attention_heads", None) or cfg.n_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.layers[0].get_submodule(self.spec.k).out_features

    @property
    def head_dim(self) -> int:
        return self.kv_dim // self.num_kv_heads

    def site(self, layer: int, rel: str) -> nn.Module:
        return self.layers[layer].get_submodule(rel)

    def full_name(self, layer: int, rel: str) -> str:
        return ".".join(p for p in (self.core_prefix, self.spec.layers, str(layer), rel) if p)

    def layer_linear_names(self) -> list[str]:
        """Names (relative to a layer) of every nn.Linear inside one transformer layer."""
        return [n for n, m in self.layers[0].named_modules() if isinstance(m, nn.Linear)]

    def target_regex(self, rels: list[str]) -> str:
        """A full-match regex for ``rels`` in every layer, with or without a head/PEFT wrapper in front.

        PEFT matches a string ``target_modules`` with ``re.fullmatch`` against module names, so one
        pattern serves BertModel ("encoder.layer.0...") and BertForMaskedLM ("bert.encoder.layer.0...").
        """
        alts = "|".join(re.escape(r) for r in rels)
        return rf"(.*\.)?{re.escape(self.spec.layers)}\.\d+\.({alts})"

    def signature(self) -> dict[str, Any]:
        """What an adapter depends on: loading onto a model with another signature is an error."""
        sig = {"model_type": self.config.model_type, "hidden_size": self.hidden_size,
               "num_layers": self.num_layers, "num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
               "kv_dim": self.kv_dim}
        ffn = self.intermediate_size
        if ffn is not None:  # the FFN width: LoRA all-linear and IA3 weights have its shape
            sig["intermediate_size"] = ffn
        return sig

    @property
    def intermediate_size(self) -> Any:
        cfg = self.config
        return getattr(cfg, "intermediate_size", None) or getattr(cfg, "hidden_dim", None)  # DistilBERT: hidden_dim


def spec_for(model_type: str) -> ArchSpec:
    for spec in ARCHS:
        if model_type in spec.model_types:
            return spec
    known = sorted(t for s in ARCHS for t in s.model_types)
    raise ConfigError(f"parameter-efficient methods do not know model type '{model_type}'; supported: "
                      f"{', '.join(known)} (add an entry to methods/efficient/arch.py)")


def resolve_arch(model: nn.Module) -> Arch:
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None):
        raise ConfigError(f"{type(model).__name__} has no transformers config; pass a Hugging Face model")
    spec = spec_for(config.model_type)
    core = getattr(model, "base_model", model)
    core_prefix = "" if core is model else next(n for n, m in model.named_modules() if m is core)
    try:
        layers = core.get_submodule(spec.layers)
    except AttributeError:
        raise ConfigError(f"{type(model).__name__}: no layer list at '{spec.layers}' "
                          f"(family {spec.family}); the architecture map needs updating") from None
    return Arch(spec=spec, model=model, core=core, core_prefix=core_prefix, layers=layers)
