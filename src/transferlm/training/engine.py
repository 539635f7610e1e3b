"""The training engine: one loop for every method, on accelerate.

It runs single-process on CPU or GPU and unchanged under ``accelerate launch`` or
``torchrun`` with several processes. Each optimisation step takes one *global* batch
(the same examples whatever the number of processes); each process computes its share
and the loss is scaled so the averaged gradient equals the single-process gradient.
Data order and dropout are functions of (seed, step), so a run killed and resumed from
its last checkpoint takes exactly the same steps as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from ..compat import new_accelerator, slow_bf16_warning
from ..config import TrainConfig
from ..data.example import Example
from ..data.tasks import TaskSpec
from ..errors import ConfigError
from ..evaluation.metrics import compute_metrics
from ..methods.base import Prepared
from .checkpoint import (
    drop_stale_checkpoint,
    load_checkpoint,
    load_trainable,
    remove_checkpoint,
    save_checkpoint,
    trainable_state,
)
from .ensemble import ParameterAverage, SelfDistillation, load_into
from .eval_resume import PartialPredictions, evaluation_key
from .optim import adamw, linear_schedule, optimizer_step
from .param_groups import build_param_groups
from .seeding import set_seed, step_seed

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitResult:
    steps: int
    best_step: int | None
    best_dev: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int | None = None


@dataclass
class Predictions:
    predictions: np.ndarray
    scores: np.ndarray  # probabilities (classification) or values (regression)
    metrics: dict[str, float]
    seconds: float


def inference_scope(model: torch.nn.Module) -> AbstractContextManager[Any]:
    """The model's own context for one evaluation pass of fixed weights (PromptModel reuses shared prefixes)."""
    scope = getattr(model, "inference_scope", None)
    return scope() if callable(scope) else nullcontext()


def get_accelerator(mixed_precision: str = "no") -> Accelerator:
    acc = new_accelerator(mixed_precision, cpu=not torch.cuda.is_available())
    if warning := slow_bf16_warning(mixed_precision, acc.device, "train.mixed_precision=bf16"):
        log.warning(warning)
    if mixed_precision == "fp16" and not acc.native_amp:
        # accelerate has no fp16 autocast off CUDA: the run trains in fp32, which results.json must not hide.
        log.warning("train.mixed_precision=fp16 on %s: accelerate runs fp16 only on GPUs, so this run trains in "
                    "fp32 (results.json records precision fp32); use bf16 or no here", acc.device)
    return acc


def effective_precision(acc: Accelerator) -> str:
    """The precision a run actually computes in: fp16/bf16 only where autocast is on."""
    return acc.mixed_precision if acc.mixed_precision != "no" and acc.native_amp else "fp32"


