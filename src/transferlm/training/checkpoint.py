"""Resumable checkpoints in safetensors, written atomically.

A checkpoint folder holds the trainable weights (``model.safetensors``), the best-on-dev
weights so far (``best.safetensors``), the optimizer's tensors (``optimizer.safetensors``)
and everything else as JSON (``state.json``). Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..io import atomic_dir

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
EVAL_DIR = "checkpoint-eval"  # the saved part of an interrupted evaluation (eval_resume)
# Where io.atomic_dir moves the previous checkpoint while it renames the new one into place.
REPLACED_DIR = f".{CHECKPOINT_DIR}.old"


def checkpoint_dir(out_dir: Path) -> Path:
    """The checkpoint folder; or, where a kill landed between atomic_dir's two renames (the new one never
    appeared), the complete one it was replacing: resuming from it beats training again from step 0."""
    ck, replaced = out_dir / CHECKPOINT_DIR, out_dir / REPLACED_DIR
    return replaced if not ck.is_dir() and (replaced / "state.json").is_file() else ck


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, dtypes and bytes): what the model computes with."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unexpected = [n for n in state if n not in params]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match the model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); it was written for another model or method: delete it")
    with torch.no_grad():
        for n, t in state.items():
            if params[n].shape != t.shape:
                raise CheckpointError(f"{source}: tensor {n} has shape {tuple(t.shape)}, model expects "
                                      f"{tuple(params[n].shape)}; delete the checkpoint")
            params[n].copy_(t)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], best: dict[str, torch.Tensor] | None,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    with atomic_dir(out_dir / CHECKPOINT_DIR) as tmp:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        if extra:
            save_file({k: v.contiguous() for k, v in extra.items()}, str(tmp / "extra.safetensors"))
        if best is not None:
            save_file(best, str(tmp / "best.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        meta = dict(state, optimizer=opt_meta, scheduler=scheduler.state_dict())
        (tmp / "state.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None,
                                             dict[str, torch.Tensor] | None] | None:
    """Restore model/optimizer/scheduler in place; return (state, best weights, extra tensors) or None."""
    ck = checkpoint_dir(out_dir)
    if not ck.is_dir():
        return None
    try:
        meta = json.loads((ck / "state.json").read_text(encoding="utf-8"))
        load_trainable(model, load_file(str(ck / "model.safetensors")), str(ck))
        best_path = ck / "best.safetensors"
        best = load_file(str(best_path)) if best_path.is_file() else None
        extra_path = ck / "extra.safetensors"
        extra = load_file(str(extra_path)) if extra_path.is_file() else None
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(ck / "optimizer.safetensors")), meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
    except (OSError, ValueError, KeyError, SafetensorError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ck} is corrupt or incomplete ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); delete it or rerun with --no-resume") from None
    return meta, best, extra


def checkpoint_state(out_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's ``state.json`` (step, fingerprint, ...) without loading any tensor; None if there is
    none or it cannot be read (``load_checkpoint`` then says what is wrong with it)."""
    try:
        state = json.loads((checkpoint_dir(out_dir) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def remove_checkpoint(out_dir: Path) -> None:
    # The replaced and temporary folders first: a kill in here must not leave a half-removed replaced folder
    # that checkpoint_dir would take for the checkpoint.
    for stale in out_dir.glob(f".{CHECKPOINT_DIR}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    shutil.rmtree(out_dir / EVAL_DIR, ignore_errors=True)


def drop_stale_checkpoint(out_dir: Path, fingerprint: str, writer: str, *, main_process: bool = True,
                          logger: logging.Logger = log) -> bool:
    """Remove the checkpoint in ``out_dir`` if its fingerprint is not ``fingerprint``: another config, method
    setting or data wrote it, and resuming it would train on with the old settings and record the result under
    the new ones. Returns whether it was stale; a missing or unreadable one is not (``load_checkpoint`` finds
    nothing, or says what is wrong with it).

    ``writer`` says who wrote it in the warning ("a run with another config ..."); ``logger`` is the caller's,
    so the warning keeps its source. Every process gets the answer; only ``main_process`` logs and removes (the
    caller then synchronises the processes).
    """
    found = checkpoint_state(out_dir)
    if found is None or found.get("fingerprint") == fingerprint:
        return False
    if main_process:
        logger.warning("checkpoint in %s was written by %s (step %s); starting over", out_dir, writer,
                       found.get("step"))
        remove_checkpoint(out_dir)
    return True
