"""The shared AdamW: fused where possible, and the same update as the unfused reference."""

from __future__ import annotations

import pytest
import torch

from transferlm.training.optim import adamw, can_fuse


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7, 5, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def test_fused_on_cpu_float_params() -> None:
    opt = adamw(_params(0), lr=1e-3)
    assert opt.defaults["fused"] is True


def test_groups_are_accepted_and_fused() -> None:
    a, b = _params(0)
    opt = adamw([{"params": [a], "weight_decay": 0.0}, {"params": [b], "lr": 5e-4}], lr=1e-3, weight_decay=0.01)
    assert opt.defaults["fused"] is True
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-4]


def test_not_fused_for_non_float() -> None:
    assert not can_fuse([torch.zeros(2, dtype=torch.float32), torch.zeros(2, dtype=torch.int64)])
    assert can_fuse([torch.zeros(2), torch.zeros(3, dtype=torch.float64)])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_update_matches_reference(weight_decay: float) -> None:
    fused, ref = _params(1), _params(1)
    opt_f = adamw(fused, lr=1e-2, weight_decay=weight_decay)
    opt_r = torch.optim.AdamW(ref, lr=1e-2, weight_decay=weight_decay, foreach=False)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in fused]
        for p, q, gr in zip(fused, ref, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt_f.step()
        opt_r.step()
    assert not torch.equal(fused[0], _params(1)[0])  # the update moved the weights
    for p, q in zip(fused, ref, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_optimizer_step_leaves_the_schedule_when_the_fp16_scaler_skips() -> None:
    # Shared by the engine and multitask: a step whose scale dropped (skipped update) does not move the schedule.
    from types import SimpleNamespace

    from transferlm.training.optim import linear_schedule, optimizer_step

    class Scaler:
        def __init__(self) -> None:
            self.scale = 4.0

        def get_scale(self) -> float:
            return self.scale

    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = linear_schedule(opt, 10, 0.0)
    scaler = Scaler()
    real_step = opt.step

    def skipping_step() -> None:  # what GradScaler does on inf/NaN gradients: no update, a lower scale
        scaler.scale /= 2

    opt.step = skipping_step  # type: ignore[method-assign]
    optimizer_step(SimpleNamespace(scaler=scaler), opt, sched)
    assert sched.last_epoch == 0
    opt.step = real_step  # type: ignore[method-assign]
    optimizer_step(SimpleNamespace(scaler=scaler), opt, sched)
    optimizer_step(SimpleNamespace(scaler=None), opt, sched)
    assert sched.last_epoch == 2