class Engine:
    def __init__(self, prepared: Prepared, spec: TaskSpec, cfg: TrainConfig, *, seed: int,
                 out_dir: Path | None = None, quiet: bool = False, resume: bool = True,
                 accelerator: Accelerator | None = None, fingerprint: str | None = None) -> None:
        """``fingerprint``: what the training depends on (config, method settings, data), recorded in each
        checkpoint; a checkpoint written under another one is not resumed but started over."""
        self.prepared, self.spec, self.cfg, self.seed = prepared, spec, cfg, seed
        self.out_dir, self.quiet, self.resume, self.fingerprint = out_dir, quiet, resume, fingerprint
        self.acc = accelerator or get_accelerator(cfg.mixed_precision)
        self.model = prepared.model.to(self.acc.device)
        self.loss_hooks: list[Callable[..., torch.Tensor]] = []

    # -- loss -------------------------------------------------------------------------------------------
    def per_example_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.spec.regression:
            return F.mse_loss(logits.float(), labels.float(), reduction="none")
        return F.cross_entropy(logits.float(), labels.long(), reduction="none")

    # -- training ---------------------------------------------------------------------------------------
    def total_steps(self, n_train: int) -> int:
        if self.cfg.epochs is not None:
            return max(1, math.ceil(self.cfg.epochs * math.ceil(n_train / self.cfg.batch_size)))
        return self.cfg.max_steps

    def _batch_indices(self, step: int, n: int) -> list[int]:
        per_epoch = math.ceil(n / self.cfg.batch_size)
        epoch, pos = divmod(step, per_epoch)
        order = np.random.RandomState((self.seed * 7_777 + epoch) % (2**32)).permutation(n)
        return order[pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size].tolist()

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = self.prepared.param_groups
        if groups is None:
            groups = build_param_groups(self.model, getattr(self.model, "backbone", None), self.cfg.learning_rate,
                                        self.cfg.weight_decay, self.cfg.layer_decay)
        groups = [g for g in groups if g["params"]]
        return adamw(groups, lr=self.cfg.learning_rate)

    def _ensemble(self, total: int) -> tuple[ParameterAverage | None, SelfDistillation | None]:
        cfg = self.cfg
        kind = cfg.self_ensemble
        if kind == "none" and cfg.self_distill > 0:
            kind = "ema"  # distillation needs a self-ensemble teacher
        if kind == "none":
            return None, None
        if kind == "window" and cfg.ensemble_every > total:
            # No snapshot would ever be taken: the run would silently deploy the raw model, and a
            # self-distillation teacher would stay the initial model for the whole run.
            raise ConfigError(f"train.ensemble_every={cfg.ensemble_every} exceeds the run's {total} training steps, "
                              "so the window self-ensemble would never take a snapshot; set train.ensemble_every "
                              f"to at most {total}")
        average = ParameterAverage(self.model, kind, cfg.ensemble_window, cfg.ema_decay)
        distill = SelfDistillation(self.model, average, cfg.self_distill) if cfg.self_distill > 0 else None
        return average, distill

    def _eval_dev(self, dev: Sequence[Example], average: ParameterAverage | None) -> dict[str, float]:
        """Dev metrics of the model that would be deployed: the self-ensemble when there is one."""
        if average is None or self.cfg.self_ensemble == "none" or average.updates == 0:
            return self.evaluate(dev, desc="dev").metrics
        current = trainable_state(self.model)
        load_into(self.model, average.averaged())
        try:
            return self.evaluate(dev, desc="dev").metrics
        finally:
            load_into(self.model, current)

    def _deployed_state(self, average: ParameterAverage | None) -> dict[str, torch.Tensor]:
        if average is not None and self.cfg.self_ensemble != "none" and average.updates:
            return average.averaged()
        return trainable_state(self.model)

    def fit(self, train: Sequence[Example], dev: Sequence[Example]) -> FitResult:
        cfg, acc = self.cfg, self.acc
        set_seed(self.seed)
        total = self.total_steps(len(train))
        optimizer = self._optimizer()
        scheduler = linear_schedule(optimizer, total, cfg.warmup_ratio)
        average, distill = self._ensemble(total)
        hooks = [*self.loss_hooks, *([distill] if distill else [])]
        start, best, best_score, best_step, history = 0, None, -math.inf, None, []
        resumed_from, seconds_before = None, 0.0
        if self.out_dir is not None and self.resume:
            self._drop_stale_checkpoint()
            restored = load_checkpoint(self.out_dir, self.model, optimizer, scheduler)
            if restored is not None:
                state, best, extra = restored
                start, best_score, best_step = state["step"], state["best_score"], state["best_step"]
                history, resumed_from = state["history"], state["step"]
                # Training time spent before the interruption: the run's time is the whole training's, not the
                # resumed part's (a resume after the last step would otherwise record 0 s of training).
                seconds_before = float(state.get("train_seconds", 0.0))
                if acc.scaler is not None and "scaler" in state:
                    # fp16's loss scale, grown over the steps already taken: a fresh one would skip steps again.
                    acc.scaler.load_state_dict(state["scaler"])
                if average is not None and extra:
                    average.load_state_tensors(extra)
                    if distill is not None and average.updates:
                        distill.refresh()
        model, optimizer = acc.prepare(self.model, optimizer)
        world, rank = acc.num_processes, acc.process_index
        t0 = time.perf_counter()
        bar = tqdm(total=total, initial=start, desc=f"train {self.spec.name} seed {self.seed}", unit="step",
                   disable=self.quiet or not acc.is_main_process, leave=False)
        model.train()
        for step in range(start, total):
            torch.manual_seed(step_seed(self.seed, step, rank))
            idx = self._batch_indices(step, len(train))
            mine = idx[rank::world]
            weights = [1.0] * len(mine)
            if not mine:  # every process must join the gradient all-reduce
                mine, weights = idx[:1], [0.0]
            examples = [train[i] for i in mine]
            batch = {k: v.to(acc.device) for k, v in self.prepared.collate(examples).items()}
            labels = torch.tensor([e.label for e in examples], device=acc.device)
            with acc.autocast():
                logits = model(**batch)
                per_ex = self.per_example_loss(logits, labels)
                for hook in hooks:
                    per_ex = per_ex + hook(model=model, batch=batch, logits=logits, labels=labels, step=step)
            w = torch.tensor(weights, device=acc.device)
            loss = (per_ex * w).sum() / len(idx) * world
            acc.backward(loss)
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer_step(acc, optimizer, scheduler)  # fp16: a skipped step leaves the schedule where it was
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            done = step + 1
            if average is not None and (average.kind == "ema" or done % cfg.ensemble_every == 0):
                average.update(acc.unwrap_model(model))
                if distill is not None:
                    distill.refresh()
            # Each process holds its share of the global-batch loss; the mean over processes is the whole.
            logged = acc.reduce(loss.detach(), reduction="mean") if world > 1 else loss.detach()
            record: dict[str, Any] = {"step": done, "loss": float(logged)}
            at_eval = (cfg.eval_every and done % cfg.eval_every == 0) or done == total
            if at_eval and dev:
                dev_metrics = self._eval_dev(dev, average)
                record["dev"] = dev_metrics
                score = dev_metrics[self.spec.metric]
                model.train()
                if score > best_score:  # ties keep the earlier step (as LM-BFF); NaN never wins
                    best_score, best_step = score, done
                    best = self._deployed_state(average) if cfg.select_on_dev else None
            history.append(record)
            # The last step too: a run killed in its (long) test evaluation then resumes without training again.
            if self.out_dir is not None and cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == total):
                if acc.is_main_process:
                    save_checkpoint(self.out_dir, acc.unwrap_model(model), optimizer, scheduler,
                                    {"step": done, "best_score": best_score, "best_step": best_step,
                                     "history": history, "seed": self.seed, "fingerprint": self.fingerprint,
                                     "train_seconds": seconds_before + time.perf_counter() - t0,
                                     **({"scaler": acc.scaler.state_dict()} if acc.scaler is not None else {})},
                                    best,
                                    average.state_tensors() if average is not None else None)
                acc.wait_for_everyone()
        bar.close()
        train_seconds = seconds_before + time.perf_counter() - t0
        self.model = acc.unwrap_model(model)
        if cfg.select_on_dev and best is not None:
            load_trainable(self.model, best, "best-on-dev state")
        elif average is not None and cfg.self_ensemble != "none" and average.updates:
            load_into(self.model, average.averaged())
        self.average = average
        if not cfg.select_on_dev:
            # The last state is deployed, not the best on dev: report its step and dev metrics (the intermediate
            # task's report and results.json's best_step would otherwise describe weights that were not kept).
            best_step = next((h["step"] for h in reversed(history) if "dev" in h), None)
        best_dev = next((h["dev"] for h in history if h["step"] == best_step and "dev" in h), {})
        return FitResult(steps=total, best_step=best_step, best_dev=best_dev, history=history,
                         train_seconds=train_seconds, resumed_from=resumed_from)

    def finish(self) -> None:
        """The run is recorded: its checkpoint (kept through the evaluations after training) goes."""
        if self.out_dir is not None and not self.cfg.keep_checkpoint and self.acc.is_main_process:
            remove_checkpoint(self.out_dir)

    def _drop_stale_checkpoint(self) -> None:
        """Remove a checkpoint that another config, method setting or data wrote (resuming it would train on
        with the old learning rate, schedule or steps and record the result under the new config)."""
        assert self.out_dir is not None
        if self.fingerprint is None:  # nothing to compare it with
            return
        if drop_stale_checkpoint(self.out_dir, self.fingerprint, "a run with another config, method settings or data",
                                 main_process=self.acc.is_main_process, logger=log):
            self.acc.wait_for_everyone()  # no process loads it while the main one removes it

    # -- evaluation -------------------------------------------------------------------------------------
    def predict(self, examples: Sequence[Example], desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
        preds, scores, _ = self._predict(examples, desc)
        return preds, scores

    @torch.no_grad()
    def _predict(self, examples: Sequence[Example], desc: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Predictions and scores, and the seconds that saved batches it resumed from took before."""
        acc, model = self.acc, self.model
        model.eval()
        world, rank = acc.num_processes, acc.process_index
        mine = list(range(rank, len(examples), world))
        # Sort by length so each batch pads little (dynamic padding); order is restored below.
        if self.prepared.eval_lengths is not None:
            lengths = self.prepared.eval_lengths([examples[i] for i in mine])
            by_index = dict(zip(mine, lengths, strict=True))
            mine.sort(key=by_index.__getitem__)
        else:
            mine.sort(key=lambda i: len(examples[i].text_a) + len(examples[i].text_b or ""))
        bs = self.cfg.eval_batch_size
        partial = self._partial_predictions(examples, desc, bs, mine)
        out: list[tuple[int, list[float]]] = partial.rows if partial is not None else []  # one list: it saves it
        first = partial.done if partial is not None else 0
        with inference_scope(acc.unwrap_model(model)):
            for b, start in enumerate(tqdm(range(0, len(mine), bs), desc=desc, leave=False,
                                           disable=self.quiet or not acc.is_main_process or len(mine) <= bs)):
                if b < first:  # saved by an earlier, interrupted evaluation of the same weights and examples
                    continue
                chunk = mine[start:start + bs]
                batch = {k: v.to(acc.device) for k, v in self.prepared.collate([examples[i] for i in chunk]).items()}
                with acc.autocast():
                    logits = model(**batch).float()
                scores = logits if self.spec.regression else logits.softmax(-1)
                rows = list(zip(chunk, scores.cpu().tolist(), strict=True))
                if partial is not None:
                    partial.add(rows)  # extends ``out``
                else:
                    out.extend(rows)
        # An evaluation resumed from saved batches took their time too.
        seconds_before = partial.seconds_before if partial is not None else 0.0
        if partial is not None:
            partial.remove()
        if world > 1:
            out = gather_object(out)
        out.sort(key=lambda t: t[0])
        scores = np.asarray([s for _, s in out], dtype=np.float64)
        preds = scores if self.spec.regression else scores.argmax(-1)
        return preds, scores, seconds_before

    def _partial_predictions(self, examples: Sequence[Example], desc: str, batch_size: int,
                             order: list[int]) -> PartialPredictions | None:
        """The saved batches of this evaluation, where checkpointing is on (one process, an output folder, an
        evaluation of more than one batch); None where it is off."""
        if (self.out_dir is None or not self.cfg.checkpoint_every or self.acc.num_processes > 1
                or len(order) <= batch_size):
            return None
        model = self.acc.unwrap_model(self.model)
        partial = PartialPredictions(self.out_dir, desc,
                                     lambda: evaluation_key(model, examples, desc, batch_size, order, self.fingerprint))
        if self.resume:
            partial.load()
        return partial

    def evaluate(self, examples: Sequence[Example], desc: str = "eval") -> Predictions:
        t0 = time.perf_counter()
        preds, scores, seconds_before = self._predict(examples, desc)
        metrics = compute_metrics([e.label for e in examples], preds, regression=self.spec.regression,
                                  primary=self.spec.metric, num_labels=self.spec.num_labels)
        bad = int(np.isnan(scores).any(axis=-1).sum()) if scores.ndim > 1 else int(np.isnan(scores).sum())
        if bad:
            # Diverged weights: argmax over NaN says class 0 for every input, which scores like a model that
            # always predicts that class. NaN metrics never win dev selection and show in the table as nan.
            log.warning("%s seed %s: the model's outputs are NaN on %d of %d %s examples (training diverged); "
                        "its %s metrics are NaN (lower train.learning_rate or set train.max_grad_norm)",
                        self.spec.name, self.seed, bad, len(examples), desc, desc)
            metrics = {k: float("nan") for k in metrics}
        return Predictions(preds, scores, metrics, time.perf_counter() - t0 + seconds_before)
