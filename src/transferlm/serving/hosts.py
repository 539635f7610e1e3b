"""Hosts: one copy of a base model carrying many tasks, and the forward pass over a batch of rows.

A :class:`ClassifierHost` is a base encoder/decoder with one PEFT method's task adapters and their
classification heads (``load_task_adapter``); rows of different tasks share a forward pass, each row
with its own adapter (on a CPU, rows of very different lengths go to separate passes: ``length_chunks``).
A :class:`FinetuneHost` is a fully fine-tuned run: its own model and head, one task. A :class:`PromptHost`
is a base LM (MLM or causal head) whose tasks are a template and verbalizer, each optionally with its own
PEFT adapter; its rows run per task (the answer slots and label words differ per task). Every host can
``delete_adapter`` a task (a replaced version, once no request uses it).

A task loads in two steps: ``prepare`` reads and checks its files, weights and prompt into memory and
never touches the host's model, so any thread may run it while forward passes go on; ``attach`` puts the
prepared task on the model. ``attach``, ``predict`` and ``delete_adapter`` are blocking and run on the
server's single inference thread.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..models.loading import Backbone


@dataclass(frozen=True)
class Prediction:
    """One row's answer: class probabilities (by label name), or a score for regression tasks."""

    label: str | None
    probabilities: dict[str, float] | None = None
    score: float | None = None


@dataclass
class Row:
    """One input of one request, bound to the task version it was admitted with."""

    adapter: str  # the adapter's name on its host (unique per loaded version)
    example: Example
    max_length: int
    label_names: tuple[str, ...]
    regression: bool


def label_names_of(spec: TaskSpec) -> tuple[str, ...]:
    if spec.regression:
        return ()
    return tuple(spec.label_names) if len(spec.label_names) == len(spec.labels) else tuple(spec.labels)


def _predictions(scores: torch.Tensor, rows: Sequence[Row], log_probs: bool) -> list[Prediction]:
    out = []
    scores = scores.float().cpu()
    for s, row in zip(scores, rows, strict=True):
        if row.regression:
            out.append(Prediction(label=None, score=float(s.reshape(-1)[0])))
            continue
        p = s.exp() if log_probs else s.softmax(-1)
        probs = dict(zip(row.label_names, (float(x) for x in p), strict=True))
        out.append(Prediction(label=row.label_names[int(p.argmax())], probabilities=probs))
    return out


