"""The common shape of every PEFT method: a backbone transformation hosting named task adapters.

A :class:`PeftBackbone` wraps a Hugging Face model (bare, MLM or causal LM), freezes it, and
adds one method's parameters. It is called exactly like the model it wraps and returns outputs
aligned with the input tokens, so any head (our classifier, an MLM/LM verbalizer) sits on top.
Several adapters can live on one base model: ``set_adapter(name)`` switches them,
``forward(..., adapter_names=[...])`` runs each row of a batch with its own adapter, and
``delete_adapter(name)`` removes one with its weights (a server retiring a replaced version).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...errors import CheckpointError, ConfigError, ModelError
from ...training.layers import layer_of
from .arch import Arch, resolve_arch

OWN_WEIGHTS = "adapter.safetensors"
OWN_CONFIG = "adapter.json"
SIGNATURE_ADDED_LATER = ("intermediate_size",)  # base-model signature keys older adapter.json files lack
HOST_ATTR = "_transferlm_peft"  # set on the wrapped HF model: one PEFT transformation per base model


@dataclass
class SavedAdapter:
    """An adapter read from its folder into CPU memory, on no model yet (:meth:`PeftBackbone.read_adapter`).

    Reading touches only files, so a server does it beside its forward passes; only
    :meth:`PeftBackbone.attach_adapter` edits the shared base model.
    """

    folder: Path
    config: Any  # the method's parsed config (its EfficientConfig)
    base: dict[str, Any]  # the signature of the base model it was trained on (checked on attach)
    state: dict[str, torch.Tensor]
    extra: Any = None  # what a method reads besides (peft's own config for peft-library methods)


class PeftBackbone(nn.Module):
    method: ClassVar[str] = ""
    # Whether rows of one batch may use different adapters.
    mixed_batches: ClassVar[bool] = True
    # Whether the method puts its own positions in front of the input (prefix- and prompt-tuning): a prompt's
    # cached demonstration states (prompts/prefix_cache.py) would then miss them.
    extends_context: ClassVar[bool] = False
    # Why train.layer_decay cannot apply to the method (its weights feed every layer at once), or None.
    no_layer_decay: ClassVar[str | None] = None
    # The file of a saved adapter's weights (methods saved in PEFT's own layout name PEFT's).
    weights_file: ClassVar[str] = OWN_WEIGHTS

    def __init__(self, model: nn.Module, *, tokenizer: Any = None, train_lm_head: bool = False) -> None:
        super().__init__()
        host = model.__dict__.get(HOST_ATTR)
        if host is not None:
            raise ConfigError(f"this base model already carries {host.method} adapters; add tasks with "
                              "load_task_adapter/add_adapter on that wrapper, or load a fresh backbone")
        self.arch: Arch = resolve_arch(model)
        self.signature = self.arch.signature()  # before any method edits the modules it reads
        self.model = model
        self.tokenizer = tokenizer
        self.configs: dict[str, Any] = {}
        self.active: str | None = None
        self._rows: torch.Tensor | None = None  # per-row adapter index during a mixed forward
        model.requires_grad_(False)
        if train_lm_head:
            self._unfreeze_head(model)
        # A plain attribute (not a submodule): marks the model as transformed without a reference cycle in modules.
        model.__dict__[HOST_ATTR] = self

    def _unfreeze_head(self, model: nn.Module) -> None:
        core_params = {id(p) for p in self.arch.core.parameters()}
        head = [p for p in model.parameters() if id(p) not in core_params]
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if out is not None:
            head += list(out.parameters())  # a tied decoder: its matrix is the input embedding
        if not head:
            raise ConfigError("train_lm_head: this model has no LM head (load it with an MLM or causal LM head)")
        for p in head:
            p.requires_grad_(True)

    # -- what subclasses implement -----------------------------------------------------------------
    def _add(self, name: str, cfg: Any) -> None:
        raise NotImplementedError

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """The adapter's own weights, with keys that do not name the adapter."""
        raise NotImplementedError

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _delete(self, name: str) -> None:
        """Drop adapter ``name``'s weights (its config is dropped by :meth:`delete_adapter`)."""
        raise NotImplementedError

    def _forward(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.model(*args, **kwargs)

    def layer_of_param(self, name: str) -> int | None:
        """The block a parameter (named within this wrapper) belongs to, for train.layer_decay.

        1-based; 0 for the embeddings; None above the blocks. By default the block index in the name
        (peft's LoRA/IA3 weights sit inside the layers they adapt); methods keeping weights elsewhere override.
        """
        return layer_of(name)

    # -- adapters ------------------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.configs)

    def check_new_name(self, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name or ""):
            raise ConfigError(f"adapter name must be letters, digits, '_' or '-', got {name!r}")
        if name in self.configs:
            raise ConfigError(f"adapter '{name}' is already loaded on this base model")

    def add_adapter(self, name: str, cfg: Any) -> None:
        self.check_new_name(name)
        self._add(name, cfg)
        device = next(self.arch.model.parameters()).device
        self.to(device)  # new weights join the base model wherever it already lives
        self.configs[name] = cfg
        if self.active is None:
            self._activate(name)

    def _activate(self, name: str) -> None:
        """Make ``name`` active when none is (the first adapter, or the first after all were deleted)."""
        self.active = name

    def check_name(self, name: str) -> None:
        if name not in self.configs:
            loaded = ", ".join(self.configs) or "none"
            raise ConfigError(f"adapter '{name}' is not loaded; loaded adapters: {loaded}")

    def set_adapter(self, name: str) -> None:
        self.check_name(name)
        self.active = name

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` and free its weights; the others keep theirs (and their outputs).

        If it was the active one, the first adapter left becomes active (none left: the bare model).
        """
        self.check_name(name)
        if self._rows is not None:
            raise ConfigError(f"cannot delete adapter '{name}' during a forward pass")
        if self.active == name:
            rest = [n for n in self.configs if n != name]
            if rest:
                self.set_adapter(rest[0])
            else:
                self.active = None
        self._delete(name)
        del self.configs[name]

    # -- forward ---------------------------------------------------------------------------------------
    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        if adapter_names is None:
            return self._forward(args, kwargs)
        names = list(adapter_names)
        for n in dict.fromkeys(names):
            self.check_name(n)
        if not self.mixed_batches and len(set(names)) > 1:
            raise ConfigError(f"{self.method} does not support batches that mix adapters; run one adapter at a time")
        first = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if first is not None and len(names) != first.shape[0]:
            raise ConfigError(f"adapter_names has {len(names)} entries for a batch of {first.shape[0]} rows")
        return self._mixed_forward(names, args, kwargs)

    def _mixed_forward(self, names: list[str], args: tuple, kwargs: dict[str, Any]) -> Any:
        device = next(self.parameters()).device
        self._rows = torch.tensor([self.adapter_names.index(n) for n in names], device=device)
        try:
            return self._forward(args, kwargs)
        finally:
            self._rows = None

    def route(self, x: torch.Tensor, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(adapter, rows)`` for the active adapter, or per group of rows in a mixed batch."""
        if self._rows is None:
            return fn(self.active, x)
        out: torch.Tensor | None = None
        for i, name in enumerate(self.adapter_names):
            idx = (self._rows == i).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            y = fn(name, x.index_select(0, idx))
            out = (y.new_zeros((x.shape[0], *y.shape[1:])) if out is None else out).index_copy(0, idx, y)
        assert out is not None
        return out

    def row_names(self, batch_size: int) -> list[str]:
        """The adapter each row uses (every row the active one outside a mixed batch)."""
        if self._rows is None:
            return [self.active] * batch_size  # type: ignore[list-item]
        return [self.adapter_names[i] for i in self._rows.tolist()]

    # -- saving and loading --------------------------------------------------------------------------
    def save_adapter(self, folder: Path, name: str) -> None:
        """Only the adapter's weights (safetensors) and its config (JSON)."""
        self.check_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.adapter_state(name).items()},
                  str(folder / self.weights_file))
        self.write_meta(folder, self.saved_config(name))

    def write_meta(self, folder: Path, cfg: Any) -> None:
        """``adapter.json``: the method, its config and the base model's signature (checked on load)."""
        (folder / OWN_CONFIG).write_text(json.dumps({"method": self.method, "config": cfg.to_dict(),
                                                     "base": self.signature}, indent=1), encoding="utf-8")

    def read_meta(self, folder: Path) -> Any:
        """The config saved in ``folder``, after checking it holds this method trained on this base model."""
        cfg, base = self.read_config(folder)
        self.check_signature(base, str(folder))
        return cfg

    @classmethod
    def read_config(cls, folder: Path) -> tuple[Any, dict[str, Any]]:
        """``adapter.json``'s parsed config and base signature, after checking it holds this method."""
        from . import config_from_dict

        meta = json.loads((folder / OWN_CONFIG).read_text(encoding="utf-8"))
        if meta.get("method") != cls.method:
            raise ConfigError(f"{folder} holds a {meta.get('method')} adapter, not {cls.method}")
        return config_from_dict(cls.method, meta["config"]), meta.get("base", {})

    def saved_config(self, name: str) -> Any:
        """The config written beside the weights (a method may save a different form, e.g. folded)."""
        return self.configs[name]

    def load_adapter(self, folder: Path, name: str) -> None:
        self.attach_adapter(name, self.read_adapter(folder))

    @classmethod
    def read_adapter(cls, folder: Path) -> SavedAdapter:
        """The adapter saved in ``folder``, read and parsed; no model is touched (any thread may call it)."""
        cfg, base = cls.read_config(folder)
        return SavedAdapter(folder, cfg, base, load_file(str(folder / cls.weights_file)))

    def attach_adapter(self, name: str, saved: SavedAdapter) -> None:
        """Add ``saved`` to this base model as adapter ``name`` (the part of a load that edits the model)."""
        self.check_signature(saved.base, str(saved.folder))
        self.add_adapter(name, saved.config)
        self.load_or_remove(name, saved.state)

    def load_or_remove(self, name: str, state: dict[str, torch.Tensor]) -> None:
        """Load ``name``'s weights; if they do not fit, remove the adapter again (no half-loaded adapter stays)."""
        try:
            self.load_adapter_state(name, state)
        except Exception:
            self.delete_adapter(name)
            raise

    def check_signature(self, saved: dict[str, Any], source: str) -> None:
        self.check_signature_of(self.signature, saved, source)

    @staticmethod
    def check_signature_of(mine: dict[str, Any], saved: dict[str, Any], source: str) -> None:
        # Adapters saved before a key joined the signature lack it: nothing to compare for that key.
        diff = [f"{k} {saved.get(k)} vs {v}" for k, v in mine.items()
                if saved.get(k) != v and (k in saved or k not in SIGNATURE_ADDED_LATER)]
        if diff:
            raise ModelError(f"{source} was trained on another base model ({'; '.join(diff)}: saved vs this one)")

    # -- the wrapped model's attributes (config, get_input_embeddings, ...) --------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self._modules.get("model")
            if model is None or name.startswith("_"):
                raise
            return getattr(model, name)


def keyword_inputs(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's inputs by keyword: methods that edit ``input_ids``/``inputs_embeds`` need them named."""
    if not args:
        return kwargs
    if len(args) > 1:
        raise TypeError("pass model inputs by keyword (input_ids=..., attention_mask=...)")
    return {"input_ids": args[0], **kwargs}


def pos_from_first_token(pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``pos`` (0..T-1 per row) counted from each row's first attended token: left padding gets 0, right padding
    keeps counting. A rotary model ignores left padding; soft tokens in front must not make it matter."""
    if mask is None:
        return pos
    return (pos - mask.long().argmax(1, keepdim=True)).clamp(min=0)


def copy_into(params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``params`` (same keys and shapes) or raise a one-line CheckpointError."""
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for k, t in state.items():
            if params[k].shape != t.shape:
                raise CheckpointError(f"{source}: {k} has shape {tuple(t.shape)}, expected {tuple(params[k].shape)}")
            params[k].copy_(t)
