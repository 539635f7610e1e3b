"""The loaded tasks: name -> adapter on a host, with a content version; one base copy per host.

A load has two steps. ``prepare`` does everything that leaves the served models alone: it checks the
folder, parses its configs, hashes its files, reads adapter weights and heads into CPU memory, tokenises
a prompt's template and label words, and builds any model copy of the task's own (or a new base copy);
the server runs it on a worker thread, beside the forward passes. ``commit`` puts the prepared task on
its host and registers it: it, prediction and freeing are blocking and must run on the inference
thread (the batcher's executor), so a task loaded while the server runs never races a forward pass, and
two loads of one name are decided there, one at a time. A task keeps the version
it was admitted with: replacing a task loads the new adapter under a new internal name and swaps the
mapping, so requests already queued finish on the old weights and say so. The old version is *retired*:
once no queued or running request uses it (the batcher knows), ``free`` deletes it from its host, and a
host left without tasks (a whole model copy) goes too. An adapter loads only onto the base model its run
recorded in ``results.json`` (equal shapes are not equal weights), unless ``allow_base_mismatch`` says so.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import re
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compat import slow_bf16_warning
from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..models.zoo import model_identity
from .config import PRECISIONS, check_task_name
from .hosts import ClassifierHost, FinetuneHost, Prediction, PromptHost, Row, label_names_of
from .memory import MemoryTrimmer

log = logging.getLogger("transferlm.serving")
DEFAULT_MAX_LENGTH = 128
DEFAULT_PAD_RATIO = 1.3
PROMPT_METHODS = ("prompt-finetune",)


class UnknownTaskError(ConfigError):
    """A request or admin call named a task that is not loaded."""


class TaskExistsError(ConfigError):
    """An admin call would load a task under a name already taken (without ``replace``)."""


class BaseMismatchError(ConfigError):
    """A task's run recorded another base model than the one served (and no override was given)."""


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


@dataclass
class PreparedLoad:
    """A task read from its folder by ``Registry.prepare``, not on any served model yet (``Registry.commit``)."""

    name: str
    folder: Path
    replace: bool
    method: str
    kind: str  # "classifier" | "prompt"
    spec: TaskSpec
    max_length: int
    version: str
    model: str | None  # the base model the run recorded
    key: tuple[str, ...] | None  # the shared host it goes on; None: a model copy of its own
    host: Any = field(repr=False)  # the host prepared against (a new copy if the key had none)
    task: Any = field(repr=False)  # what ``host.attach`` takes


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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None


def run_config_of(folder: Path) -> dict[str, Any]:
    """The run config saved beside ``folder`` (``<output>/results.json``), or {} when absent."""
    results = folder.parent / "results.json"
    if not results.is_file():
        return {}
    data = _read_json(results)
    config = data.get("config") if isinstance(data, dict) else None
    return config if isinstance(config, dict) else {}


@contextlib.contextmanager
def _folder_errors(folder: Path) -> Iterator[None]:
    """A malformed folder (a method.json of the wrong shape, a missing or truncated file) is the caller's input,
    not a server bug: a one-line ConfigError naming the folder (the app answers 400)."""
    try:
        yield
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{folder}: not a loadable task folder ({type(e).__name__}: {detail}); point at a "
                          "run's <output>/model folder written with save_model: true") from None


