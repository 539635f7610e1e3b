"""Parallel supervised transfer (slide 8): multi-task fine-tuning with one shared encoder and one
head per task. Each step trains on one task, drawn with probability ∝ n_task^(1/T):
T=1 is proportional sampling, larger T flattens towards uniform (temperature sampling).

It runs on accelerate in one process (device, mixed precision) with the engine's learning-rate schedule,
``epochs`` and dev selection; it does not checkpoint, and the engine's layer-wise rates, self-ensemble and
self-distillation are one-line errors here rather than silently ignored.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import DataConfig, TrainConfig
from ..data.loading import DataOptions, load_task
from ..errors import ConfigError
from ..evaluation.metrics import compute_metrics
from ..io import write_json
from ..methods.finetune import make_collate, pool, resolve_pooling
from ..models.loading import load_backbone
from ..training.checkpoint import trainable_state
from ..training.engine import effective_precision, get_accelerator
from ..training.optim import adamw, linear_schedule, optimizer_step
from ..training.seeding import set_seed, step_seed


@dataclass
class MultitaskConfig:
    tasks: list[str] = field(default_factory=list)
    model: str = "minilm-l6"
    seed: int = 13
    output: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: str = "proportional"  # proportional | temperature | uniform
    temperature: float = 2.0
    pooling: str = "auto"
    quiet: bool = False

    def validate(self) -> None:
        if len(self.tasks) < 2:
            raise ConfigError("multi-task training needs at least two tasks (--tasks a,b)")
        if self.sampling not in ("proportional", "temperature", "uniform"):
            raise ConfigError(f"sampling must be proportional, temperature or uniform, got '{self.sampling}'")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        self.train.validate()


def sampling_probabilities(sizes: list[int], rule: str, temperature: float) -> np.ndarray:
    t = {"proportional": 1.0, "uniform": math.inf}.get(rule, temperature)
    weights = np.ones(len(sizes)) if math.isinf(t) else np.asarray(sizes, dtype=float) ** (1.0 / t)
    return weights / weights.sum()


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, hidden: int, num_labels: dict[str, int], pooling: str) -> None:
        super().__init__()
        self.backbone, self.pooling = backbone, pooling
        self.heads = nn.ModuleDict({_key(t): nn.Linear(hidden, n) for t, n in num_labels.items()})

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        logits = self.heads[_key(task)](pool(hidden, attention_mask, self.pooling))
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


def _key(task: str) -> str:
    return task.replace(".", "_")  # ModuleDict keys cannot contain dots


def _check_supported(train: TrainConfig) -> None:
    """Options of the one-task engine this loop does not implement: an error, not a silent no-op."""
    unsupported = {"layer_decay": train.layer_decay is not None, "self_ensemble": train.self_ensemble != "none",
                   "self_distill": train.self_distill > 0}
    for name, set_ in unsupported.items():
        if set_:
            raise ConfigError(f"train.{name} is not supported by multitask (one shared encoder, one head per "
                              f"task); drop it, or train the tasks one at a time with `transferlm run`")


# data options that describe one task's own files or columns: with several tasks they have no single meaning.
PER_TASK_DATA = ("train_file", "dev_file", "test_file", "text_columns", "label_column", "labels", "format", "header")


def data_options(cfg: MultitaskConfig) -> DataOptions:
    """What every task is loaded with; a per-task file or column setting is an error, not silently unused."""
    for name in PER_TASK_DATA:
        if getattr(cfg.data, name) is not None:
            raise ConfigError(f"data.{name} is not supported by multitask (it describes one task's files, and "
                              "there are several); drop it, or give each task a folder under the data directory")
    return DataOptions(shots=cfg.data.shots, seed=cfg.seed, empty_text=cfg.data.empty_text,
                       max_test=cfg.data.max_test)


def total_steps(train: TrainConfig, sizes: list[int]) -> int:
    """max_steps, or ``epochs`` passes over all tasks' training batches together."""
    if train.epochs is None:
        return train.max_steps
    return max(1, math.ceil(train.epochs * sum(math.ceil(n / train.batch_size) for n in sizes)))


