"""The loaded tasks: name -> adapter on a host, with a content version; one base copy per host.

Loading and prediction are blocking and must run on the inference thread (the batcher's executor),
so a task loaded while the server runs never races a forward pass. A task keeps the version it was
admitted with: replacing a task loads the new adapter under a new internal name and swaps the mapping,
so requests already queued finish on the old weights and say so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import ConfigError, ModelError
from .config import check_task_name
from .hosts import ClassifierHost, Prediction, PromptHost, Row, label_names_of
from .memory import MemoryTrimmer

log = logging.getLogger("transferlm.serving")
DEFAULT_MAX_LENGTH = 128
DEFAULT_PAD_RATIO = 1.3
PROMPT_METHODS = ("prompt-finetune",)


class UnknownTaskError(ConfigError):
    """A request or admin call named a task that is not loaded."""


class TaskExistsError(ConfigError):
    """An admin call would load a task under a name already taken (without ``replace``)."""


@dataclass
class TaskEntry:
    name: str
    folder: Path
    adapter: str  # internal name on the host: unique per loaded version
    method: str
    kind: str  # "classifier" | "prompt"
    label_names: tuple[str, ...]
    regression: bool
    pair: bool
    max_length: int
    version: str
    loaded_at: float
    host: Any = field(repr=False)

    def rows(self, examples: Sequence[Example]) -> list[Row]:
        return [Row(self.adapter, ex, self.max_length, self.label_names, self.regression) for ex in examples]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "method": self.method, "kind": self.kind,
                "labels": list(self.label_names), "regression": self.regression, "pair": self.pair,
                "max_length": self.max_length, "folder": str(self.folder),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))}


def adapter_version(folder: Path) -> str:
    """A content hash of what the server loads from ``folder`` (12 hex digits): same files, same version."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and rel.parts[0] != "merged":  # lora's optional merged copy is not what we load
            h.update(str(rel).encode() + b"\0")
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:12]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None


def run_config_of(folder: Path) -> dict[str, Any]:
    """The run config saved beside ``folder`` (``<output>/results.json``), or {} when absent."""
    results = folder.parent / "results.json"
    if not results.is_file():
        return {}
    return _read_json(results).get("config") or {}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got '{device}'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: CUDA is not available on this machine")
    return dev


