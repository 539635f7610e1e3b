"""The training engine: determinism, kill/resume, several processes, checkpoints."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import cli_env, run_cli, run_killed_in_test_evaluation, toy_run_args
from transferlm.config import RunConfig
from transferlm.errors import CheckpointError
from transferlm.protocol.run import run


def _cfg(model: Path, data: Path, out: Path | None, **train: object) -> RunConfig:
    return RunConfig.from_dict({"task": "toy", "model": str(model), "output": str(out) if out else None,
                                "data": {"data_dir": str(data), "shots": 8}, "quiet": True,
                                "method_args": {"dropout": 0.1},
                                "train": {"max_steps": 12, "learning_rate": 3e-3, "eval_every": 4,
                                          "checkpoint_every": 0, **train}})


def test_same_seed_same_numbers(tiny_bert: Path, toy_data: Path) -> None:
    a = run(_cfg(tiny_bert, toy_data, None)).results
    b = run(_cfg(tiny_bert, toy_data, None)).results
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["metrics"] == b["metrics"]
    c = run(RunConfig.from_dict({**_cfg(tiny_bert, toy_data, None).to_dict(), "seed": 21})).results
    assert [h["loss"] for h in c["history"]] != [h["loss"] for h in a["history"]]


def test_results_json_contract(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    res = run(_cfg(tiny_llama, toy_data, tmp_path / "o")).results
    on_disk = json.loads((tmp_path / "o" / "results.json").read_text())
    for key in ("task", "method", "model", "seed", "shots", "metrics", "primary_metric", "trainable_params",
                "total_params", "train_seconds", "eval_seconds", "config"):
        assert key in on_disk, key
    assert on_disk["primary_metric"] == "accuracy" and "accuracy" in on_disk["metrics"]
    assert on_disk["config"]["train"]["max_steps"] == 12
    assert 0 < res["trainable_params"] <= res["total_params"]
    # Checkpoints are removed once a run finishes.
    assert not (tmp_path / "o" / "checkpoint").exists()


def test_dev_selection_keeps_the_best_step(tiny_bert: Path, toy_data: Path) -> None:
    res = run(_cfg(tiny_bert, toy_data, None, max_steps=16)).results
    dev_scores = {h["step"]: h["dev"]["accuracy"] for h in res["history"] if "dev" in h}
    assert res["best_step"] in dev_scores
    assert dev_scores[res["best_step"]] == max(dev_scores.values())
    # The reported dev metric is that of the restored best state.
    assert res["dev_metrics"]["accuracy"] == dev_scores[res["best_step"]]


@pytest.mark.parametrize("select", [True, False])
def test_best_step_is_the_deployed_state(tiny_bert: Path, toy_data: Path, monkeypatch: pytest.MonkeyPatch,
                                         select: bool) -> None:
    # Scripted dev scores: the best is at step 4, the last evaluation at step 12. Without select_on_dev the
    # last state is deployed, so best_step and the reported dev metrics must be step 12's.
    from transferlm.training.engine import Engine

    scores = iter([0.9, 0.5, 0.7])
    monkeypatch.setattr(Engine, "_eval_dev", lambda self, dev, average: {"accuracy": next(scores)})
    res = run(_cfg(tiny_bert, toy_data, None, select_on_dev=select)).results
    assert [h["dev"]["accuracy"] for h in res["history"] if "dev" in h] == [0.9, 0.5, 0.7]
    assert res["best_step"] == (4 if select else 12)


def test_resume_after_a_real_kill(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    args = ["--steps", "400", "--set", "train.checkpoint_every=20", "--set", "train.eval_every=100"]
    ref = run_cli(*toy_run_args(tiny_bert, toy_data, tmp_path / "ref", *args), check=True)
    assert ref.returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "transferlm", *toy_run_args(tiny_bert, toy_data, out, *args)],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before writing a checkpoint"
    assert not (out / "results.json").exists(), "the run finished before it could be killed"
    killed_at = json.loads(state.read_text())["step"]
    assert 0 < killed_at < 400

    run_cli(*toy_run_args(tiny_bert, toy_data, out, *args), check=True)
    a = json.loads((tmp_path / "ref" / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert b["resumed_from_step"] is not None and b["resumed_from_step"] >= killed_at
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["metrics"] == b["metrics"] and a["dev_metrics"] == b["dev_metrics"]


def test_two_processes_match_one(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    args = ["--steps", "16", "--set", "train.eval_every=8", "--set", "train.checkpoint_every=0"]
    run_cli(*toy_run_args(tiny_bert, toy_data, tmp_path / "one", *args), check=True)
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun not found beside the interpreter"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "transferlm",
                           *toy_run_args(tiny_bert, toy_data, tmp_path / "two", *args)],
                          capture_output=True, text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["environment"]["processes"] == 2 and a["environment"]["processes"] == 1
    for x, y in zip(a["history"], b["history"], strict=True):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4, abs=1e-5)
    for k, v in a["metrics"].items():
        assert b["metrics"][k] == pytest.approx(v, abs=1e-6)


def test_checkpoints_are_safetensors_and_corruption_is_caught(tiny_bert: Path, toy_data: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "o"
    cfg = _cfg(tiny_bert, toy_data, out, max_steps=8, checkpoint_every=4, keep_checkpoint=True)
    run(cfg)
    ck = out / "checkpoint"
    assert {p.name for p in ck.iterdir()} == {"model.safetensors", "best.safetensors", "optimizer.safetensors",
                                               "state.json"}
    assert load_file(str(ck / "model.safetensors"))  # readable without unpickling
    (ck / "model.safetensors").write_bytes(b"garbage")
    (out / "results.json").unlink()
    with pytest.raises(CheckpointError, match="corrupt"):  # the same run again: it resumes, and finds the damage
        run(_cfg(tiny_bert, toy_data, out, max_steps=8, checkpoint_every=4))
    assert not (out / "results.json").exists()
    cli_args = toy_run_args(tiny_bert, toy_data, tmp_path / "cli", "--steps", "8", "--set", "train.checkpoint_every=4",
                            "--set", "train.keep_checkpoint=true")
    run_cli(*cli_args, check=True)
    (tmp_path / "cli" / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "cli" / "results.json").unlink()
    proc = run_cli(*cli_args)
    assert proc.returncode == 2 and "corrupt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _killed_after_checkpoint(monkeypatch: pytest.MonkeyPatch, cfg: RunConfig, step: int) -> None:
    """Run ``cfg`` and stop it right after it writes its step-``step`` checkpoint, as a kill would."""
    from transferlm.training import engine as engine_mod

    real = engine_mod.save_checkpoint

    def save_then_die(out_dir, model, optimizer, scheduler, state, *a, **k):
        real(out_dir, model, optimizer, scheduler, state, *a, **k)
        if state["step"] == step:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(engine_mod, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    assert json.loads((Path(cfg.output) / "checkpoint" / "state.json").read_text())["step"] == step


def test_a_kill_between_the_checkpoint_renames_resumes_from_the_replaced_one(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # atomic_dir moves the old checkpoint aside, then renames the new one into place: killed in between, only
    # the (complete) old one is there, and the run must resume from it rather than train again from step 0.
    out = tmp_path / "o"
    _killed_after_checkpoint(monkeypatch, _cfg(tiny_bert, toy_data, out, checkpoint_every=8), 8)
    (out / "checkpoint").rename(out / ".checkpoint.old")
    resumed = run(_cfg(tiny_bert, toy_data, out, checkpoint_every=8)).results
    whole = run(_cfg(tiny_bert, toy_data, None)).results
    assert resumed["resumed_from_step"] == 8
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert not list(out.glob("*checkpoint*"))  # the finished run removed both


def test_a_checkpoint_of_another_config_is_not_resumed(tiny_bert: Path, toy_data: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Killed at step 8 under lr 3e-3, then rerun with lr 1e-5: resuming would go on with the old optimizer's
    # learning rate and record the result under the new one.
    out = tmp_path / "o"
    _killed_after_checkpoint(monkeypatch, _cfg(tiny_bert, toy_data, out, checkpoint_every=8), 8)
    with caplog.at_level("WARNING"):
        changed = run(_cfg(tiny_bert, toy_data, out, learning_rate=1e-5, checkpoint_every=8)).results
    fresh = run(_cfg(tiny_bert, toy_data, None, learning_rate=1e-5)).results
    assert changed["resumed_from_step"] is None and "starting over" in caplog.text
    assert [r.name for r in caplog.records if "starting over" in r.getMessage()] == ["transferlm.training.engine"]
    assert "was written by a run with another config, method settings or data (step 8)" in caplog.text
    assert [h["loss"] for h in changed["history"]] == [h["loss"] for h in fresh["history"]]
    assert changed["metrics"] == fresh["metrics"]
    # Where only checkpointing options differ, the checkpoint is the same run's: it is resumed.
    (out / "results.json").unlink()
    _killed_after_checkpoint(monkeypatch, _cfg(tiny_bert, toy_data, out, checkpoint_every=8), 8)
    again = run(_cfg(tiny_bert, toy_data, out, checkpoint_every=4)).results
    assert again["resumed_from_step"] == 8


def test_save_model_writes_a_reloadable_folder(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    cfg = _cfg(tiny_bert, toy_data, tmp_path / "o", max_steps=4)
    cfg.save_model = True
    res = run(cfg).results
    folder = Path(res["model_dir"])
    assert (folder / "head.safetensors").is_file() and (folder / "method.json").is_file()
    reloaded = AutoModel.from_pretrained(folder / "backbone")
    assert sum(p.numel() for p in reloaded.parameters()) > 0
    head = load_file(str(folder / "head.safetensors"))
    assert head["weight"].shape == (2, reloaded.config.hidden_size)


def test_training_modules_do_not_import_sklearn_or_scipy() -> None:
    # scikit-learn + scipy cost ~130-180 MB of resident memory per process: only scoring may load them.
    code = ("import sys; import transferlm.training.engine, transferlm.methods, transferlm.models.loading, "
            "transferlm.evaluation.metrics; print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    from transferlm.evaluation.metrics import compute_metrics

    m = compute_metrics([0, 1, 1, 0], [0, 1, 0, 0], regression=False, primary="accuracy")
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(2 / 3)
    r = compute_metrics([0.0, 1.0, 2.0], [0.1, 0.9, 2.2], regression=True, primary="pearson")
    assert r["pearson"] > 0.99 and r["spearman"] == pytest.approx(1.0)


def test_fp16_loss_scale_survives_a_resume(tiny_bert: Path, toy_data: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # On CPU accelerate has no fp16 scaler; give it one (torch's CPU GradScaler, growing every step) so the
    # resume path that a GPU run takes is exercised here.
    import torch

    from transferlm.training import engine as engine_mod

    made: list = []

    def fp16_accelerator(mixed_precision: str = "no"):
        acc = engine_mod.new_accelerator(mixed_precision, cpu=True)
        acc.native_amp = True
        acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=1)
        made.append(acc)
        return acc

    monkeypatch.setattr(engine_mod, "get_accelerator", fp16_accelerator)
    out = tmp_path / "o"
    whole = run(_cfg(tiny_bert, toy_data, tmp_path / "whole", mixed_precision="fp16", checkpoint_every=8))
    grown = made[-1].scaler.get_scale()
    assert grown > 2.0 ** 8, "the scale should have grown over the steps"
    _killed_after_checkpoint(monkeypatch, _cfg(tiny_bert, toy_data, out, mixed_precision="fp16", checkpoint_every=8), 8)
    saved = json.loads((out / "checkpoint" / "state.json").read_text())
    assert saved["scaler"]["scale"] < grown
    resumed = run(_cfg(tiny_bert, toy_data, out, mixed_precision="fp16", checkpoint_every=8)).results
    assert resumed["resumed_from_step"] == 8
    assert made[-1].scaler.get_scale() == grown  # a fresh scaler would have restarted from 2.0
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in whole.results["history"]])
    assert whole.results["environment"]["precision"] == "fp16"


def test_steps_the_fp16_loss_scaler_skips_do_not_advance_the_schedule(tiny_bert: Path, toy_data: Path,
                                                                       tmp_path: Path) -> None:
    # NaN gradients at steps 0 and 1: the scaler skips those updates, so the linear schedule must have taken 4 of
    # its 6 steps, not 6 (which would leave the run's remaining steps at learning rate 0 sooner).
    import torch

    from transferlm.config import TrainConfig
    from transferlm.data.loading import DataOptions, load_task
    from transferlm.methods import get_method
    from transferlm.models.loading import load_backbone
    from transferlm.training.engine import Engine, new_accelerator

    spec, data = load_task("toy", toy_data, DataOptions(shots=8, seed=13))
    method = get_method("finetune")
    prepared = method.prepare(load_backbone(str(tiny_bert)), spec, method.parse_config({}), max_length=32,
                              train=data.train)
    acc = new_accelerator("fp16", cpu=True)
    acc.native_amp = True
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=100)
    cfg = TrainConfig(max_steps=6, learning_rate=3e-3, eval_every=0, checkpoint_every=6, mixed_precision="fp16")
    engine = Engine(prepared, spec, cfg, seed=1, quiet=True, out_dir=tmp_path / "o", accelerator=acc)
    engine.loss_hooks.append(lambda *, step, logits, **_: logits[:, 0] * math.nan if step < 2 else 0.0)
    engine.fit(data.train, [])
    assert acc.scaler.get_scale() == 0.5  # halved at each of the two skipped steps
    assert json.loads((tmp_path / "o" / "checkpoint" / "state.json").read_text())["scheduler"]["last_epoch"] == 4


def test_fp16_on_cpu_says_it_trains_in_fp32(tiny_bert: Path, toy_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    res = run(_cfg(tiny_bert, toy_data, None, mixed_precision="fp16", max_steps=2, eval_every=0)).results
    assert res["environment"]["precision"] == "fp32"
    assert "trains in fp32" in caplog.text
    assert run(_cfg(tiny_bert, toy_data, None, max_steps=2, eval_every=0)).results["environment"]["precision"] == "fp32"


def test_a_run_killed_in_its_test_evaluation_resumes_it_without_training_again(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.training import eval_resume

    monkeypatch.setattr(eval_resume, "EVERY_SECONDS", 0.0)  # save after every batch
    settings = {"max_steps": 8, "checkpoint_every": 4, "eval_batch_size": 2}
    whole = run(_cfg(tiny_bert, toy_data, None, **settings)).results
    out = tmp_path / "o"
    real_add = eval_resume.PartialPredictions.add
    test_batches: list[int] = []

    def add(self, rows):
        real_add(self, rows)
        if self.path.stem == "test":
            test_batches.append(self.done)
            if self.done == 3 and not resumed:
                raise KeyboardInterrupt  # killed after 3 of the test split's batches

    monkeypatch.setattr(eval_resume.PartialPredictions, "add", add)
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_bert, toy_data, out, **settings))
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 8, "the last step's checkpoint"
    assert (out / "checkpoint-eval" / "test.safetensors").is_file()
    resumed, test_batches[:] = True, []
    again = run(_cfg(tiny_bert, toy_data, out, **settings)).results
    assert again["resumed_from_step"] == 8 and again["history"] == whole["history"]  # no step trained again
    assert test_batches and test_batches[0] == 4, "the test evaluation went on after its 3 saved batches"
    assert again["metrics"] == whole["metrics"] and again["dev_metrics"] == whole["dev_metrics"]
    assert not (out / "checkpoint").exists() and not (out / "checkpoint-eval").exists(), "removed once recorded"


def test_a_resumed_run_records_the_time_spent_before_the_interruption(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "o"
    cfg = _cfg(tiny_bert, toy_data, out, max_steps=8, checkpoint_every=4, eval_batch_size=2)
    run_killed_in_test_evaluation(monkeypatch, cfg, 2)
    # Both files say how long their part took; stretch them, as if it had been long, and resume.
    state_file, eval_file = out / "checkpoint" / "state.json", out / "checkpoint-eval" / "test.safetensors"
    state = json.loads(state_file.read_text())
    assert state["train_seconds"] > 0
    state_file.write_text(json.dumps({**state, "train_seconds": 1000.0}))
    with safe_open(str(eval_file), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert float(meta["seconds"]) > 0
    save_file(tensors, str(eval_file), metadata={**meta, "seconds": "500.0"})
    again = run(cfg).results
    assert again["resumed_from_step"] == 8
    # Resumed after the last step: no training in this process, yet the run's training took 1000 s.
    assert 1000.0 <= again["train_seconds"] < 1100.0
    assert 500.0 <= again["eval_seconds"] < 600.0


def test_saved_predictions_of_other_weights_are_not_reused(tiny_bert: Path, toy_data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from transferlm.training import eval_resume

    monkeypatch.setattr(eval_resume, "EVERY_SECONDS", 0.0)
    out = tmp_path / "o"
    run_killed_in_test_evaluation(monkeypatch, _cfg(tiny_bert, toy_data, out, max_steps=8, checkpoint_every=4,
                                                    eval_batch_size=2), 2)
    shutil.rmtree(out / "checkpoint")  # the rerun trains again under another learning rate: other weights
    with caplog.at_level("INFO", logger="transferlm.training.eval_resume"):
        other = run(_cfg(tiny_bert, toy_data, out, max_steps=8, checkpoint_every=4, eval_batch_size=2,
                         learning_rate=1e-4)).results
    assert "of other weights or examples: evaluating from the start" in caplog.text
    fresh = run(_cfg(tiny_bert, toy_data, None, max_steps=8, eval_batch_size=2, learning_rate=1e-4)).results
    assert other["metrics"] == fresh["metrics"]


def test_saved_predictions_of_another_config_are_not_reused(tiny_mlm: Path, toy_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A method that does not train never reaches fit's check of the checkpoint's config, and another template of
    # the same length gives the same weights, examples and order: the saved test batches of the first template
    # must not stand in for the second's.
    from transferlm.training import eval_resume

    def cfg(template: str) -> RunConfig:
        return RunConfig.from_dict({
            "task": "toy", "model": str(tiny_mlm), "method": "prompt-zero-shot", "output": str(tmp_path / "o"),
            "quiet": True, "data": {"data_dir": str(toy_data), "shots": 8},
            "method_args": {"template": template, "label_words": {"0": "bad", "1": "good"}},
            "train": {"eval_batch_size": 4, "checkpoint_every": 1}})

    run_killed_in_test_evaluation(monkeypatch, cfg("{sentence} It was {answer}."), 2)
    first: list[int] = []
    real_add = eval_resume.PartialPredictions.add

    def add(self, rows):
        real_add(self, rows)
        if self.path.stem == "test" and not first:
            first.append(self.done)

    monkeypatch.setattr(eval_resume.PartialPredictions, "add", add)
    run(cfg("{sentence} It is {answer}."))
    assert first == [1], "the evaluation of the other template started from the saved batches"


def test_weights_the_checkpoint_lacks_are_initialised_from_the_run_seed(tiny_bert: Path, toy_data: Path,
                                                                         tmp_path: Path) -> None:
    # A checkpoint missing weights the model uses (transformers initialises them at load time): they must come
    # from the run's seed, not from whatever a previous run in the process (compare's seeds) left in torch's RNG.
    import torch
    from safetensors.torch import save_file

    model = tmp_path / "partial"
    shutil.copytree(tiny_bert, model)
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("encoder.layer.1.output.dense")},
              str(model / "model.safetensors"), metadata={"format": "pt"})
    cfg = _cfg(model, toy_data, None, max_steps=2, eval_every=0)
    torch.manual_seed(1)
    a = run(cfg).results
    torch.manual_seed(2)
    b = run(cfg).results
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


@pytest.mark.parametrize("from_step", [1, 9])
def test_a_diverged_model_scores_nan_not_the_majority_class(tiny_bert: Path, toy_data: Path, from_step: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Weights that turned NaN make every output NaN; argmax then says class 0 for every input, which scored like
    # an ordinary model that always predicts it (and could win dev selection). NaN metrics never win: diverging
    # at step 9 keeps a state from before (dev at steps 4 and 8); diverging at once leaves nothing to keep.
    import torch

    from transferlm.training import engine as engine_mod

    real, taken = engine_mod.optimizer_step, []

    def poisoned(acc, optimizer, scheduler):
        real(acc, optimizer, scheduler)
        taken.append(1)
        if len(taken) >= from_step:
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))

    monkeypatch.setattr(engine_mod, "optimizer_step", poisoned)
    res = run(_cfg(tiny_bert, toy_data, None)).results
    dev = [h["dev"]["accuracy"] for h in res["history"] if "dev" in h]
    if from_step == 1:
        assert all(math.isnan(d) for d in dev) and math.isnan(res["metrics"]["accuracy"])
    else:
        assert [math.isnan(d) for d in dev] == [False, False, True]
        assert res["best_step"] in (4, 8) and not math.isnan(res["metrics"]["accuracy"])
