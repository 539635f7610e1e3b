"""Domain- and task-adaptive pretraining (Gururangan et al. 2020): continued pretraining on
unlabelled text, MLM for encoders (optionally whole-word masking), causal LM for decoders.

Several text sources run as consecutive phases (DAPT then TAPT) in one call. The result is a
normal model folder that ``transferlm run --model <folder>`` takes. Encoders that ship without
an MLM head (MiniLM) get a new head tied to the input embeddings, trained alone first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
)

from ..config import DEFAULT_SEEDS, DEFAULT_SHOTS
from ..errors import ConfigError, DataError, ModelError
from ..io import atomic_dir, atomic_path, check_output_dir, ignorable, output_lock, write_json
from ..models.loading import SAFETENSORS_ONLY, _first_line, is_decoder_config, load_tokenizer
from ..models.zoo import locate_model, model_digest
from .checkpoint import load_checkpoint, load_trainable, remove_checkpoint, save_checkpoint, trainable_state
from .optim import adamw, linear_factor
from .param_groups import build_param_groups
from .seeding import set_seed, step_seed
from .texts import load_phase_texts, phase_names

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    model: str = "minilm-l6"
    output: str | None = None
    # One phase per source, in order: a text file, a folder of them, or "task:<name>" for TAPT on a
    # task's own training text (labels ignored).
    texts: list[str] = field(default_factory=list)
    # The downstream protocol TAPT prepares for: K per class (None: full data) over these seeds. The dev
    # texts of each of those runs are left out of the TAPT text (the runs select on them).
    tapt_shots: int | None = field(default=DEFAULT_SHOTS, metadata={"parse": "shots"})
    tapt_seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    text_field: str = "text"
    data_dir: str | None = None
    objective: str = "auto"  # auto | mlm | clm
    whole_word_mask: bool = False
    mlm_probability: float = 0.15
    max_length: int = 128
    batch_size: int = 16
    # Micro-batches of batch_size summed into each optimizer update (effective batch batch_size x this); steps
    # counts updates. Each micro-batch weighs by its predicted tokens: the gradient of one big batch.
    grad_accum_steps: int = 1
    learning_rate: float = 5e-5
    steps: int = 200  # per phase
    # Linear warm-up over this fraction of each phase's steps, then linear decay to 0 (Gururangan et al. use
    # 0.06); as train.warmup_ratio. 0: decay from the first step. Behind a new MLM head the encoder warms up
    # from its first step after ``head_warmup_steps``.
    warmup_ratio: float = 0.0
    head_warmup_steps: int = 50  # new MLM head alone first
    eval_fraction: float = 0.05
    max_eval_texts: int = 256
    eval_every: int = 50
    checkpoint_every: int = 50
    seed: int = 13
    quiet: bool = False

    def validate(self) -> None:
        if not self.texts:
            raise ConfigError("pretrain needs at least one text source (--text PATH or --tapt-task NAME)")
        if not self.output:
            raise ConfigError("pretrain needs --output (the folder for the adapted model)")
        if self.objective not in ("auto", "mlm", "clm"):
            raise ConfigError(f"objective must be auto, mlm or clm, got '{self.objective}'")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("steps", "batch_size", "max_length", "grad_accum_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tapt_shots is not None and self.tapt_shots <= 0:
            raise ConfigError(f"tapt_shots must be a positive K or null (full data), got {self.tapt_shots}")
        if not self.tapt_seeds and any(t.startswith("task:") for t in self.texts):
            raise ConfigError("tapt_seeds is empty: give the seeds of the downstream runs (--tapt-seeds), whose "
                              "dev texts TAPT leaves out")


def _load_lm(path: str, objective: str) -> tuple[torch.nn.Module, str, list[str]]:
    """The model with an LM head; the names of head weights that were newly initialised."""
    config = AutoConfig.from_pretrained(path)
    is_decoder = is_decoder_config(config)
    if objective == "auto":
        objective = "clm" if is_decoder else "mlm"
    cls = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, dtype=torch.float32,
                                           use_safetensors=True)
    except ValueError:
        raise ModelError(f"model '{path}' ({config.model_type}) has no {objective.upper()} head class, so it "
                         "cannot be pretrained with that objective; pick a masked or causal LM") from None
    except OSError as e:  # no safetensors weights (pickled checkpoints are never opened)
        raise ModelError(f"cannot load model '{path}' ({_first_line(e)}){SAFETENSORS_ONLY}") from None
    missing = sorted(info.get("missing_keys") or [])
    return model, objective, missing


def masked_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MLM loss with the vocabulary projection computed only at the masked positions (~15%).

    Projecting every position onto a 30k vocabulary is about a third of a small encoder's training step;
    the loss is the same mean cross-entropy over masked tokens that the model's own loss computes.
    """
    labels = batch["labels"]
    keep = labels != -100
    decoder = model.get_output_embeddings()
    if decoder is None:
        return model(**batch).loss
    handle = decoder.register_forward_pre_hook(lambda _m, args: (args[0][keep], *args[1:]))
    try:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        handle.remove()
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):  # a head that reshapes: the model's own loss
        return model(**batch).loss
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup_ratio: float, starts: list[int]
              ) -> torch.optim.lr_scheduler.LambdaLR:
    """One phase's schedule: per parameter group, warm-up from the step the group starts training (``starts``),
    then linear decay to 0 at the phase's end (optim.linear_factor, as fine-tuning's)."""
    if int(warmup_ratio * steps) == 0:  # no warm-up: the decay from step 0 this always had, to the bit
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [linear_factor(steps, warmup_ratio, start) for start in starts])


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float as None: ``json`` would write NaN/Infinity, which strict JSON
    parsers (browsers) reject (a perplexity over no masked token is NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _tokenize(tokenizer: Any, texts: list[str], max_length: int, wwm: bool) -> list[dict[str, list[int]]]:
    """Each text as rows of at most ``max_length`` tokens: a text longer than that is cut into consecutive
    chunks, each with the tokenizer's own special tokens around it, so no token of it is lost. A chunk never
    holds the end of one text and the start of the next."""
    enc = tokenizer(texts, return_special_tokens_mask=True, return_offsets_mapping=wwm, verbose=False)
    keys = [k for k in ("input_ids", "special_tokens_mask", "offset_mapping") if k in enc]
    rows: list[dict[str, list[int]]] = []
    for i in range(len(texts)):
        row = {k: list(enc[k][i]) for k in keys}
        special = row["special_tokens_mask"]
        # The special tokens the tokenizer puts before and after a text ([CLS] ... [SEP], <s> ...) frame every chunk.
        head = next((j for j, s in enumerate(special) if not s), len(special))
        tail = next((j for j, s in enumerate(reversed(special)) if not s), 0)
        if head == len(special):
            continue  # nothing but special tokens (e.g. a text of control characters): nothing to learn from
        room = max_length - head - len(special[len(special) - tail:])
        if room < 1:
            raise ConfigError(f"max_length {max_length} leaves no room for text beside the tokenizer's "
                              f"{head + tail} special tokens; raise max_length")
        end = len(special) - tail
        for start in range(head, end, room):
            stop = min(start + room, end)
            chunk = {k: v[:head] + v[start:stop] + v[end:] for k, v in row.items()}
            chunk["attention_mask"] = [1] * len(chunk["input_ids"])
            rows.append(chunk)
    return rows


def _pad_rows(rows: list[dict[str, list]], pad_id: int) -> list[dict[str, list]]:
    """Pad every field ourselves: the collator's tokenizer.pad cannot pad offset mappings (whole-word masking)."""
    n = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "attention_mask": 0, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
    return [{k: list(v) + [fill[k]] * (n - len(v)) for k, v in r.items()} for r in rows]


class Pretrainer:
    def __init__(self, cfg: PretrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.out = check_output_dir(cfg.output)
        if self.out.is_dir() and any(not ignorable(p) for p in self.out.iterdir()) \
                and not (self.out / "pretrain.json").is_file():
            # The adapted model replaces the folder whole: never a folder of something else.
            raise ConfigError(f"--output {self.out} is a folder with other files in it, and pretrain replaces its "
                              "output folder whole; give a new folder (or an earlier pretrain output)")
        self.work = self.out.with_name(f".{self.out.name}.pretrain")
        # Read every source before loading the model: bad text files fail fast, nothing written.
        loaded = [load_phase_texts(src, cfg.text_field, cfg.data_dir, dev_shots=cfg.tapt_shots,
                                   dev_seeds=cfg.tapt_seeds) for src in cfg.texts]
        # Distinct names for the report and logs (two corpora's dev.json: amazon_review/dev, yelp_review/dev).
        self.phases = [(name, texts) for name, (_, texts, _) in zip(phase_names(cfg.texts), loaded, strict=True)]
        # Each source's own name (a file's stem), which the resume stamp hashes: see _claim_work_folder.
        self.source_names = [own for own, _, _ in loaded]
        # Per phase: how many training texts TAPT left out for being downstream dev text (None: not a task).
        self.excluded_dev = [excluded for _, _, excluded in loaded]
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        resolved = locate_model(cfg.model)
        # The base model's files, read once: the resume stamp and pretrain.json record the base this run started on.
        self.base_digest = model_digest(cfg.model)
        self.tokenizer = load_tokenizer(str(resolved.path), trust_remote_code=False)
        # A new MLM head is initialised from the global RNG: seed it, or the same seed gives another model
        # depending on what ran before in this process.
        set_seed(cfg.seed)
        self.model, self.objective, self.new_head = _load_lm(str(resolved.path), cfg.objective)
        if self.objective == "mlm" and self.tokenizer.mask_token is None:
            raise ModelError(f"model '{cfg.model}': its tokenizer has no mask token, so it cannot be pretrained "
                             "with masked language modelling; give a tokenizer with one, or --objective clm")
        self.wwm = cfg.whole_word_mask and self.objective == "mlm"
        self.model.to(self.acc.device)

    def _claim_work_folder(self) -> None:
        """Resume only work started with these settings: a checkpoint of another schedule, length or text
        would silently continue the wrong run. Older work is discarded, with a warning."""
        settings = {k: v for k, v in self.cfg.__dict__.items() if k not in ("quiet", "output")}
        # The text itself, not only its path: an edited file (or a task's changed data) is another run.
        digest = hashlib.sha256()
        # The sources' own names, as before phases got distinct ones: the texts and paths (cfg.texts, in the
        # settings) decide alike, and work interrupted before the names changed still resumes.
        for name, (_, texts) in zip(self.source_names, self.phases, strict=True):
            for piece in (name, *texts, ""):  # length-prefixed: no two lists of texts hash alike
                raw = piece.encode("utf-8")
                digest.update(len(raw).to_bytes(8, "little") + raw)
        settings["texts_sha256"] = digest.hexdigest()
        # The base model's files too: DAPT + TAPT continues from a DAPT folder that a rerun may train again.
        settings["model_digest"] = self.base_digest
        stamp = self.work / "settings.json"
        if self.work.exists():
            try:
                before = json.loads(stamp.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                before = None
            if before == json.loads(json.dumps(settings)):
                return
            log.warning("discarding unfinished pretraining in %s: it was started with other settings", self.work)
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        write_json(stamp, settings)

    def _collator(self, step: int) -> DataCollatorForLanguageModeling:
        # A fresh seed per step keeps masking identical across kill/resume.
        return DataCollatorForLanguageModeling(self.tokenizer, mlm=self.objective == "mlm",
                                               whole_word_mask=self.wwm,
                                               mlm_probability=self.cfg.mlm_probability,
                                               seed=step_seed(self.cfg.seed, step, 0) % (2**31))

    def _batch(self, rows: list[dict[str, list[int]]], step: int) -> dict[str, torch.Tensor]:
        if self.wwm:
            rows = _pad_rows(rows, self.tokenizer.pad_token_id)
        batch = self._collator(step)(rows)
        batch.pop("offset_mapping", None)
        return {k: v.to(self.acc.device) for k, v in batch.items()}

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_lm_loss(self.model, batch) if self.objective == "mlm" else self.model(**batch).loss

    def _predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """How many tokens the batch's mean loss is over: masked ones (MLM), or every next token (CLM)."""
        labels = batch["labels"]
        return int((labels != -100).sum() if self.objective == "mlm" else (labels[:, 1:] != -100).sum())

    @torch.no_grad()
    def perplexity(self, rows: list[dict[str, list[int]]]) -> float:
        """exp of the mean loss per predicted token over all rows (each chunk's mean weighted by its tokens,
        not its rows: a chunk of long texts holds more predictions)."""
        self.model.eval()
        total, n = 0.0, 0
        for i in range(0, len(rows), 32):
            batch = self._batch(rows[i:i + 32], 10**9 + i)  # fixed masks for comparable numbers
            count = self._predicted_tokens(batch)
            if count:  # a chunk with nothing masked has no loss (its mean would be NaN)
                total += float(self._loss(batch)) * count
                n += count
        self.model.train()
        return math.exp(total / n) if n else float("nan")

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._claim_work_folder()
        set_seed(cfg.seed)
        report: dict[str, Any] = {"model": cfg.model, "objective": self.objective, "new_head": self.new_head,
                                  "phases": []}
        global_step = 0
        for phase_idx, (name, texts) in enumerate(self.phases):
            rng = np.random.RandomState(cfg.seed + phase_idx)
            order = rng.permutation(len(texts))
            n_eval = min(cfg.max_eval_texts, max(1, int(len(texts) * cfg.eval_fraction)))
            eval_texts = [texts[i] for i in order[:n_eval]]
            train_texts = [texts[i] for i in order[n_eval:]] or [texts[order[0]]]
            eval_rows = _tokenize(self.tokenizer, eval_texts, cfg.max_length, self.wwm)
            train_rows = _tokenize(self.tokenizer, train_texts, cfg.max_length, self.wwm)
            if not train_rows:
                raise DataError(f"{name}: no text left to train on once tokenized (only special tokens)")
            counts = {"train_texts": len(train_texts), "eval_texts": len(eval_texts),
                      "train_chunks": len(train_rows), "eval_chunks": len(eval_rows)}
            if self.excluded_dev[phase_idx] is not None:
                counts["excluded_dev_texts"] = self.excluded_dev[phase_idx]
            report["phases"].append(self._phase(phase_idx, name, train_rows, eval_rows, global_step, counts))
            global_step += cfg.steps
        with atomic_dir(self.out) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            # The base model's files: reproduce reuses this output only while they are unchanged (DAPT + TAPT
            # continues from a DAPT folder that a rerun with other settings trains again).
            write_json(tmp / "pretrain.json", _finite(report | {"config": cfg.__dict__,
                                                                "model_digest": self.base_digest}))
        shutil.rmtree(self.work, ignore_errors=True)
        return report

    def _phase(self, idx: int, name: str, train_rows: list, eval_rows: list, offset: int,
               counts: dict[str, int]) -> dict[str, Any]:
        cfg = self.cfg
        ck_dir = self.work / f"phase-{idx}"
        done_file = self.work / f"phase-{idx}.done.safetensors"
        if done_file.is_file():  # finished before an interruption: reuse its weights and report
            load_trainable(self.model, load_file(str(done_file)), str(done_file))
            # Under this run's name: one written before phases got distinct names has the file's stem.
            return json.loads(done_file.with_suffix(".json").read_text(encoding="utf-8")) | {"phase": name}
        head_only = bool(self.new_head) and idx == 0 and cfg.head_warmup_steps > 0
        params = dict(self.model.named_parameters())
        # BERT's recipe, as in fine-tuning: no weight decay on biases and LayerNorm weights.
        groups = build_param_groups(self.model, None, cfg.learning_rate, 0.01)
        starts = [0] * len(groups)
        if head_only:  # the encoder trains only after the head's steps alone: its warm-up starts there
            split = [({**g, "names": names, "params": [params[n] for n in names]}, 0 if head else cfg.head_warmup_steps)
                     for g in groups for head in (True, False)
                     if (names := [n for n in g["names"] if (n in self.new_head) == head])]
            groups, starts = [g for g, _ in split], [start for _, start in split]
        optimizer = adamw(groups, lr=cfg.learning_rate)
        scheduler = _schedule(optimizer, cfg.steps, cfg.warmup_ratio, starts)
        start, history, ppl_before = 0, [], None
        restored = load_checkpoint(ck_dir, self.model, optimizer, scheduler) if ck_dir.exists() else None
        if restored is not None:
            start, history = restored[0]["step"], restored[0]["history"]
            ppl_before = restored[0].get("perplexity_before")
        if ppl_before is None:  # a resumed phase reports the phase's start, not the checkpoint's perplexity
            ppl_before = self.perplexity(eval_rows)
        t0, tokens = time.perf_counter(), 0
        bar = tqdm(total=cfg.steps, initial=start, desc=f"pretrain {name}", unit="step", disable=cfg.quiet, leave=False)
        self.model.train()
        accum = cfg.grad_accum_steps
        per_epoch = max(1, math.ceil(len(train_rows) / cfg.batch_size))  # micro-batches
        order_epoch, perm = -1, np.arange(0)  # this epoch's order: drawn once, not once per micro-batch
        for step in range(start, cfg.steps):
            warm = head_only and step < cfg.head_warmup_steps
            torch.manual_seed(step_seed(cfg.seed, offset + step, 0))
            batches = []
            for micro in range(step * accum, (step + 1) * accum):  # data and masks: functions of the micro-batch
                epoch, pos = divmod(micro, per_epoch)
                if epoch != order_epoch:
                    order_epoch = epoch
                    perm = np.random.RandomState(cfg.seed * 31 + epoch + idx * 1000).permutation(len(train_rows))
                rows = [train_rows[i] for i in perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]]
                batches.append(self._batch(rows, offset * accum + micro))
            tokens += sum(int(b["attention_mask"].sum()) for b in batches)
            # Each micro-batch's loss is a mean over its own predicted tokens (MLM: the ~15% masked, a number
            # that varies): weighted by its share of the update's tokens, the summed gradient is the big batch's.
            predicted = [self._predicted_tokens(b) for b in batches]
            total = sum(predicted)
            logged: float | None = None
            if total:  # else nothing was masked (or is to predict): no loss (its mean would be NaN), no update
                # The new head trains alone first, so its random start does not disturb the encoder. Freezing
                # the rest for those steps also skips the backward pass through the encoder (same update).
                frozen = [p for n, p in params.items() if n not in self.new_head and p.requires_grad] if warm else []
                for p in frozen:
                    p.requires_grad_(False)
                logged = 0.0
                try:
                    for batch, count in zip(batches, predicted, strict=True):
                        if count:
                            weight = count / total
                            loss = self._loss(batch)
                            (loss * weight).backward()
                            logged += float(loss.detach()) * weight
                finally:
                    for p in frozen:
                        p.requires_grad_(True)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                optimizer.step()
            with warnings.catch_warnings():  # a skipped first update: the schedule still follows the step
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            record: dict[str, Any] = {"step": step + 1, "loss": logged}
            if logged is None:
                record["skipped"] = "nothing masked" if self.objective == "mlm" else "nothing to predict"
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                record["perplexity"] = self.perplexity(eval_rows)
                bar.set_postfix(ppl=f"{record['perplexity']:.1f}")
            history.append(record)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(ck_dir, self.model, optimizer, scheduler,
                                {"step": step + 1, "history": history, "perplexity_before": ppl_before}, None)
        bar.close()
        seconds = time.perf_counter() - t0
        # The last step's evaluation, when there was one, is already the final perplexity.
        last = history[-1] if history else {}
        ppl_after = last["perplexity"] if last.get("step") == cfg.steps and "perplexity" in last \
            else self.perplexity(eval_rows)
        report = {"phase": name, **counts,
                  "perplexity_before": ppl_before, "perplexity_after": ppl_after,
                  "seconds": round(seconds, 2), "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
                  "resumed_from_step": start or None, "history": history}
        with atomic_path(done_file.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(report), encoding="utf-8")
        with atomic_path(done_file) as tmp:
            save_file(trainable_state(self.model), str(tmp))
        remove_checkpoint(ck_dir)
        if not cfg.quiet:
            log.info("phase %s: perplexity %.2f -> %.2f (%.1f tokens/s)", name, report["perplexity_before"],
                     report["perplexity_after"], report["tokens_per_second"])
        return report


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run all phases and write the adapted model folder atomically; returns the report."""
    if not cfg.texts:
        raise DataError("pretrain needs at least one text source")
    pretrainer = Pretrainer(cfg)  # every check first: bad input writes nothing, not even the lock
    with pretrain_lock(pretrainer.out):
        return pretrainer.run()


def pretrain_lock(folder: str | Path, **kwargs: Any) -> contextlib.AbstractContextManager[None]:
    """The lock of pretrain output ``folder`` (``io.output_lock``): its file sits beside the folder, next to the
    work folder, as the adapted model replaces the output folder whole (a lock file in it would go with it)."""
    return output_lock(folder, beside=True, **kwargs)
