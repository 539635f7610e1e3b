"""Self-ensemble and self-distillation (Xu et al. 2020, "Improving BERT Fine-Tuning via
Self-Ensemble and Self-Distillation").

Self-ensemble: the deployed model is BERT(x; θ̄) with θ̄ the average of the parameters over the
last T snapshots (``window``) or an exponential moving average (``ema``).
Self-distillation: loss = CE(student, y) + λ·MSE(student logits, teacher logits), where the
teacher is that self-ensemble, updated as training goes.
"""

from __future__ import annotations

import copy
from collections import deque

import torch
from torch import nn

from ..errors import ConfigError

KINDS = ("none", "window", "ema")


class ParameterAverage:
    """θ̄ over the trainable parameters: mean of the last ``window`` snapshots, or an EMA."""

    def __init__(self, model: nn.Module, kind: str, window: int = 5, decay: float = 0.99) -> None:
        if kind not in ("window", "ema"):
            raise ConfigError(f"train.self_ensemble must be one of {KINDS}, got '{kind}'")
        if kind == "window" and window < 1:
            raise ConfigError(f"train.ensemble_window must be >= 1, got {window}")
        if kind == "ema" and not 0 < decay < 1:
            raise ConfigError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.kind, self.window, self.decay = kind, window, decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.snapshots: deque[dict[str, torch.Tensor]] = deque(maxlen=window)
        self.ema: dict[str, torch.Tensor] | None = None
        self.updates = 0

    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        current = {n: params[n].detach().to("cpu", copy=True).float() for n in self.names}
        self.updates += 1
        if self.kind == "window":
            self.snapshots.append(current)
        elif self.ema is None:
            self.ema = current
        else:
            for n, t in current.items():
                self.ema[n].mul_(self.decay).add_(t, alpha=1 - self.decay)

    def averaged(self) -> dict[str, torch.Tensor]:
        if self.kind == "ema":
            if self.ema is None:
                raise RuntimeError("no EMA yet: update() was never called")
            return {n: t.clone() for n, t in self.ema.items()}
        if not self.snapshots:
            raise RuntimeError("no snapshots yet: update() was never called")
        return {n: torch.stack([s[n] for s in self.snapshots]).mean(0) for n in self.names}

    # -- checkpointing: flat tensors, safetensors-friendly ---------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"__updates__": torch.tensor(self.updates)}
        if self.kind == "ema" and self.ema is not None:
            out.update({f"ema.{n}": t for n, t in self.ema.items()})
        for i, snap in enumerate(self.snapshots):
            out.update({f"snap{i}.{n}": t for n, t in snap.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.updates = int(tensors.get("__updates__", torch.tensor(0)))
        if self.kind == "ema":
            ema = {k[4:]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
            self.ema = ema or None
        else:
            self.snapshots.clear()
            i = 0
            while any(k.startswith(f"snap{i}.") for k in tensors):
                prefix = f"snap{i}."
                self.snapshots.append({k[len(prefix):]: v.clone() for k, v in tensors.items() if k.startswith(prefix)})
                i += 1


def load_into(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].dtype))


class SelfDistillation:
    """Adds λ·MSE(student logits, teacher logits) per example; the teacher holds θ̄."""

    def __init__(self, model: nn.Module, average: ParameterAverage, weight: float) -> None:
        if weight <= 0:
            raise ConfigError(f"train.self_distill (λ) must be > 0 to distil, got {weight}")
        self.weight, self.average = weight, average
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def refresh(self) -> None:
        load_into(self.teacher, self.average.averaged())

    def __call__(self, *, batch: dict[str, torch.Tensor], logits: torch.Tensor, **_: object) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(**batch).float()
        return self.weight * distill_term(logits, teacher_logits)


def distill_term(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-example mean squared error between logits (regression logits are 1-d)."""
    diff = (student.float() - teacher.float()) ** 2
    return diff if diff.ndim == 1 else diff.mean(-1)
