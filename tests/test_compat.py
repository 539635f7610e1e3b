"""compat.py: the bf16 capability check and the warning it gives for training and serving on a slow CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from transferlm import compat
from transferlm.config import RunConfig
from transferlm.protocol.run import run
from transferlm.serving import Registry
from transferlm.training.engine import get_accelerator


def test_capability_check_agrees_with_onednn() -> None:
    assert compat.cpu_has_fast_bf16() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_warning_only_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    monkeypatch.setattr(compat, "cpu_has_fast_bf16", lambda: fast)
    msg = compat.slow_bf16_warning("bf16", "cpu", "serve --precision bf16")
    assert compat.slow_bf16_warning("fp32", "cpu", "x") is None  # only bf16 is emulated
    if fast:
        assert msg is None
    else:
        assert msg is not None and msg.startswith("serve --precision bf16: ") and "use fp32" in msg
        assert torch.backends.cpu.get_cpu_capability() in msg
    assert compat.slow_bf16_warning("bf16", "cuda", "x") is None  # a GPU decides for itself


def test_training_and_serving_warn_when_bf16_would_be_emulated(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(compat, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        get_accelerator("no")
        Registry(None, device="cpu", precision="fp32")
        assert not [r for r in caplog.records if "bf16" in r.getMessage()]
        get_accelerator("bf16")
        Registry(None, device="cpu", precision="bf16")
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert [m.split(":")[0] for m in warned] == ["train.mixed_precision=bf16", "serve --precision bf16"]


def test_runs_with_different_precisions_in_one_process(tiny_bert: Path, toy_data: Path) -> None:
    """accelerate's one process-wide state used to refuse a second precision ('already been initialized')."""
    def cfg(precision: str) -> RunConfig:
        return RunConfig.from_dict({"task": "toy", "model": str(tiny_bert), "quiet": True,
                                    "data": {"data_dir": str(toy_data), "shots": 4},
                                    "train": {"max_steps": 3, "eval_every": 0, "checkpoint_every": 0,
                                              "mixed_precision": precision}})

    first = run(cfg("no")).results
    bf16 = run(cfg("bf16")).results
    again = run(cfg("no")).results
    assert first["history"] == again["history"] and first["metrics"] == again["metrics"]
    assert bf16["metrics"] != first["metrics"] or bf16["history"] != first["history"]  # it really ran in bf16