def multitask(cfg: MultitaskConfig) -> dict[str, Any]:
    cfg.validate()
    _check_supported(cfg.train)
    options = data_options(cfg)
    acc = get_accelerator(cfg.train.mixed_precision)
    if acc.num_processes > 1:  # each step draws one task: a per-process split of it is not implemented
        raise ConfigError("multitask runs in one process; start it with python, not torchrun/accelerate launch")
    set_seed(cfg.seed)
    loaded = {t: load_task(t, cfg.data.data_dir, options) for t in cfg.tasks}
    backbone = load_backbone(cfg.model)
    pooling = resolve_pooling(cfg.pooling, backbone)
    torch.manual_seed(cfg.seed)
    model = MultiTaskModel(backbone.model, backbone.hidden_size, {t: s.num_labels for t, (s, _) in loaded.items()},
                           pooling).to(acc.device)
    collate = {t: make_collate(backbone.tokenizer, s, cfg.train.max_length) for t, (s, _) in loaded.items()}
    sizes = [len(d.train) for _, d in loaded.values()]
    probs = sampling_probabilities(sizes, cfg.sampling, cfg.temperature)
    total = total_steps(cfg.train, sizes)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate,
                      weight_decay=cfg.train.weight_decay)
    scheduler = linear_schedule(optimizer, total, cfg.train.warmup_ratio)  # as the one-task engine
    model, optimizer = acc.prepare(model, optimizer)
    inner = acc.unwrap_model(model)

    def evaluate(task: str, examples: list) -> dict[str, float]:
        return _evaluate(model, task, loaded[task][0], examples, collate[task], cfg.train.eval_batch_size, acc)

    rng = np.random.RandomState(cfg.seed)
    cursors = {t: 0 for t in cfg.tasks}
    orders = {t: rng.permutation(len(loaded[t][1].train)) for t in cfg.tasks}
    best, best_score, history = None, -math.inf, []
    t0 = time.perf_counter()
    for step in tqdm(range(total), desc="multitask", disable=cfg.quiet, leave=False):
        model.train()
        torch.manual_seed(step_seed(cfg.seed, step, 0))
        task = cfg.tasks[rng.choice(len(cfg.tasks), p=probs)]
        spec, data = loaded[task]
        if cursors[task] >= len(data.train):
            orders[task], cursors[task] = rng.permutation(len(data.train)), 0
        idx = orders[task][cursors[task]:cursors[task] + cfg.train.batch_size]
        cursors[task] += len(idx)
        examples = [data.train[i] for i in idx]
        batch = {k: v.to(acc.device) for k, v in collate[task](examples).items()}
        labels = torch.tensor([e.label for e in examples], device=acc.device)
        with acc.autocast():
            logits = model(task, **batch).float()
            loss = F.mse_loss(logits, labels.float()) if spec.regression else F.cross_entropy(logits, labels.long())
        acc.backward(loss)
        if cfg.train.max_grad_norm > 0:  # 0 turns clipping off, as in the engine (clipping to 0 zeroes the step)
            acc.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer_step(acc, optimizer, scheduler)  # fp16: a skipped step leaves the schedule where it was
        optimizer.zero_grad(set_to_none=True)
        record: dict[str, Any] = {"step": step + 1, "task": task, "loss": float(loss.detach())}
        if (cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0) or step + 1 == total:
            dev = {t: evaluate(t, loaded[t][1].dev) for t in cfg.tasks}
            record["dev"] = dev
            score = float(np.mean([dev[t][loaded[t][0].metric] for t in cfg.tasks]))
            if score > best_score:  # select on the mean dev metric over tasks
                best_score = score
                best = trainable_state(inner) if cfg.train.select_on_dev else None
        history.append(record)
    train_seconds = time.perf_counter() - t0
    if best is not None:
        inner.load_state_dict(best, strict=False)
    results = {"tasks": {}, "model": cfg.model, "seed": cfg.seed, "sampling": cfg.sampling,
               "probabilities": dict(zip(cfg.tasks, probs.round(4).tolist(), strict=True)),
               "steps": total, "train_seconds": round(train_seconds, 3), "history": history, "config": asdict(cfg),
               "environment": {"device": str(acc.device), "precision": effective_precision(acc)}}
    for t in cfg.tasks:
        spec, data = loaded[t]
        results["tasks"][t] = {"primary_metric": spec.metric, "dev_metrics": evaluate(t, data.dev),
                               "metrics": evaluate(t, data.test) if data.test else {}}
    if cfg.output:
        write_json(Path(cfg.output) / "multitask.json", results)
    return results


@torch.no_grad()
def _evaluate(model: nn.Module, task: str, spec: Any, examples: list, collate: Any, batch_size: int,
              acc: Any) -> dict[str, float]:
    model.eval()
    preds = []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(acc.device) for k, v in collate(examples[i:i + batch_size]).items()}
        with acc.autocast():
            logits = model(task, **batch).float()
        preds.extend(logits.tolist() if spec.regression else logits.argmax(-1).tolist())
    return compute_metrics([e.label for e in examples], preds, regression=spec.regression, primary=spec.metric,
                           num_labels=spec.num_labels)
