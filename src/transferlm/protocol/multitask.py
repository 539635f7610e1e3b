"""Parallel supervised transfer (slide 8): multi-task fine-tuning with one shared encoder and one
head per task. Each step trains on one task, drawn with probability ∝ n_task^(1/T):
T=1 is proportional sampling, larger T flattens towards uniform (temperature sampling).

It runs on accelerate in one process (device, mixed precision) with the engine's learning-rate schedule,
``epochs`` and dev selection; the engine's layer-wise rates, self-ensemble and self-distillation are one-line
errors here rather than silently ignored.

With an ``output`` folder it writes ``multitask.json`` (metrics, history) and the (dev-selected) model in
``output/model/``: the shared encoder and its tokenizer in Hugging Face format, so ``transferlm run --model
output/model`` fine-tunes on a target task from it (MT-DNN style pre-finetuning), plus every task's head in
``heads.safetensors`` described by ``heads.json`` (``load_multitask_model`` reads both back). When the base model
has an LM head (a masked or causal LM), the folder holds the whole ``*ForMaskedLM``/``*ForCausalLM``: the trained
encoder with the base's own (untrained) LM head, so prompt methods (prompt-finetune, prompt-zero-shot, icl) start
from it too; a bare-encoder base (minilm-l6) gives the encoder alone, which prompt methods refuse. Every
``train.checkpoint_every`` steps it checkpoints to ``output/checkpoint/`` as the one-task engine does; a rerun
of the same config resumes there and ends with the same weights and history as an uninterrupted run, while a
checkpoint written under other settings or data is discarded. The checkpoint goes once the run is recorded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..config import DataConfig, TrainConfig
from ..data.loading import DataOptions, load_task
from ..data.tasks import TaskSpec
from ..errors import CheckpointError, ConfigError, ModelError
from ..evaluation.metrics import compute_metrics
from ..io import atomic_dir, check_output_dir, output_lock, write_json
from ..methods.finetune import make_collate, pool, resolve_pooling
from ..methods.prompting.common import prompt_head
from ..models.loading import Backbone, load_backbone
from ..training.checkpoint import (
    drop_stale_checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
    trainable_state,
)
from ..training.engine import effective_precision, get_accelerator
from ..training.optim import adamw, linear_schedule, optimizer_step
from ..training.seeding import set_seed, step_seed
from .run import config_fingerprint

log = logging.getLogger(__name__)
HEADS_FILE, HEADS_JSON = "heads.safetensors", "heads.json"


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
    resume: bool = True  # False: ignore a checkpoint in output and start over (--no-resume)

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


def _rng_state(rng: np.random.RandomState) -> list[Any]:
    name, keys, pos, has_gauss, cached = rng.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_rng_state(rng: np.random.RandomState, state: list[Any]) -> None:
    name, keys, pos, has_gauss, cached = state
    rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _restore(out_dir: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None,
                                      dict[str, torch.Tensor] | None] | None:
    """The checkpoint in ``out_dir`` loaded into model/optimizer/scheduler, or None; one that another config
    or data wrote is removed (resuming it would train on with the old settings under the new config)."""
    drop_stale_checkpoint(out_dir, fingerprint, "a multitask run with another config or data", logger=log)
    return load_checkpoint(out_dir, model, optimizer, scheduler)


def multitask(cfg: MultitaskConfig) -> dict[str, Any]:
    """Train one model on all of ``cfg.tasks``; with an output folder, locked (``io.output_lock``) from the end
    of the checks to the end of the run."""
    with contextlib.ExitStack() as held:
        return _multitask(cfg, held)


def _multitask(cfg: MultitaskConfig, held: contextlib.ExitStack) -> dict[str, Any]:
    cfg.validate()
    if cfg.output:
        check_output_dir(cfg.output)
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

    rng = np.random.RandomState(cfg.seed)
    cursors = {t: 0 for t in cfg.tasks}
    orders = {t: rng.permutation(len(loaded[t][1].train)) for t in cfg.tasks}
    start, best, best_score, history, seconds_before, resumed_from = 0, None, -math.inf, [], 0.0, None
    out_dir = Path(cfg.output) if cfg.output else None
    # Before the checkpoint is read: another process's would be resumed alongside it.
    held.enter_context(output_lock(out_dir))
    # What a checkpoint must match to be resumed, as run's: config, each task's data, the model's files.
    fingerprint = config_fingerprint(asdict(cfg), cfg.model, data={t: d.digests() for t, (_, d) in loaded.items()})
    if out_dir is not None and cfg.resume:
        restored = _restore(out_dir, fingerprint, model, optimizer, scheduler)
        if restored is not None:
            state, best, extra = restored
            start = resumed_from = state["step"]
            best_score, history, cursors = state["best_score"], state["history"], state["cursors"]
            seconds_before = float(state["train_seconds"])  # the run's time is the whole training's
            _set_rng_state(rng, state["rng"])
            orders = {t: extra[t].numpy() for t in cfg.tasks} if extra else orders
            if acc.scaler is not None and "scaler" in state:  # fp16's loss scale, grown over the steps taken
                acc.scaler.load_state_dict(state["scaler"])
    model, optimizer = acc.prepare(model, optimizer)
    inner = acc.unwrap_model(model)

    def evaluate(task: str, examples: list) -> dict[str, float]:
        return _evaluate(model, task, loaded[task][0], examples, collate[task], cfg.train.eval_batch_size, acc)

    t0 = time.perf_counter()
    every = cfg.train.checkpoint_every if out_dir is not None else 0  # no output: nowhere to checkpoint
    for step in tqdm(range(start, total), desc="multitask", disable=cfg.quiet, leave=False, initial=start,
                     total=total):
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
        done = step + 1
        record: dict[str, Any] = {"step": done, "task": task, "loss": float(loss.detach())}
        if (cfg.train.eval_every and done % cfg.train.eval_every == 0) or done == total:
            dev = {t: evaluate(t, loaded[t][1].dev) for t in cfg.tasks}
            record["dev"] = dev
            score = float(np.mean([dev[t][loaded[t][0].metric] for t in cfg.tasks]))
            if score > best_score:  # select on the mean dev metric over tasks
                best_score = score
                best = trainable_state(inner) if cfg.train.select_on_dev else None
        history.append(record)
        # The last step too, as the engine: a run killed in its final evaluations does not train again.
        if every and (done % every == 0 or done == total):
            save_checkpoint(out_dir, inner, optimizer, scheduler,
                            {"step": done, "best_score": best_score, "history": history, "seed": cfg.seed,
                             "fingerprint": fingerprint, "train_seconds": seconds_before + time.perf_counter() - t0,
                             "rng": _rng_state(rng), "cursors": cursors,
                             **({"scaler": acc.scaler.state_dict()} if acc.scaler is not None else {})},
                            best, {t: torch.from_numpy(o) for t, o in orders.items()})
    train_seconds = seconds_before + time.perf_counter() - t0
    if best is not None:
        inner.load_state_dict(best, strict=False)
    results = {"tasks": {}, "model": cfg.model, "seed": cfg.seed, "sampling": cfg.sampling,
               "probabilities": dict(zip(cfg.tasks, probs.round(4).tolist(), strict=True)),
               "steps": total, "resumed_from_step": resumed_from, "train_seconds": round(train_seconds, 3),
               "history": history, "config": asdict(cfg),
               "environment": {"device": str(acc.device), "precision": effective_precision(acc)}}
    for t in cfg.tasks:
        spec, data = loaded[t]
        results["tasks"][t] = {"primary_metric": spec.metric, "dev_metrics": evaluate(t, data.dev),
                               "metrics": evaluate(t, data.test) if data.test else {}}
    if out_dir is not None:
        save_multitask_model(out_dir / "model", inner, backbone.tokenizer, {t: s for t, (s, _) in loaded.items()},
                             lm=base_lm(cfg.model))
        results["model_dir"] = str(out_dir / "model")
        write_json(out_dir / "multitask.json", results)
        if not cfg.train.keep_checkpoint:  # recorded: the checkpoint (kept through the evaluations) goes
            remove_checkpoint(out_dir)
    return results


def base_lm(name: str) -> Backbone | None:
    """The base model ``name`` with its LM head (masked or causal), or None where it has none (a bare encoder such
    as minilm-l6): the saved folder then holds the encoder alone, as prompt methods' refusal expects."""
    try:
        head = prompt_head(name)
    except ConfigError:  # the zoo or its config.json says: an encoder without an LM head
        return None
    try:
        return load_backbone(name, head=head)
    except ModelError as e:
        # The bare model loaded from these same files, so this is a missing head (or no head class), not damage.
        log.info("base model %s has no usable %s head (%s); the saved model is the encoder alone, which prompt "
                 "methods refuse", name, head, e)
        return None


