"""Helpers for tests that drive the real command line in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, **extra)
    return env


def run_cli(*args: str, check: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "transferlm", *args], capture_output=True, text=True,
                          env=cli_env(**extra), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"transferlm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def toy_run_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--task", "toy", "--data-dir", str(data), "--shots", "8", "--model", str(model),
            "--output", str(out), "--quiet", "--lr", "3e-3", "--set", "method_args.dropout=0", *extra]


def save_task(folder: Path, model_path: Path, method: str, args: dict, spec, *, seed: int, scale: float):
    """What `run --set save_model=true` writes for ``spec``, after a pretend training step that moves every
    trainable weight by ``scale``·N(0, 1). Returns the trained model (eval mode) and the tokenizer."""
    import torch

    from transferlm.methods import get_method
    from transferlm.models.loading import load_backbone

    m = get_method(method)
    backbone = load_backbone(str(model_path), head=m.head_for(str(model_path)))  # an LM head for prompt methods
    torch.manual_seed(seed)
    prepared = m.prepare(backbone, spec, m.parse_config(args), max_length=32, train=[])
    with torch.no_grad():
        for p in prepared.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)
    folder.mkdir(parents=True)
    prepared.save(folder)
    return prepared.model.eval(), backbone.tokenizer


def run_killed_in_test_evaluation(monkeypatch, cfg, batches: int) -> None:
    """Run ``cfg`` (a RunConfig) and stop it, as a kill would, once its test evaluation has saved ``batches``
    batches (saving after every batch)."""
    import pytest

    from transferlm.protocol.run import run
    from transferlm.training import eval_resume

    real_add = eval_resume.PartialPredictions.add

    def dying(self, rows):
        real_add(self, rows)
        if self.path.stem == "test" and self.done == batches:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(eval_resume, "EVERY_SECONDS", 0.0)
        m.setattr(eval_resume.PartialPredictions, "add", dying)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)


def killed_when(monkeypatch, owner, attr: str, when, job) -> None:
    """Run ``job()`` with ``owner.attr`` raising KeyboardInterrupt, as a kill would, on the first call whose
    arguments satisfy ``when(*args)``; the interruption must happen."""
    import pytest

    real = getattr(owner, attr)

    def dying(*args):
        if when(*args):
            raise KeyboardInterrupt
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(owner, attr, dying)
        with pytest.raises(KeyboardInterrupt):
            job()


_HOLDER = """
import sys
from transferlm.io import output_lock
with output_lock(sys.argv[1], beside=sys.argv[2] == "beside"):
    print("locked", flush=True)
    sys.stdin.readline()  # held until the test closes stdin (or kills it)
"""


def hold_lock(folder: Path, *, beside: bool = False):
    """A separate process holding output_lock(folder) until its stdin is closed; returns it once it holds it."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), "beside" if beside else "in"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def hold_lock_fails(folder: Path) -> bool:
    """Whether another process fails to take output_lock(folder)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import sys\nfrom transferlm.errors import ConfigError\nfrom transferlm.io import output_lock\n"
            "try:\n    with output_lock(sys.argv[1]): sys.exit(0)\nexcept ConfigError: sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], env={**os.environ, "PYTHONPATH": src},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode == 3
