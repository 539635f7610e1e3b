"""Several saved tasks on ONE base model: load, switch by name, mix tasks row by row in a batch, delete."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ...errors import ConfigError
from ...models.loading import Backbone
from ..finetune import pool
from .arch import resolve_arch
from .core import HOST_ATTR, PeftBackbone, SavedAdapter
from .method import HEAD_FILE, METHOD_FILE

TASKS_ATTR = "_transferlm_tasks"


class TaskModel(nn.Module):
    """A PEFT backbone hosting task adapters, each with its own classification head and pooling."""

    def __init__(self, backbone: PeftBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict()
        self.poolings: dict[str, str] = {}
        self.tasks: dict[str, dict[str, Any]] = {}  # name -> the task spec it was trained on

    def set_task(self, name: str) -> None:
        self.backbone.set_adapter(name)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads)

    def delete_task(self, name: str) -> None:
        """Remove task ``name``: its adapter (weights freed), head and pooling; the other tasks are untouched."""
        if name not in self.heads and name not in self.backbone.configs:
            loaded = ", ".join(self.heads) or "none"
            raise ConfigError(f"task '{name}' is not loaded; loaded tasks: {loaded}")
        if name in self.backbone.configs:  # absent when loading it failed half-way
            self.backbone.delete_adapter(name)
        if name in self.heads:
            del self.heads[name]
        self.poolings.pop(name, None)
        self.tasks.pop(name, None)

    def _head(self, name: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.heads[name](pool(hidden, mask, self.poolings[name]))
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tasks: Sequence[str] | None = None,
                **kw: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits of the active task; with ``tasks`` (one name per row), a list of each row's logits."""
        if tasks is None:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw)
            return self._head(self.backbone.active, out.last_hidden_state, attention_mask)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, adapter_names=list(tasks), **kw)
        hidden = out.last_hidden_state
        return [self._head(n, hidden[i:i + 1], attention_mask[i:i + 1])[0] for i, n in enumerate(tasks)]


def _unpack(base: Any) -> tuple[nn.Module, Any]:
    if isinstance(base, Backbone):
        return base.model, base.tokenizer
    return base, None


@dataclass
class SavedTask:
    """A saved task read into CPU memory, on no base model yet: its method's adapter, head and pooling."""

    folder: Path
    meta: dict[str, Any]  # method.json
    adapter: SavedAdapter
    head: nn.Linear  # on the CPU until attached


def read_task_adapter(folder: str | Path) -> SavedTask:
    """Read and check the task a run saved in ``folder`` (files only: no model is touched, any thread may call it)."""
    from . import _info

    folder = Path(folder)
    meta_path = folder / METHOD_FILE
    if not meta_path.is_file():
        raise ConfigError(f"{folder} is not a saved parameter-efficient model (no {METHOD_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    adapter = _info(meta.get("method", "?")).backbone.read_adapter(folder)
    state = load_file(str(folder / HEAD_FILE))
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    head.requires_grad_(False)
    return SavedTask(folder, meta, adapter, head)


def load_task_adapter(folder: str | Path, base_backbone: Any, name: str) -> TaskModel:
    """Load the method weights and head a run saved in ``folder`` onto ``base_backbone`` as task ``name``.

    Calling it again with the same base backbone adds the next task to the same :class:`TaskModel`
    (one copy of the base weights). Adapters must come from one method and a base model of the same
    architecture and size; anything else is a one-line error. It is :func:`read_task_adapter` (file work)
    then :func:`attach_task_adapter` (the edit of the base model).
    """
    return attach_task_adapter(read_task_adapter(folder), base_backbone, name)


def attach_task_adapter(saved: SavedTask, base_backbone: Any, name: str) -> TaskModel:
    """Put the task read by :func:`read_task_adapter` onto ``base_backbone`` as task ``name``."""
    from . import _info

    meta, folder = saved.meta, saved.folder
    info = _info(meta.get("method", "?"))
    if isinstance(base_backbone, TaskModel):
        host = base_backbone
    else:
        if isinstance(base_backbone, PeftBackbone):  # e.g. a run's model still in memory
            model, tokenizer, wrapped = base_backbone.arch.model, base_backbone.tokenizer, base_backbone
        else:
            model, tokenizer = _unpack(base_backbone)
            wrapped = model.__dict__.get(HOST_ATTR)
        host = model.__dict__.get(TASKS_ATTR)
        if host is None:
            if wrapped is not None and wrapped.method != meta["method"]:
                raise ConfigError(f"this base model carries {wrapped.method} adapters; a {meta['method']} task "
                                  "needs a fresh base model")
            if wrapped is None:
                PeftBackbone.check_signature_of(resolve_arch(model).signature(), meta.get("base", {}), str(folder))
                wrapped = info.backbone(model, tokenizer=tokenizer)
            host = TaskModel(wrapped)
            model.__dict__[TASKS_ATTR] = host
    if host.backbone.method != meta["method"]:
        raise ConfigError(f"this base model hosts {host.backbone.method} tasks; a {meta['method']} task needs "
                          "a fresh base model")
    host.backbone.attach_adapter(name, saved.adapter)
    device = next(host.backbone.parameters()).device
    host.heads[name] = saved.head.to(device)
    host.poolings[name] = meta["pooling"]
    host.tasks[name] = meta.get("task", {})
    host.requires_grad_(False)
    return host.eval()