def _on_shared_base(method: str, meta: dict[str, Any]) -> bool:
    """Whether a task's weights sit on the served base model (not on a whole model copy of its own)."""
    from ..methods.efficient import PEFT_METHODS

    if method in PROMPT_METHODS:
        return ((meta.get("config") or {}).get("peft") or {}).get("name") is not None
    return method in PEFT_METHODS


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
                 pad_ratio: float | None = None, precision: str = "fp32", allow_base_mismatch: bool = False) -> None:
        self.model = model
        self.allow_base_mismatch = allow_base_mismatch  # load adapters recorded on another base (with a warning)
        self.device = resolve_device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        self.precision = precision
        if warning := slow_bf16_warning(precision, self.device, "serve --precision bf16"):
            log.warning(warning, extra={"event": "slow_bf16"})
        self.max_length = max_length
        # Length-bucketed forward passes (None: auto): on a CPU a pass costs ~ its padded tokens, so similar
        # lengths go together; a GPU prefers one big pass. 0 turns bucketing off.
        if pad_ratio is None:
            pad_ratio = DEFAULT_PAD_RATIO if self.device.type == "cpu" else 0.0
        self.pad_ratio = pad_ratio
        self._hosts: dict[tuple[str, ...], ClassifierHost | PromptHost] = {}
        self._tasks: dict[str, TaskEntry] = {}
        self._retired: list[TaskEntry] = []  # replaced versions not yet freed (requests may still use them)
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
        """How many model copies are loaded: one per PEFT method and head kind, plus one per full-model task."""
        live = [*self._hosts.values(), *(e.host for e in (*self._tasks.values(), *self._retired))]
        return len({id(h) for h in live})

    @property
    def retiring(self) -> list[str]:
        """Adapters of replaced versions that are not freed yet (a snapshot; any thread may read it)."""
        return [e.adapter for e in list(self._retired)]

    # -- loading ---------------------------------------------------------------------------------------------
    def load(self, name: str, folder: str | Path, *, replace: bool = False,
             allow_base_mismatch: bool | None = None) -> TaskEntry:
        """Load the saved task in ``folder`` as ``name``; ``allow_base_mismatch`` None: the registry's setting.

        Both steps on the calling thread: for start-up, before any forward pass runs.
        """
        return self.commit(self.prepare(name, folder, replace=replace, allow_base_mismatch=allow_base_mismatch))

    def prepare(self, name: str, folder: str | Path, *, replace: bool = False,
                allow_base_mismatch: bool | None = None) -> PreparedLoad:
        """Read and check the task in ``folder`` (any thread: it reads the registry, edits no served model).

        A name already taken fails here, before any file is read; ``commit`` checks again, as another load of
        the name may commit in between.
        """
        check_task_name(name)
        self._check_free(name, replace)
        path = Path(folder).expanduser()
        allow = self.allow_base_mismatch if allow_base_mismatch is None else allow_base_mismatch
        with _folder_errors(path):
            return self._prepare(name, path, replace, allow)

    def commit(self, prepared: PreparedLoad) -> TaskEntry:
        """Put a prepared task on its host and serve it (inference thread: it edits the shared base model)."""
        self._check_free(prepared.name, prepared.replace)
        with _folder_errors(prepared.folder):
            return self._commit(prepared)

    def _check_free(self, name: str, replace: bool) -> None:
        if name in self._tasks and not replace:
            raise TaskExistsError(f"task '{name}' is already loaded (version {self._tasks[name].version}); "
                                  "pass replace: true to load a new version")

    def _prepare(self, name: str, folder: Path, replace: bool, allow_base_mismatch: bool) -> PreparedLoad:
        meta_path = folder / "method.json"
        if not meta_path.is_file():
            raise ConfigError(f"{folder} is not a saved task model (no method.json); point at a run's "
                              "<output>/model folder written with save_model: true")
        meta = _read_json(meta_path)
        if not isinstance(meta, dict):
            raise ConfigError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}; point at a run's "
                              "<output>/model folder written with save_model: true")
        method = str(meta.get("method", "?"))
        spec = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in (meta.get("task") or {}).items()
                           if k in TaskSpec.__dataclass_fields__}) if meta.get("task") else None
        if spec is None:
            raise ConfigError(f"{meta_path}: no task description (saved by an older transferlm?)")
        run_cfg = run_config_of(folder)
        recorded = run_cfg.get("model") or None
        if _on_shared_base(method, meta):
            self._check_base(name, folder, recorded, allow_base_mismatch)
        # What the run cut inputs to (method.json; older folders: train.max_length, which the host cuts as the run
        # did for a soft prompt); the host also keeps a --max-length override within the position table.
        max_length = int(self.max_length or meta.get("max_length") or (run_cfg.get("train") or {}).get("max_length")
                         or DEFAULT_MAX_LENGTH)
        version = adapter_version(folder)
        kind, host, key = self._host_for(folder, method, meta, self.model or recorded)
        task = host.prepare(folder, meta, max_length=max_length)
        max_length = host.max_length_of(task, max_length)
        return PreparedLoad(name=name, folder=folder, replace=replace, method=method, kind=kind, spec=spec,
                            max_length=max_length, version=version, model=recorded, key=key, host=host, task=task)

    def _commit(self, p: PreparedLoad) -> TaskEntry:
        if self.model is None:
            self.model = p.model  # the first task names the base model when the server was given none
        host, new_key = self._shared_host(p)
        self._loads += 1
        adapter = f"{re.sub(r'[^A-Za-z0-9_-]', '_', p.name)}-v{self._loads}"
        try:
            host.attach(adapter, p.task)
        except Exception:
            if new_key is None and any(h is host for h in self._hosts.values()):
                with contextlib.suppress(Exception):  # whatever half of it got onto a shared host (the error stands)
                    host.delete_adapter(adapter)
            raise
        if new_key is not None:
            self._hosts[new_key] = host  # a new shared copy joins once its first task loaded
        entry = TaskEntry(name=p.name, folder=p.folder, adapter=adapter, method=p.method, kind=p.kind,
                          label_names=label_names_of(p.spec), regression=p.spec.regression, pair=p.spec.is_pair,
                          max_length=p.max_length, version=p.version, loaded_at=time.time(), host=host)
        old = self._tasks.get(p.name)
        self._tasks[p.name] = entry  # the swap: later requests get this version
        if old is not None:
            self._retired.append(old)  # freed by ``free`` once no admitted request uses it
        log.info("task loaded", extra={"event": "task_loaded", "task": p.name, "version": p.version,
                                       "method": p.method, "kind": p.kind, "folder": str(p.folder),
                                       "base_copies": self.hosts, "replaced": old.version if old is not None else None})
        return entry

    def _shared_host(self, p: PreparedLoad) -> tuple[Any, tuple[str, ...] | None]:
        """The host to attach to, and the key to register it under if it is not registered yet.

        The shared hosts may have changed since ``prepare``: another load may have registered a copy for the
        key (use that one; the copy prepared here is dropped), or its host's last task may have been freed
        (the prepared host is still a whole base copy: it joins again).
        """
        if p.key is None:
            return p.host, None
        registered = self._hosts.get(p.key)
        if registered is None:
            return p.host, p.key
        if registered is not p.host:
            log.info("a base copy was registered during the load: the one prepared for it is dropped",
                     extra={"event": "base_copy_dropped", "task": p.name, "host": "/".join(p.key)})
        return registered, None

    # -- retiring replaced versions (inference thread) --------------------------------------------------------
    def free(self, adapters: Collection[str]) -> int:
        """Delete the retired ``adapters`` from their hosts; the caller knows no request uses them any more.

        Names that are not retired (or already freed) are ignored. A host left without tasks is dropped, so a
        whole model copy goes with its last task. Returns how many were freed.
        """
        wanted = set(adapters)
        done = [e for e in self._retired if e.adapter in wanted]
        if not done:
            return 0
        self._retired = [e for e in self._retired if e.adapter not in wanted]
        collect, freed = False, 0
        while done:
            entry = done.pop()
            self._discard(entry.host, entry.adapter)
            if not entry.host.adapters:
                # A shared PEFT copy holds reference cycles (wrapper <-> model, forward hooks): collect it below.
                collect |= self._drop_host(entry.host)
            log.info("adapter freed", extra={"event": "adapter_freed", "task": entry.name, "version": entry.version,
                                             "adapter": entry.adapter, "base_copies": self.hosts})
            freed += 1
        del entry  # the last reference to a dropped host must go before the collection
        if collect:
            gc.collect()
        return freed

    def free_unused(self, in_use: Collection[str] = ()) -> int:
        """``free`` every retired adapter not named in ``in_use`` (the adapters of admitted requests)."""
        busy = set(in_use)
        return self.free([a for a in self.retiring if a not in busy])

    def _discard(self, host: Any, adapter: str) -> None:
        try:
            host.delete_adapter(adapter)
        except Exception:  # never stop serving over a failed deletion: log it, the memory stays taken
            log.exception("could not free an adapter", extra={"event": "free_error", "adapter": adapter})

    def _drop_host(self, host: Any) -> bool:
        keys = [k for k, h in self._hosts.items() if h is host]
        for k in keys:
            del self._hosts[k]
            log.info("model copy released", extra={"event": "base_copy_released", "host": "/".join(k)})
        return bool(keys)

    def _host_for(self, folder: Path, method: str, meta: dict[str, Any],
                  base: str | None) -> tuple[str, Any, tuple[str, ...] | None]:
        """The host for a task: (kind, host, the key of the shared host it goes on; None: its own copy).

        A shared host not loaded yet is built here, as a candidate: ``commit`` registers it. Runs in ``prepare``,
        off the inference thread: it only reads ``_hosts`` (a dict lookup is atomic), and a model it builds is
        new, not served yet.
        """
        from ..methods.efficient import PEFT_METHODS
        from ..models.loading import load_backbone

        if method == "finetune":
            self._note_own_copy(method, folder)
            return "classifier", FinetuneHost(folder, self.device, self.pad_ratio), None
        if method in PEFT_METHODS:
            key: tuple[str, ...] = ("classifier", method)
            if (shared := self._hosts.get(key)) is not None:
                return "classifier", shared, key
            self._note_new_copy(method)
            return "classifier", ClassifierHost(load_backbone(self._base(folder, base), head="base"), method, self.device,
                                                self.pad_ratio), key
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
                self._note_own_copy(method, folder)
                return "prompt", PromptHost(load_backbone(str(folder / "backbone"), head=lm), None, self.device), None
            if not (folder / "adapter").is_dir():
                raise ConfigError(f"{folder}: prompt-finetune with peft {peft} but no adapter/ folder")
            key = ("prompt", lm, peft)
            if (shared := self._hosts.get(key)) is not None:
                return "prompt", shared, key
            self._note_new_copy(f"prompt/{peft}")
            return "prompt", PromptHost(load_backbone(self._base(folder, base), head=lm), peft, self.device), key
        raise ConfigError(f"{folder}: method '{method}' cannot be served (servable: finetune, prompt-finetune, "
                          f"{', '.join(PEFT_METHODS)})")

    def _check_base(self, name: str, folder: Path, recorded: str | None, allow: bool) -> None:
        """Refuse (or, with ``allow``, warn about) an adapter whose run recorded another base model."""
        if not recorded or not self.model or model_identity(recorded) == model_identity(self.model):
            return  # nothing recorded (an older run): the shape check in load_task_adapter still applies
        if not allow:
            raise BaseMismatchError(
                f"task '{name}': {folder} was trained on base model '{recorded}' ({folder.parent / 'results.json'}) "
                f"but this server serves '{self.model}'; serve it with --model {recorded}, or set "
                "allow_base_mismatch (--allow-base-mismatch, or in the POST /v1/tasks body) to load it anyway")
        log.warning("loading a task trained on another base model (allow_base_mismatch)",
                    extra={"event": "base_mismatch", "task": name, "folder": str(folder), "trained_on": recorded,
                           "serving": self.model})

    @staticmethod
    def _base(folder: Path, model: str | None) -> str:
        if not model:
            raise ConfigError(f"no base model given and {folder.parent / 'results.json'} does not name one; "
                              "pass --model")
        return model

    def _note_new_copy(self, what: str) -> None:
        if self.hosts:
            # Adapters of one PEFT method share a base copy; a second method needs another copy.
            log.warning("loading another copy of the base model", extra={"event": "base_copy", "method": what,
                                                                          "base_copies": self.hosts + 1})

    def _note_own_copy(self, method: str, folder: Path) -> None:
        # A run that trained the whole model is its own model: nothing is shared with the base copy or other tasks.
        log.warning("loading a full model copy for one task (it does not share the base weights)",
                    extra={"event": "own_copy", "method": method, "folder": str(folder),
                           "base_copies": self.hosts + 1})

    # -- prediction (inference thread) --------------------------------------------------------------------
    def predict(self, rows: Sequence[Row], hosts: Sequence[Any]) -> list[Prediction]:
        """Predictions for ``rows`` (``hosts[i]`` carries row i): one forward per host, rows in order."""
        out: list[Prediction | None] = [None] * len(rows)
        by_host: dict[int, list[int]] = {}
        for i, h in enumerate(hosts):
            by_host.setdefault(id(h), []).append(i)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), autocast:
            for idx in by_host.values():
                host = hosts[idx[0]]
                for i, p in zip(idx, host.predict([rows[i] for i in idx]), strict=True):
                    out[i] = p
        self._trim()  # on the inference thread, between passes
        return out  # type: ignore[return-value]