class Registry:
    def __init__(self, model: str | None = None, *, device: str = "auto", max_length: int | None = None,
                 pad_ratio: float | None = None) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.max_length = max_length
        # Length-bucketed forward passes (None: auto): on a CPU a pass costs ~ its padded tokens, so similar
        # lengths go together; a GPU prefers one big pass. 0 turns bucketing off.
        if pad_ratio is None:
            pad_ratio = DEFAULT_PAD_RATIO if self.device.type == "cpu" else 0.0
        self.pad_ratio = pad_ratio
        self._hosts: dict[tuple[str, ...], ClassifierHost | PromptHost] = {}
        self._tasks: dict[str, TaskEntry] = {}
        self._loads = 0
        self._trim = MemoryTrimmer()

    # -- lookup (event-loop side: plain dict reads) ---------------------------------------------------
    def get(self, name: str) -> TaskEntry:
        entry = self._tasks.get(name)
        if entry is None:
            loaded = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTaskError(f"unknown task '{name}'; loaded tasks: {loaded}")
        return entry

    def entries(self) -> list[TaskEntry]:
        return sorted(self._tasks.values(), key=lambda e: e.name)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def hosts(self) -> int:
        """How many copies of base weights are loaded (one per PEFT method and head kind)."""
        return len(self._hosts)

    # -- loading (inference thread) -----------------------------------------------------------------------
    def load(self, name: str, folder: str | Path, *, replace: bool = False) -> TaskEntry:
        check_task_name(name)
        if name in self._tasks and not replace:
            raise TaskExistsError(f"task '{name}' is already loaded (version {self._tasks[name].version}); "
                                  "pass replace: true to load a new version")
        folder = Path(folder).expanduser()
        meta_path = folder / "method.json"
        if not meta_path.is_file():
            raise ConfigError(f"{folder} is not a saved task model (no method.json); point at a run's "
                              "<output>/model folder written with save_model: true")
        meta = _read_json(meta_path)
        method = str(meta.get("method", "?"))
        spec = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in (meta.get("task") or {}).items()
                           if k in TaskSpec.__dataclass_fields__}) if meta.get("task") else None
        if spec is None:
            raise ConfigError(f"{meta_path}: no task description (saved by an older transferlm?)")
        run_cfg = run_config_of(folder)
        if self.model is None:
            self.model = run_cfg.get("model")
            if not self.model:
                raise ConfigError(f"no base model given and {folder.parent / 'results.json'} does not name one; "
                                  "pass --model")
        max_length = self.max_length or (run_cfg.get("train") or {}).get("max_length") or DEFAULT_MAX_LENGTH
        version = adapter_version(folder)
        self._loads += 1
        adapter = f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)}-v{self._loads}"
        kind, host = self._host_for(folder, method, meta)
        if kind == "classifier":
            host.load(folder, adapter, meta)
        else:
            host.load(folder, adapter, meta, max_length=max_length)  # type: ignore[call-arg]
        entry = TaskEntry(name=name, folder=folder, adapter=adapter, method=method, kind=kind,
                          label_names=label_names_of(spec), regression=spec.regression, pair=spec.is_pair,
                          max_length=int(max_length), version=version, loaded_at=time.time(), host=host)
        self._tasks[name] = entry  # the swap: later requests get this version
        log.info("task loaded", extra={"event": "task_loaded", "task": name, "version": version, "method": method,
                                       "kind": kind, "folder": str(folder), "base_copies": self.hosts})
        return entry

    def _host_for(self, folder: Path, method: str, meta: dict[str, Any]) -> tuple[str, Any]:
        from ..methods.efficient import PEFT_METHODS
        from ..models.loading import load_backbone

        assert self.model is not None
        if method in PEFT_METHODS:
            key: tuple[str, ...] = ("classifier", method)
            if key not in self._hosts:
                self._note_new_copy(method)
                self._hosts[key] = ClassifierHost(load_backbone(self.model, head="base"), method, self.device,
                                                 self.pad_ratio)
            return "classifier", self._hosts[key]
        if method in PROMPT_METHODS:
            lm = meta.get("lm")
            if lm not in ("mlm", "causal"):
                raise ConfigError(f"{folder}/method.json: 'lm' must be mlm or causal, got {lm!r}")
            peft = ((meta.get("config") or {}).get("peft") or {}).get("name")
            if peft is None:
                # The run fine-tuned the whole LM: it is its own base model.
                if not (folder / "backbone").is_dir():
                    raise ConfigError(f"{folder}: a prompt-finetune model without an adapter needs its backbone/ "
                                      "folder")
                return "prompt", PromptHost(load_backbone(str(folder / "backbone"), head=lm), None, self.device)
            if not (folder / "adapter").is_dir():
                raise ConfigError(f"{folder}: prompt-finetune with peft {peft} but no adapter/ folder")
            key = ("prompt", lm, peft)
            if key not in self._hosts:
                self._note_new_copy(f"prompt/{peft}")
                self._hosts[key] = PromptHost(load_backbone(self.model, head=lm), peft, self.device)
            return "prompt", self._hosts[key]
        if method == "finetune":
            raise ModelError(f"{folder} is a fully fine-tuned model (method finetune), not a task adapter; serve "
                             "parameter-efficient runs (lora, adapter, prefix, prompt-tuning, bitfit, ia3) or "
                             "prompt-finetune")
        raise ConfigError(f"{folder}: method '{method}' cannot be served")

    def _note_new_copy(self, what: str) -> None:
        if self._hosts:
            # Adapters of one PEFT method share a base copy; a second method needs another copy.
            log.warning("loading another copy of the base model", extra={"event": "base_copy", "method": what,
                                                                          "base_copies": self.hosts + 1})

    # -- prediction (inference thread) --------------------------------------------------------------------
    def predict(self, rows: Sequence[Row], hosts: Sequence[Any]) -> list[Prediction]:
        """Predictions for ``rows`` (``hosts[i]`` carries row i): one forward per host, rows in order."""
        out: list[Prediction | None] = [None] * len(rows)
        by_host: dict[int, list[int]] = {}
        for i, h in enumerate(hosts):
            by_host.setdefault(id(h), []).append(i)
        with torch.inference_mode():
            for idx in by_host.values():
                host = hosts[idx[0]]
                for i, p in zip(idx, host.predict([rows[i] for i in idx]), strict=True):
                    out[i] = p
        self._trim()  # on the inference thread, between passes
        return out  # type: ignore[return-value]
