"""Supervised transfer: sequential (intermediate task) and parallel (multi-task) fine-tuning; probing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_toy_task
from helpers import run_cli
from transferlm.config import RunConfig
from transferlm.errors import ConfigError
from transferlm.protocol.multitask import MultitaskConfig, multitask, sampling_probabilities
from transferlm.protocol.run import run


@pytest.fixture
def two_tasks(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_toy_task(root / "toy")
    write_toy_task(root / "toy2", n_per_class=30)
    return root


def _cfg(model: Path, data: Path, **kw) -> RunConfig:
    return RunConfig.from_dict({"task": "toy", "model": str(model), "data": {"data_dir": str(data), "shots": 8},
                                "quiet": True, "train": {"max_steps": 6, "learning_rate": 3e-3, "eval_every": 3,
                                                         "checkpoint_every": 0}, **kw})


def test_sequential_transfer_changes_the_starting_point(tiny_bert: Path, two_tasks: Path) -> None:
    plain = run(_cfg(tiny_bert, two_tasks)).results
    seq = run(_cfg(tiny_bert, two_tasks, intermediate={"task": "toy2", "shots": 8, "max_steps": 5})).results
    assert seq["intermediate"]["task"] == "toy2" and seq["intermediate"]["steps"] == 5
    assert plain["intermediate"] is None
    assert seq["history"][0]["loss"] != plain["history"][0]["loss"]


def test_sampling_rules() -> None:
    sizes = [100, 400]
    assert np.allclose(sampling_probabilities(sizes, "proportional", 9), [0.2, 0.8])
    assert np.allclose(sampling_probabilities(sizes, "uniform", 9), [0.5, 0.5])
    t2 = sampling_probabilities(sizes, "temperature", 2.0)
    assert np.allclose(t2, [10 / 30, 20 / 30])


def test_multitask_one_encoder_one_head_per_task(tiny_bert: Path, two_tasks: Path, tmp_path: Path) -> None:
    cfg = MultitaskConfig(tasks=["toy", "toy2"], model=str(tiny_bert), output=str(tmp_path / "mt"), quiet=True,
                          sampling="temperature", temperature=2.0)
    cfg.data.data_dir, cfg.data.shots = str(two_tasks), 8
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.learning_rate = 8, 4, 3e-3
    res = multitask(cfg)
    assert set(res["tasks"]) == {"toy", "toy2"}
    assert {h["task"] for h in res["history"]} <= {"toy", "toy2"}
    assert all("accuracy" in r["metrics"] for r in res["tasks"].values())
    assert json.loads((tmp_path / "mt" / "multitask.json").read_text())["sampling"] == "temperature"
    with pytest.raises(ConfigError, match="two tasks"):
        multitask(MultitaskConfig(tasks=["toy"]))


def test_probe_reports_every_layer(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    proc = run_cli("probe", "--task", "toy", "--data-dir", str(toy_data), "--shots", "8", "--model", str(tiny_bert),
                   "--steps", "4", "--lr", "1e-2", "--output", str(tmp_path / "p"), "--quiet", check=True)
    report = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert [r["layer"] for r in report["layers"]] == [0, 1, 2]
    best = max(report["layers"], key=lambda r: r["dev"])
    assert report["best_layer"] == best["layer"] and "best on dev" in proc.stdout
    # Probing trains only the head.
    assert all(r["trainable_params"] == 2 * 32 + 2 for r in report["layers"])
