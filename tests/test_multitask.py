"""Multi-task fine-tuning's saved model (a folder `run --model` takes) and its checkpoints (resume, stale ones)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import killed_when
from transferlm.config import RunConfig
from transferlm.errors import TransferLMError
from transferlm.models.loading import load_backbone
from transferlm.protocol import multitask as mt
from transferlm.protocol.multitask import MultitaskConfig, multitask
from transferlm.protocol.run import run


def _cfg(model: Path, data: Path, out: Path | None, **train: object) -> MultitaskConfig:
    # Uniform draws over two tasks of 8 training examples in batches of 4: each task's order is redrawn from the
    # loop's RandomState every third draw, so after a resume the draws and orders must continue where they were.
    cfg = MultitaskConfig(tasks=["toy", "toy2"], model=str(model), output=str(out) if out else None, quiet=True,
                          sampling="uniform")
    cfg.data.data_dir, cfg.data.shots = str(data), 4
    settings = {"max_steps": 8, "eval_every": 2, "learning_rate": 3e-3, "batch_size": 4, "checkpoint_every": 2,
                **train}
    for k, v in settings.items():
        setattr(cfg.train, k, v)
    return cfg


def _killed_after_step_4(monkeypatch: pytest.MonkeyPatch, cfg: MultitaskConfig) -> None:
    """Run ``cfg`` until it is interrupted in its sixth step, after its step-4 checkpoint, as a kill would."""
    killed_when(monkeypatch, mt, "step_seed", lambda seed, step, rank: step == 5, lambda: multitask(cfg))
    state = json.loads((Path(cfg.output) / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and not (Path(cfg.output) / "model").exists()


def _saved_weights(out: Path) -> dict[str, torch.Tensor]:
    model = out / "model"
    return {**load_file(str(model / "model.safetensors")),
            **{f"head.{k}": v for k, v in load_file(str(model / "heads.safetensors")).items()}}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_saved_model_is_the_dev_selected_one_and_run_fine_tunes_from_it(
        tiny_bert: Path, two_tasks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[mt.MultiTaskModel] = []

    class Recorded(mt.MultiTaskModel):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            built.append(self)

    selected: list[dict[str, torch.Tensor]] = []
    real_state, real_eval = mt.trainable_state, mt._evaluate
    calls = iter(range(10_000))
    monkeypatch.setattr(mt, "MultiTaskModel", Recorded)
    monkeypatch.setattr(mt, "trainable_state", lambda m: selected.append(real_state(m)) or selected[-1])
    # Dev scores that only fall: the first evaluation (step 2 of 8) is selected, not the last step's weights.
    monkeypatch.setattr(mt, "_evaluate", lambda *a: {**real_eval(*a), "accuracy": 1.0 - next(calls) / 10_000})
    out = tmp_path / "mt"
    res = multitask(_cfg(tiny_bert, two_tasks, out, checkpoint_every=0))
    monkeypatch.undo()
    folder = out / "model"
    assert res["model_dir"] == str(folder) == json.loads((out / "multitask.json").read_text())["model_dir"]
    assert len(selected) == 1  # the step-2 weights: what the folder must hold
    inner = built[0].eval()
    assert _same_tensors(load_file(str(folder / "model.safetensors")),
                         {k.removeprefix("backbone."): v for k, v in selected[0].items() if k.startswith("backbone.")})
    heads = json.loads((folder / "heads.json").read_text())
    assert heads["pooling"] == "mean" and {t: h["num_labels"] for t, h in heads["tasks"].items()} == {"toy": 2,
                                                                                                     "toy2": 2}
    # The folder is a model folder: the same encoder outputs and, with its heads, the same logits.
    backbone = load_backbone(str(folder))
    batch = backbone.tokenizer(["good movie", "the plot was boring"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(backbone.model.eval()(**batch).last_hidden_state, inner.backbone(**batch).last_hidden_state)
        _, loaded = mt.load_multitask_model(folder)
        for task in ("toy", "toy2"):
            assert torch.equal(loaded(task, **batch), inner(task, **batch))
    assert _same_tensors(load_file(str(folder / "heads.safetensors")),
                         {k.replace("heads.", "", 1): v for k, v in selected[0].items() if k.startswith("heads.")})
    # ... and a target run fine-tunes from it.
    target = RunConfig.from_dict({"task": "toy", "model": str(folder), "output": str(tmp_path / "target"),
                                  "data": {"data_dir": str(two_tasks), "shots": 8}, "quiet": True,
                                  "train": {"max_steps": 2, "eval_every": 2, "checkpoint_every": 0}})
    result = run(target).results
    assert result["model"] == str(folder) and result["steps"] == 2 and "accuracy" in result["metrics"]


@pytest.mark.parametrize("select_on_dev", [True, False])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tiny_bert: Path, two_tasks: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               select_on_dev: bool) -> None:
    whole = multitask(_cfg(tiny_bert, two_tasks, tmp_path / "whole", select_on_dev=select_on_dev))
    cut = _cfg(tiny_bert, two_tasks, tmp_path / "cut", select_on_dev=select_on_dev)
    _killed_after_step_4(monkeypatch, cut)
    resumed = multitask(cut)
    assert resumed["resumed_from_step"] == 4 and whole["resumed_from_step"] is None
    assert resumed["history"] == whole["history"] and resumed["tasks"] == whole["tasks"]
    assert _same_tensors(_saved_weights(tmp_path / "cut"), _saved_weights(tmp_path / "whole"))
    written = json.loads((tmp_path / "cut" / "multitask.json").read_text())
    assert written["history"] == json.loads((tmp_path / "whole" / "multitask.json").read_text())["history"]
    assert not (tmp_path / "cut" / "checkpoint").exists()  # recorded: the checkpoint went


@pytest.mark.parametrize("change", ["learning_rate", "seed", "tasks", "no_resume"])
def test_a_checkpoint_of_other_settings_is_not_resumed(tiny_bert: Path, two_tasks: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, change: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    _killed_after_step_4(monkeypatch, _cfg(tiny_bert, two_tasks, tmp_path / "mt"))
    cfgs = [_cfg(tiny_bert, two_tasks, tmp_path / "mt"), _cfg(tiny_bert, two_tasks, None)]
    for cfg in cfgs:
        if change == "learning_rate":
            cfg.train.learning_rate = 1e-3
        elif change == "seed":
            cfg.seed = 14
        elif change == "tasks":
            cfg.tasks = ["toy2", "toy"]  # the same heads, another draw order: resuming it is wrong too
        else:
            cfg.resume = False
    with caplog.at_level("WARNING", logger="transferlm.protocol.multitask"):
        again = multitask(cfgs[0])
    fresh = multitask(cfgs[1])
    assert again["resumed_from_step"] is None
    # --no-resume never reads it; another setting finds it stale and says so.
    warned = [r.getMessage() for r in caplog.records if "starting over" in r.getMessage()]
    assert warned == ([] if change == "no_resume" else [
        f"checkpoint in {tmp_path / 'mt'} was written by a multitask run with another config or data (step 4); "
        "starting over"])
    assert again["history"] == fresh["history"] and again["tasks"] == fresh["tasks"]


def test_a_failed_save_leaves_no_model_folder_and_the_rerun_does_not_train_again(
        tiny_bert: Path, two_tasks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "mt"

    def full_disk(*a, **k) -> None:
        raise OSError("No space left on device")

    with monkeypatch.context() as m:
        m.setattr(mt, "save_file", full_disk)  # the encoder is written, then the heads fail
        with pytest.raises(OSError, match="No space"):
            multitask(_cfg(tiny_bert, two_tasks, out))
    assert not (out / "model").exists() and not list(out.glob(".model*"))
    assert not (out / "multitask.json").exists()
    # The final checkpoint stays until the run is recorded: the rerun only evaluates and saves.
    res = multitask(_cfg(tiny_bert, two_tasks, out))
    assert res["resumed_from_step"] == 8 and (out / "model" / "heads.safetensors").is_file()
    assert not (out / "checkpoint").exists()


def _built(monkeypatch: pytest.MonkeyPatch) -> list[mt.MultiTaskModel]:
    """The multi-task models ``multitask`` builds, recorded (the one whose weights the folder holds)."""
    built: list[mt.MultiTaskModel] = []

    class Recorded(mt.MultiTaskModel):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            built.append(self)

    monkeypatch.setattr(mt, "MultiTaskModel", Recorded)
    return built


def _prompt_run(model: Path, data: Path, out: Path) -> RunConfig:
    from prompt_helpers import prompt_cfg

    cfg = prompt_cfg(model, data, "prompt-finetune")
    cfg.output, cfg.train.max_steps, cfg.train.eval_every = str(out), 2, 2
    return cfg


@pytest.mark.parametrize("base", ["tiny_mlm", "tiny_gpt2", "tiny_llama"])
def test_a_base_with_an_lm_head_saves_it_beside_the_trained_encoder_and_prompt_methods_start_from_it(
        base: str, two_tasks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    base_dir = request.getfixturevalue(base)
    built = _built(monkeypatch)
    out = tmp_path / "mt"
    multitask(_cfg(base_dir, two_tasks, out, checkpoint_every=0))
    monkeypatch.undo()
    folder, encoder = out / "model", built[0].backbone
    kind = "mlm" if base == "tiny_mlm" else "causal"
    assert json.loads((folder / "heads.json").read_text())["lm_head"] == kind
    trained = encoder.state_dict()
    # `run --model` (a bare backbone) gets exactly the trained encoder, BERT's untrained pooler included, as before.
    assert _same_tensors(load_backbone(str(folder)).model.state_dict(), trained)
    # The LM loads with its head: the trained encoder, and the base's LM head ...
    lm, original = load_backbone(str(folder), head=kind).model, load_backbone(str(base_dir), head=kind).model
    core = lm.base_model.state_dict()
    assert core and all(torch.equal(v, trained[k]) for k, v in core.items())
    prefix = f"{lm.base_model_prefix}."
    head = {k: v for k, v in lm.state_dict().items() if not k.startswith(prefix)}
    base_head = {k: v for k, v in original.state_dict().items() if not k.startswith(prefix)}
    out_layer, embeddings = lm.get_output_embeddings().weight, lm.get_input_embeddings().weight
    tied = bool(lm.config.tie_word_embeddings)
    assert tied == (base != "tiny_llama")  # one untied case: the Llama's lm_head is its own
    # ... whose output layer, where the base ties it to the input embeddings, is them: the trained ones.
    assert (out_layer is embeddings) == tied
    out_key = next(f"{n}.weight" for n, m in lm.named_modules(remove_duplicate=False)
                   if m is lm.get_output_embeddings())  # cls.predictions.decoder.weight, lm_head.weight
    embeddings_key = next(k for k, v in encoder.named_parameters() if v is encoder.get_input_embeddings().weight)
    assert torch.equal(out_layer, trained[embeddings_key] if tied else base_head[out_key])
    assert not torch.equal(embeddings, original.get_input_embeddings().weight)  # training moved them
    assert head.keys() == base_head.keys() and all(torch.equal(head[k], base_head[k]) for k in head if k != out_key)
    # A prompt method starts from the folder and trains; fine-tuning a classifier from it still does too.
    prompted = run(_prompt_run(folder, two_tasks, tmp_path / "prompt")).results
    assert prompted["steps"] == 2 and "accuracy" in prompted["metrics"]
    target = RunConfig.from_dict({"task": "toy", "model": str(folder), "quiet": True,
                                  "data": {"data_dir": str(two_tasks), "shots": 8},
                                  "train": {"max_steps": 2, "eval_every": 2, "checkpoint_every": 0}})
    assert "accuracy" in run(target).results["metrics"]


@pytest.mark.parametrize("config", ["as_saved", "no_architectures"])
def test_a_base_without_an_lm_head_saves_the_encoder_alone_which_prompt_methods_refuse(
        tiny_bert: Path, two_tasks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str) -> None:
    base = tiny_bert
    if config == "no_architectures":  # the kind unknown until loading with an MLM head finds no head weights
        base = tmp_path / "bare"
        shutil.copytree(tiny_bert, base)
        settings = json.loads((base / "config.json").read_text())
        del settings["architectures"]
        (base / "config.json").write_text(json.dumps(settings))
    built = _built(monkeypatch)
    out = tmp_path / "mt"
    multitask(_cfg(base, two_tasks, out, checkpoint_every=0))
    monkeypatch.undo()
    folder = out / "model"
    assert json.loads((folder / "heads.json").read_text())["lm_head"] is None
    assert _same_tensors(load_file(str(folder / "model.safetensors")), built[0].backbone.state_dict())
    with pytest.raises(TransferLMError, match="LM head"):
        run(_prompt_run(folder, two_tasks, tmp_path / "prompt"))