def with_trained_encoder(lm: nn.Module, encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``lm`` (the base with its LM head, changed in place) with the trained ``encoder`` in it: the
    base's LM head beside the trained encoder, plus the encoder weights the LM class lacks (BERT's pooler) under
    its prefix, so the folder loads as ``AutoModel`` with exactly the trained encoder, as before."""
    core = lm.base_model
    if core is lm:
        raise CheckpointError(f"{type(lm).__name__} has no separate encoder module to put the trained one in")
    trained = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    # load_state_dict copies into the existing tensors: an output layer tied to the input embeddings (BERT's
    # decoder, GPT-2's lm_head) follows the trained embeddings, as the Hugging Face class keeps it.
    result = core.load_state_dict(trained, strict=False)
    if result.missing_keys:
        raise CheckpointError(f"the trained encoder lacks weights of {type(lm).__name__} "
                              f"(e.g. {result.missing_keys[0]}); it is not the base model's architecture")
    lm.tie_weights()  # re-tied as from_pretrained leaves it, whatever load_state_dict did to the shared tensor
    return {**lm.state_dict(), **{f"{lm.base_model_prefix}.{k}": trained[k] for k in result.unexpected_keys}}


def save_multitask_model(folder: Path, model: MultiTaskModel, tokenizer: Any, specs: dict[str, TaskSpec],
                         lm: Backbone | None = None) -> None:
    """The shared encoder and its tokenizer in Hugging Face format (a model folder that ``load_backbone`` and
    ``run --model`` take) with every task's head beside it; written atomically, never half. With ``lm`` (the base
    with its LM head) the folder is that LM class with the trained encoder, so prompt methods load it too."""
    with atomic_dir(folder) as tmp:
        if lm is None:
            model.backbone.save_pretrained(tmp)
        else:
            # save_pretrained drops the tied duplicates (the output layer shared with the embeddings): safetensors.
            lm.model.save_pretrained(tmp, state_dict=with_trained_encoder(lm.model, model.backbone))
        tokenizer.save_pretrained(tmp)
        save_file({f"{t}.{k}": v.detach().cpu().contiguous() for t in specs
                   for k, v in model.heads[_key(t)].state_dict().items()}, str(tmp / HEADS_FILE))
        # lm_head: "mlm"/"causal" where prompt methods can load the folder, None for the encoder alone.
        write_json(tmp / HEADS_JSON, {"pooling": model.pooling, "lm_head": lm.kind if lm is not None else None,
                                      "tasks": {t: {"num_labels": s.num_labels, "labels": list(s.labels),
                                                    "regression": s.regression, "metric": s.metric}
                                                for t, s in specs.items()}})


def load_multitask_model(folder: str | Path) -> tuple[Backbone, MultiTaskModel]:
    """The backbone and the multi-task model (eval mode) that ``multitask`` saved in ``folder``."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / HEADS_JSON).read_text(encoding="utf-8"))
        state = load_file(str(folder / HEADS_FILE))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"{folder}: cannot read the multitask heads ({str(e).splitlines()[0]}); a multitask "
                              f"model folder holds {HEADS_FILE} and {HEADS_JSON}") from None
    backbone = load_backbone(str(folder))
    tasks = meta["tasks"]
    model = MultiTaskModel(backbone.model, backbone.hidden_size, {t: m["num_labels"] for t, m in tasks.items()},
                           meta["pooling"])
    try:
        for t in tasks:
            model.heads[_key(t)].load_state_dict({k: state[f"{t}.{k}"] for k in ("weight", "bias")})
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{folder / HEADS_FILE}: no fitting head for a task ({e})") from None
    return backbone, model.eval()


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
