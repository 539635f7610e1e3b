"""The optimizer every training loop here uses: AdamW, fused where torch has a fused kernel.

The fused kernel (one pass over all parameters instead of a Python loop over tensors) is what HF
Trainer uses by default on torch >= 2.8; on 2 CPU cores it makes the update of a 135M-parameter model
about 3x faster. It needs floating-point parameters on one device type that has the kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def can_fuse(params: list[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    return (len(devices) == 1 and devices <= set(FUSED_DEVICES)
            and all(p.is_floating_point() for p in params))


def adamw(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float, **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or param groups), fused when possible."""
    items = list(params)
    tensors = [p for g in items for p in g["params"]] if items and isinstance(items[0], dict) else items
    return torch.optim.AdamW(items, lr=lr, fused=can_fuse(tensors) or None, **kwargs)


def linear_factor(total: int, warmup_ratio: float, start: int = 0) -> Callable[[int], float]:
    """The factor on the base rate at each step: linear warm-up over ``warmup_ratio`` of ``total`` steps, then
    linear decay to 0 at ``total`` (BERT's, LM-BFF's).

    ``start``: parameters that only begin training at that step (an encoder frozen while a new head trains
    alone) warm up from there instead, over as many steps, capped by the decay (0 before it). With ``start`` 0
    this is exactly the warm-up then decay above.
    """
    warmup = int(warmup_ratio * total)

    def factor(step: int) -> float:
        decay = max(0.0, (total - step) / max(1, total - warmup))
        if step < start + warmup:
            return min(max(0.0, (step - start + 1) / warmup), decay)
        return decay

    return factor


def linear_schedule(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of ``total`` steps, then linear decay to 0 (BERT's, LM-BFF's)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_factor(total, warmup_ratio))


def optimizer_step(acc: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """One optimizer step, then the schedule's, unless fp16's loss scaler skipped the update.

    A step the scaler skipped (inf/NaN gradients; it then lowers the scale) updated nothing, so the schedule does
    not advance, as accelerate's scheduler wrapper and HF Trainer do. (accelerate's optimizer_step_was_skipped
    cannot tell: a fused optimizer's step is always called.)
    """
    scaler = getattr(acc, "scaler", None)
    scale = scaler.get_scale() if scaler is not None else None
    optimizer.step()
    if scale is None or scaler.get_scale() >= scale:
        scheduler.step()
