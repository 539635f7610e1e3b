"""Supervised transfer: sequential (intermediate task) and parallel (multi-task) fine-tuning; probing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli
from transferlm.config import RunConfig
from transferlm.errors import ConfigError
from transferlm.protocol.multitask import MultitaskConfig, multitask, sampling_probabilities
from transferlm.protocol.run import run


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


@pytest.mark.parametrize("layers", [",", "0,7"])
def test_probe_rejects_empty_or_missing_layers(tiny_bert: Path, toy_data: Path, tmp_path: Path, layers: str) -> None:
    proc = run_cli("probe", "--task", "toy", "--data-dir", str(toy_data), "--model", str(tiny_bert),
                   "--layers", layers, "--output", str(tmp_path / "p"), "--quiet")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "name layers between 0 (embeddings) and 2" in proc.stderr


def test_format_probe_without_dev_scores() -> None:
    from transferlm.protocol.probe import format_probe

    text = format_probe({"primary_metric": "accuracy", "best_layer": None,
                         "layers": [{"layer": 0, "dev": None, "test": 0.5}, {"layer": 1, "dev": None, "test": None}]})
    assert text.splitlines()[1].split() == ["0", "-", "50.0"] and "best" not in text


@pytest.mark.parametrize("max_grad_norm,clips", [(0.0, False), (1.0, True)])
def test_multitask_max_grad_norm_zero_turns_clipping_off(tiny_bert: Path, two_tasks: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, max_grad_norm: float,
                                                          clips: bool) -> None:
    from accelerate import Accelerator

    calls: list[float] = []
    real = Accelerator.clip_grad_norm_

    def spy(self, params, max_norm, *a, **k):  # clipping to 0 would zero every gradient: no step at all
        calls.append(max_norm)
        return real(self, params, max_norm, *a, **k)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", spy)
    cfg = MultitaskConfig(tasks=["toy", "toy2"], model=str(tiny_bert), quiet=True)
    cfg.data.data_dir, cfg.data.shots = str(two_tasks), 4
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.max_grad_norm = 2, 0, max_grad_norm
    multitask(cfg)
    assert bool(calls) is clips and all(c == max_grad_norm for c in calls)


def test_multitask_cls_pooling_on_a_decoder_is_an_error(tiny_llama: Path, two_tasks: Path) -> None:
    # The same resolve_pooling as finetune and the PEFT methods: a causal model's first token sees no input.
    cfg = MultitaskConfig(tasks=["toy", "toy2"], model=str(tiny_llama), quiet=True, pooling="cls")
    cfg.data.data_dir, cfg.data.shots = str(two_tasks), 4
    with pytest.raises(ConfigError, match="pooling=cls on a decoder-only model"):
        multitask(cfg)


def test_multitask_rejects_a_negative_max_grad_norm() -> None:
    cfg = MultitaskConfig(tasks=["toy", "toy2"])
    cfg.train.max_grad_norm = -1.0
    with pytest.raises(ConfigError, match=r"^train\.max_grad_norm must be >= 0"):
        multitask(cfg)


def test_the_intermediate_task_is_read_as_its_own_files_say(tiny_bert: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's file settings (format, header, empty_text) describe its own files, not the intermediate's."""
    from transferlm.methods import get_method
    from transferlm.protocol import run as run_module
    from transferlm.protocol.transfer import train_intermediate

    root = tmp_path / "data"
    inter = root / "inter" / "original"
    inter.mkdir(parents=True)
    rows = "".join(f"{t}\t{lab}\n" for t, lab in [("good movie", "pos"), ("bad film", "neg")] * 4)
    for split in ("train", "test"):
        (inter / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    own = tmp_path / "own.csv"  # the target: header-less csv, label first
    own.write_text("0,bad movie\n1,good movie\n" * 4)
    cfg = _cfg(tiny_bert, root, intermediate={"task": "inter", "shots": None})
    cfg.data.train_file, cfg.data.text_columns, cfg.data.label_column = str(own), [1], 0
    cfg.data.format, cfg.data.header, cfg.data.empty_text = "csv", False, "drop"
    seen = []

    def capture(icfg: RunConfig):
        seen.append(icfg)
        raise RuntimeError("captured")  # no need to train: what matters is how the data is read

    monkeypatch.setattr(run_module, "load_run_data", capture)
    method = get_method("finetune")
    with pytest.raises(RuntimeError, match="captured"):
        train_intermediate(cfg, method, method.parse_config({}), backbone=None)
    monkeypatch.undo()
    icfg = seen[0]
    assert (icfg.data.format, icfg.data.header, icfg.data.empty_text) == (None, None, None)
    spec, data = run_module.load_run_data(icfg)
    assert spec.labels == ("neg", "pos") and len(data.train) + len(data.dev) == 8  # the header row is no example


def test_tapt_reads_the_task_training_text_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dev text is what the target run selects on; pretraining on it leaks into that selection."""
    from transferlm.data import loading
    from transferlm.data.example import Example, TaskData
    from transferlm.training.texts import load_phase_texts

    def fake(name, data_dir, options):
        ex = [Example(guid=s, text_a=f"{s} text", label=0) for s in ("train", "dev", "test")]
        return None, TaskData(train=[ex[0]], dev=[ex[1]], test=[ex[2]])

    monkeypatch.setattr(loading, "load_task", fake)
    assert load_phase_texts("task:toy", "text", None) == ("tapt-toy", ["train text"], 0)


def test_an_edited_intermediate_task_is_another_run(tiny_bert: Path, two_tasks: Path, tmp_path: Path) -> None:
    from transferlm.protocol.run import training_fingerprint
    from transferlm.protocol.run_cache import cached_result

    cfg = _cfg(tiny_bert, two_tasks, intermediate={"task": "toy2", "shots": 8, "max_steps": 2})
    cfg.output = str(tmp_path / "seq")
    res = run(cfg).results
    assert set(res["intermediate"]["digests"]) == {"train", "dev", "test"}
    assert cached_result(Path(cfg.output), cfg) is not None
    # The intermediate task's training file changes under the same name: the recorded run is not reused, and
    # its checkpoint fingerprint differs too.
    before = training_fingerprint(cfg, {}, {"intermediate": res["intermediate"]["digests"]})
    train_csv = two_tasks / "toy2" / "original" / "train.csv"
    train_csv.write_text(train_csv.read_text(encoding="utf-8").replace("good movie", "fine movie"), encoding="utf-8")
    assert cached_result(Path(cfg.output), cfg) is None
    again = run(cfg).results
    assert again["intermediate"]["digests"]["train"] != res["intermediate"]["digests"]["train"]
    assert training_fingerprint(cfg, {}, {"intermediate": again["intermediate"]["digests"]}) != before


def test_intermediate_max_steps_wins_over_the_targets_epochs(tiny_bert: Path, two_tasks: Path) -> None:
    cfg = _cfg(tiny_bert, two_tasks, intermediate={"task": "toy2", "shots": 8, "max_steps": 2})
    cfg.train.epochs = 3  # the target: 3 epochs of its 16 examples (6 steps)
    res = run(cfg).results
    assert res["intermediate"]["steps"] == 2


def _mt(two_tasks: Path, **train: object) -> MultitaskConfig:
    cfg = MultitaskConfig(tasks=["toy", "toy2"], quiet=True)
    cfg.data.data_dir, cfg.data.shots = str(two_tasks), 4
    cfg.train.eval_every = 0
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_multitask_takes_the_engines_schedule_epochs_and_batch_sizes(tiny_bert: Path, two_tasks: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from transferlm.protocol import multitask as mt

    optimizers: list[torch.optim.Optimizer] = []
    real_adamw = mt.adamw
    monkeypatch.setattr(mt, "adamw", lambda *a, **k: optimizers.append(real_adamw(*a, **k)) or optimizers[-1])
    cfg = _mt(two_tasks, epochs=2.0, batch_size=4, learning_rate=1e-3, warmup_ratio=0.5)
    cfg.model = str(tiny_bert)
    res = multitask(cfg)
    # 2 epochs over both tasks' 8 training examples in batches of 4: 2 × (2 + 2) steps, not max_steps (100).
    assert res["steps"] == 8 and len(res["history"]) == 8
    assert optimizers[-1].param_groups[0]["lr"] == 0.0  # warm-up then linear decay to 0, as in `run`

    sizes: list[int] = []
    real_eval = mt._evaluate
    monkeypatch.setattr(mt, "_evaluate", lambda model, task, spec, ex, collate, bs, acc:
                        sizes.append(bs) or real_eval(model, task, spec, ex, collate, bs, acc))
    cfg = _mt(two_tasks, max_steps=2, eval_batch_size=3)
    cfg.model = str(tiny_bert)
    assert multitask(cfg)["environment"]["precision"] == "fp32"
    assert sizes and set(sizes) == {3}


@pytest.mark.parametrize("name,value", [("layer_decay", 0.9), ("self_ensemble", "ema"), ("self_distill", 1.0)])
def test_multitask_refuses_engine_options_it_does_not_implement(two_tasks: Path, name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^train\.{name} is not supported by multitask"):
        multitask(_mt(two_tasks, **{name: value}))


@pytest.mark.parametrize("name,value", [("train_file", "train.csv"), ("test_file", "test.csv"), ("labels", ["0", "1"]),
                                        ("text_columns", [1])])
def test_multitask_refuses_per_task_data_options(two_tasks: Path, name: str, value: object) -> None:
    # They were silently ignored: every task was read from its folder as if they were not set.
    cfg = _mt(two_tasks)
    setattr(cfg.data, name, value)
    with pytest.raises(ConfigError, match=rf"^data\.{name} is not supported by multitask"):
        multitask(cfg)


def test_multitask_honours_max_test_and_empty_text(tiny_bert: Path, two_tasks: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.protocol import multitask as mt

    sizes: dict[str, list[int]] = {}
    real_eval = mt._evaluate
    monkeypatch.setattr(mt, "_evaluate", lambda model, task, spec, ex, collate, bs, acc:
                        sizes.setdefault(task, []).append(len(ex)) or real_eval(model, task, spec, ex, collate, bs, acc))
    cfg = _mt(two_tasks, max_steps=1)
    cfg.model, cfg.data.max_test = str(tiny_bert), 5
    multitask(cfg)
    # dev (4 per class), then test: the toy tasks have 16 test examples, data.max_test keeps 5
    assert sizes == {"toy": [8, 8, 5], "toy2": [8, 8, 5]}
    cfg.data.max_test, cfg.data.empty_text = None, "nonsense"
    with pytest.raises(Exception, match="empty_text must be one of"):
        multitask(cfg)


@pytest.mark.parametrize("method", ["lora", "bitfit", "prompt-zero-shot"])
def test_intermediate_with_a_method_it_cannot_carry_is_refused_before_training(
        tiny_bert: Path, two_tasks: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A PEFT method's intermediate adapter is left on the backbone and the target's own adapter then fails to attach
    # ("already carries lora adapters"), after the whole intermediate task had trained; a method that does not train
    # has nothing to carry over.
    from transferlm.protocol import run as run_module

    trained: list[str] = []
    monkeypatch.setattr(run_module, "train_intermediate", lambda cfg, *a: trained.append(cfg.task))
    cfg = _cfg(tiny_bert, two_tasks, method=method, intermediate={"task": "toy2", "shots": 8, "max_steps": 2})
    with pytest.raises(ConfigError, match=rf"^intermediate-task transfer is not supported by method {method}"):
        run(cfg)
    assert not trained