class ClassifierHost:
    """A base model with one PEFT method's task adapters and heads (:class:`TaskModel`)."""

    kind = "classifier"

    def __init__(self, backbone: Backbone, method: str, device: torch.device, pad_ratio: float | None = None) -> None:
        self.backbone, self.method, self.device, self.pad_ratio = backbone, method, device, pad_ratio
        self.model: Any = None  # TaskModel, made by the first load
        backbone.model.to(device)

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    @property
    def mixes(self) -> bool:
        """Whether rows of different tasks may share one forward pass (not IA3: peft's layers cannot)."""
        return bool(self.model is not None and self.model.backbone.mixed_batches)

    @property
    def adapters(self) -> list[str]:
        """The tasks (adapter names) loaded here."""
        return [] if self.model is None else self.model.task_names

    def prepare(self, folder: Path, meta: dict[str, Any], *, max_length: int) -> Any:
        """The task's adapter weights and head, read into CPU memory (any thread: the model is not touched)."""
        from ..methods.efficient import read_task_adapter

        return read_task_adapter(folder)

    def max_length_of(self, prepared: Any, max_length: int) -> int:
        """The tokens per input of a prepared task: ``max_length`` cut as its run cut it (a soft prompt's room)."""
        from ..methods.efficient.method import fit_positions

        return fit_positions(self.backbone.model, self.method, prepared.adapter.config, max_length)

    def attach(self, adapter: str, prepared: Any) -> None:
        """Put a prepared task on the base model as ``adapter`` (inference thread)."""
        from ..methods.efficient import attach_task_adapter

        self.model = attach_task_adapter(prepared, self.backbone, adapter)

    def delete_adapter(self, adapter: str) -> None:
        """Free task ``adapter`` (its adapter weights and head); the other tasks answer exactly as before."""
        if self.model is None:
            raise ConfigError(f"task '{adapter}' is not loaded; loaded tasks: none")
        self.model.delete_task(adapter)

    def _logits(self, inputs: dict[str, torch.Tensor], names: list[str]) -> Sequence[torch.Tensor]:
        return self.model(**inputs, tasks=names)

    def encode(self, rows: Sequence[Row]) -> list[dict[str, list[int]]]:
        """Tokenise as training did (``make_collate``), in groups of equal max_length and pairing."""
        encoded: list[dict[str, list[int]]] = [{}] * len(rows)
        groups: dict[tuple[int, bool], list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            groups[(r.max_length, r.example.text_b is not None)].append(i)
        keep = ("input_ids", "attention_mask", "token_type_ids")
        for (max_length, pair), idx in groups.items():
            a = [rows[i].example.text_a for i in idx]
            b = [rows[i].example.text_b for i in idx] if pair else None
            enc = self.tokenizer(a, b, truncation=True, max_length=max_length)
            for j, i in enumerate(idx):
                encoded[i] = {k: enc[k][j] for k in keep if k in enc}
        return encoded

    def predict(self, rows: Sequence[Row]) -> list[Prediction]:
        encoded = self.encode(rows)
        names = [r.adapter for r in rows]
        if self.mixes:
            groups = [list(range(len(rows)))]
        else:  # IA3: one forward per task
            groups = [[i for i, n in enumerate(names) if n == name] for name in dict.fromkeys(names)]
        out: list[Prediction | None] = [None] * len(rows)
        for idx in groups:
            for chunk in length_chunks([len(encoded[i]["input_ids"]) for i in idx], self.pad_ratio):
                sel = [idx[j] for j in chunk]
                batch = self.tokenizer.pad([encoded[i] for i in sel], return_tensors="pt")
                logits = self._logits({k: v.to(self.device) for k, v in batch.items()}, [names[i] for i in sel])
                for i, t in zip(sel, logits, strict=True):
                    out[i] = _predictions(t.reshape(1, -1), [rows[i]], log_probs=False)[0]
        return out  # type: ignore[return-value]


class FinetuneHost(ClassifierHost):
    """A fully fine-tuned run (method ``finetune``): its own copy of the model and its head, serving one task."""

    def __init__(self, folder: Path, device: torch.device, pad_ratio: float | None = None) -> None:
        from ..methods.finetune import load_finetuned

        backbone, self.classifier = load_finetuned(folder)
        super().__init__(backbone, "finetune", device, pad_ratio)
        self.classifier.to(device)
        self.task: str | None = None

    @property
    def adapters(self) -> list[str]:
        return [self.task] if self.task is not None else []

    @property
    def mixes(self) -> bool:
        return True  # one task: every row takes the same weights

    def prepare(self, folder: Path, meta: dict[str, Any], *, max_length: int) -> Any:
        return None  # the whole model was read when this host was made

    def max_length_of(self, prepared: Any, max_length: int) -> int:
        return max_length

    def attach(self, adapter: str, prepared: Any) -> None:
        if self.task is not None:
            raise ConfigError(f"this finetune model already serves task '{self.task}'")
        self.task = adapter

    def delete_adapter(self, adapter: str) -> None:
        if adapter != self.task:
            raise ConfigError(f"task '{adapter}' is not loaded; loaded tasks: {self.task or 'none'}")
        self.task = None  # the model goes with the last reference to this host

    def _logits(self, inputs: dict[str, torch.Tensor], names: list[str]) -> Sequence[torch.Tensor]:
        logits = self.classifier(**inputs)
        return logits[:, None] if logits.dim() == 1 else logits  # regression: one score per row


def length_chunks(lengths: Sequence[int], pad_ratio: float | None) -> list[list[int]]:
    """Positions of ``lengths`` in forward passes whose padded tokens stay within ``pad_ratio`` x real tokens.

    On a CPU a forward pass costs about its padded token count, so one long input in a batch of short
    ones would make the whole batch pay for its length; sorted by length, similar rows share a pass.
    ``None`` or 0: everything in one pass (what a GPU prefers).
    """
    if not pad_ratio or len(lengths) <= 1:
        return [list(range(len(lengths)))]
    chunks: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n = lengths[i]  # ascending: the longest so far
        if cur and n * (len(cur) + 1) > pad_ratio * (tokens + n):
            chunks.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += n
    chunks.append(cur)
    return chunks


@dataclass
class _PromptTask:
    setup: Any  # prompts.build.PromptSetup


@dataclass
class _PreparedPrompt:
    """A prompt task read and tokenised off the inference thread, waiting for ``PromptHost.attach``."""

    spec: TaskSpec
    parts: Any  # prompts.build.PromptParts
    adapter: Any  # methods.efficient.core.SavedAdapter, or None for a task without a PEFT adapter
    max_length: int
    options: dict[str, Any]  # the run's prompt options (calibration, answer search, ...)


@dataclass
class PromptHost:
    """A base LM (with its MLM or causal head) serving prompt-based tasks: template + verbalizer per task.

    ``method`` is the PEFT method of its adapters (one per base copy, as for classifiers); ``None`` for a
    task whose run fine-tuned the whole LM (its own copy, loaded from the run's ``backbone/``).
    """

    backbone: Backbone
    method: str | None
    device: torch.device
    lm: Any = None
    tasks: dict[str, _PromptTask] = field(default_factory=dict)
    kind: str = "prompt"

    def __post_init__(self) -> None:
        self.backbone.model.to(self.device)
        self.lm = self.backbone.model

    def prepare(self, folder: Path, meta: dict[str, Any], *, max_length: int) -> _PreparedPrompt:
        """Check the run's prompt options, read its adapter and tokenise its template and label words.

        The template and verbalizer are tokenised with a fresh tokenizer read from the base model's folder:
        this runs beside forward passes that use the host's, and a fast tokenizer used by two threads at once
        may fail ("Already borrowed").
        """
        from ..methods.efficient import _info
        from ..models.loading import load_tokenizer
        from ..prompts.build import prompt_parts

        cfg = meta.get("config") or {}
        if cfg.get("demonstrations"):
            raise ConfigError(f"{folder}: this prompt model reads demonstrations drawn from its training set, "
                              "which a saved model does not carry; serve a run without demonstrations")
        peft = cfg.get("peft") or None
        if peft and peft.get("train_lm_head"):
            raise ConfigError(f"{folder}: the run trained the LM head with its adapter (peft.train_lm_head), but "
                              "only the adapter was saved; it cannot be served faithfully")
        saved = _info(self.method).backbone.read_adapter(folder / "adapter") if self.method is not None else None
        spec = TaskSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["task"].items()
                           if k in {f.name for f in dataclasses.fields(TaskSpec)}})
        own = dataclasses.replace(self.backbone, tokenizer=load_tokenizer(self.backbone.path, trust_remote_code=False))
        parts = prompt_parts(own, spec, template=meta["template"], label_words=meta["label_words"],
                             multi_token=cfg.get("multi_token", "mean"), aggregate=cfg.get("aggregate", "mean"),
                             poles=cfg.get("poles"))
        options = {"calibrate": bool(cfg.get("calibrate", False)), "content_free": cfg.get("content_free", "N/A"),
                   "search": cfg.get("answer_search", "argmax")}
        if saved is not None:  # a soft prompt takes positions: cut inputs as the run did
            from ..methods.efficient.method import fit_positions

            max_length = fit_positions(self.backbone.model, self.method, saved.config, max_length)
        return _PreparedPrompt(spec, parts, saved, max_length, options)

    def max_length_of(self, prepared: _PreparedPrompt, max_length: int) -> int:
        return prepared.max_length

    def attach(self, adapter: str, prepared: _PreparedPrompt) -> None:
        """Load the prepared adapter onto the LM and hook the task's verbalizer on its head (inference thread)."""
        from ..methods.efficient import PeftBackbone, _info
        from ..prompts.build import assemble_prompt

        if self.method is not None:
            if not isinstance(self.lm, PeftBackbone):  # the first adapter wraps the base LM once
                self.lm = _info(self.method).backbone(self.lm, tokenizer=self.backbone.tokenizer)
            self.lm.attach_adapter(adapter, prepared.adapter)
            self.lm.requires_grad_(False)
        # Back to the host's tokenizer (same files): requests tokenise on this thread, and the one read for
        # ``prepare`` is not kept per task.
        prepared.parts.encoder.tok = self.backbone.tokenizer
        view = dataclasses.replace(self.backbone, model=self.lm)
        setup = assemble_prompt(view, prepared.spec, prepared.parts, max_length=prepared.max_length,
                                **prepared.options)
        setup.model.eval()
        self.tasks[adapter] = _PromptTask(setup)

    @property
    def adapters(self) -> list[str]:
        return list(self.tasks)

    def delete_adapter(self, adapter: str) -> None:
        """Free task ``adapter``: its prompt setup (and the hook it put on the LM head) and its PEFT adapter."""
        from ..methods.efficient import PeftBackbone

        on_lm = isinstance(self.lm, PeftBackbone) and adapter in self.lm.configs
        task = self.tasks.pop(adapter, None)
        if task is None and not on_lm:
            raise ConfigError(f"task '{adapter}' is not loaded; loaded tasks: {', '.join(self.tasks) or 'none'}")
        if task is not None:
            # The verbalizer's pre-hook on the (shared) LM head holds the task's whole setup, and would keep
            # running on every forward pass; it also ties the LM to the setup in a reference cycle.
            task.setup.model.remove_hook()
        if on_lm:
            self.lm.delete_adapter(adapter)

    def predict(self, rows: Sequence[Row]) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(rows)
        names = [r.adapter for r in rows]
        for name in dict.fromkeys(names):  # answer slots and label words differ per task: one pass each
            idx = [i for i, n in enumerate(names) if n == name]
            setup = self.tasks[name].setup
            if self.method is not None:
                self.lm.set_adapter(name)
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                     for k, v in setup.collate([rows[i].example for i in idx]).items()}
            scores = setup.model(**batch)
            sub = [rows[i] for i in idx]
            preds = _predictions(scores[:, None] if sub[0].regression else scores, sub, log_probs=True)
            for i, p in zip(idx, preds, strict=True):
                out[i] = p
        return out  # type: ignore[return-value]
