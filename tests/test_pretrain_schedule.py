"""Pretraining schedules: warm-up, gradient accumulation, and steps with nothing to learn from."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain_helpers import cut_after_step_4, pretrain_cfg, strict_json
from transferlm.training.pretrain import PretrainConfig, Pretrainer, pretrain

# --- learning-rate warm-up -------------------------------------------------------------------------------

def _spy_rates(monkeypatch: pytest.MonkeyPatch, head: set[str] | None = None) -> list[list[tuple[bool, float]]]:
    """Per optimizer update: (whether the group is new-head weights, its learning rate) for every group."""
    from transferlm.training import pretrain as pretrain_mod

    seen: list[list[tuple[bool, float]]] = []
    real = pretrain_mod.adamw

    def spy(*a, **k):
        opt = real(*a, **k)
        opt.register_step_pre_hook(lambda o, *_: seen.append([(bool(head) and set(g["names"]) <= head, g["lr"])
                                                               for g in o.param_groups]))
        return opt

    monkeypatch.setattr(pretrain_mod, "adamw", spy)
    return seen


def test_warmup_then_linear_decay_in_every_phase(tiny_llama: Path, text_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Gururangan et al.'s schedule: linear warm-up over warmup_ratio of each phase's steps, then linear decay to 0,
    as the fine-tuning engine's (failed before: no warmup_ratio; the rate decayed from the first step)."""
    seen = _spy_rates(monkeypatch)
    cfg = pretrain_cfg(tiny_llama, [str(text_file), str(text_file)], tmp_path / "o", warmup_ratio=0.2)
    cfg.steps, cfg.checkpoint_every, cfg.eval_every = 10, 0, 0
    pretrain(cfg)
    expected = [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]  # 2 warm-up steps of 10
    assert len(seen) == 20
    for phase in (seen[:10], seen[10:]):
        assert [rates[0][1] for rates in phase] == pytest.approx([5e-5 * f for f in expected])
        assert all(len({lr for _, lr in rates}) == 1 for rates in phase), "one rate for every group"


def test_the_encoder_warms_up_when_it_starts_training_behind_a_new_head(tiny_bert: Path, text_file: Path,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With a new MLM head trained alone for head_warmup_steps, a warm-up from step 0 would be spent while the
    encoder is frozen: the head warms up from step 0, the encoder from its first step of training."""
    trainer = Pretrainer(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))
    seen = _spy_rates(monkeypatch, set(trainer.new_head))
    cfg = pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o", warmup_ratio=0.2)
    cfg.steps, cfg.head_warmup_steps, cfg.checkpoint_every, cfg.eval_every = 10, 3, 0, 0
    pretrain(cfg)
    head = [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    encoder = [0.0, 0.0, 0.0, 0.5, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]  # ramps from step 3, capped by the decay
    assert len(seen) == 10 and {is_head for is_head, _ in seen[0]} == {True, False}
    for kind, factors in ((True, head), (False, encoder)):
        for rates, f in zip(seen, factors, strict=True):
            assert all(lr == pytest.approx(5e-5 * f) for is_head, lr in rates if is_head == kind)


def test_no_warmup_keeps_the_old_schedule_to_the_bit(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy_rates(monkeypatch)
    cfg = pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o")  # warmup_ratio 0 (the default)
    cfg.steps, cfg.checkpoint_every, cfg.eval_every = 7, 0, 0
    pretrain(cfg)
    assert [{lr for _, lr in rates} for rates in seen] == [{5e-5 * max(0.0, 1 - s / 7)} for s in range(7)]


def test_resume_with_warmup_matches_an_uninterrupted_run(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule's state is in the checkpoint: a run cut after step 4 (of 6, 3 of them warm-up, the encoder's
    from step 2) and resumed takes the same steps at the same rates."""
    ref = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "ref", warmup_ratio=0.5))["phases"][0]
    cut_after_step_4(monkeypatch, pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", warmup_ratio=0.5))
    cut = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", warmup_ratio=0.5))["phases"][0]
    assert cut["resumed_from_step"] == 4 and cut["history"] == ref["history"]
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warmup_ratio_out_of_range_is_a_config_error(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    from transferlm.errors import ConfigError

    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=r"warmup_ratio must be in \[0, 1\)"):
            pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o", warmup_ratio=bad).validate()


# --- gradient accumulation -------------------------------------------------------------------------------

def _fixed_masks(counts: list[int]):
    """A ``Pretrainer._batch`` whose MLM masks are a function of each row alone (not of the batch it is in or
    the step's seed), so B + B rows and the same 2B rows in one batch are masked alike; ``counts`` gets each
    training batch's number of masked tokens."""
    def batch(self, rows, key):
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [self.tokenizer.pad_token_id] * (n - len(r["input_ids"])) for r in rows])
        special = torch.tensor([r["special_tokens_mask"] + [1] * (n - len(r["input_ids"])) for r in rows])
        pick = ((ids * 7 + torch.arange(n)) % 4 == 0) & (special == 0)
        labels = torch.where(pick, ids, torch.full_like(ids, -100))
        if key < 10**9:
            counts.append(int(pick.sum()))
        return {"input_ids": torch.where(pick, torch.full_like(ids, self.tokenizer.mask_token_id), ids),
                "attention_mask": (special == 0) | (ids != self.tokenizer.pad_token_id), "labels": labels}
    return batch


def _spy_grads(monkeypatch: pytest.MonkeyPatch) -> list[dict[int, torch.Tensor]]:
    """The gradients each optimizer update applies (after clipping), by parameter position."""
    from transferlm.training import pretrain as pretrain_mod

    seen: list[dict[int, torch.Tensor]] = []
    real = pretrain_mod.adamw

    def spy(*a, **k):
        opt = real(*a, **k)
        opt.register_step_pre_hook(lambda o, *_: seen.append(
            {i: p.grad.clone() for i, p in enumerate(p for g in o.param_groups for p in g["params"])
             if p.grad is not None}))
        return opt

    monkeypatch.setattr(pretrain_mod, "adamw", spy)
    return seen


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_accumulating_two_micro_batches_equals_one_batch_of_both(objective: str, tiny_bert: Path, tiny_llama: Path,
                                                                 text_file: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """grad_accum_steps=2 at batch_size 4 takes the update of one batch of those 8 rows (dropout is off in the
    tiny models). Each micro-batch's loss is a mean over its own predicted tokens, so the two are weighted by their
    token counts, not halved (failed before: no grad_accum_steps)."""
    counts: list[int] = []
    if objective == "mlm":
        monkeypatch.setattr(Pretrainer, "_batch", _fixed_masks(counts))
    grads = _spy_grads(monkeypatch)
    outputs = {}
    for batch_size, accum in ((8, 1), (4, 2)):
        cfg = pretrain_cfg(tiny_bert if objective == "mlm" else tiny_llama, [str(text_file)], tmp_path / f"b{batch_size}",
                   grad_accum_steps=accum)
        cfg.batch_size, cfg.steps, cfg.head_warmup_steps, cfg.checkpoint_every, cfg.eval_every = batch_size, 2, 0, 0, 0
        outputs[accum] = pretrain(cfg)["phases"][0]
    if objective == "mlm":
        assert counts[2] != counts[3], "micro-batches of unequal masked counts: a plain mean of the two would differ"
    assert len(grads) == 4
    for one, two in zip(grads[:2], grads[2:], strict=True):
        assert one.keys() == two.keys()
        for i in one:
            assert torch.allclose(one[i], two[i], rtol=1e-4, atol=1e-7), i
    for h1, h2 in zip(outputs[1]["history"], outputs[2]["history"], strict=True):
        assert h1["step"] == h2["step"] and h1["loss"] == pytest.approx(h2["loss"], rel=1e-5)
    a, b = load_file(str(tmp_path / "b8" / "model.safetensors")), load_file(str(tmp_path / "b4" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_accumulation_counts_every_micro_batchs_tokens(tiny_llama: Path, text_file: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from transferlm.training import pretrain as pretrain_mod

    seen: list[int] = []
    original = Pretrainer._batch

    def counting(self, rows, key):
        batch = original(self, rows, key)
        if key < 10**9:
            seen.append(int(batch["attention_mask"].sum()))
        return batch

    monkeypatch.setattr(Pretrainer, "_batch", counting)
    clock = iter([100.0, 102.0])  # the phase's training takes 2 s
    monkeypatch.setattr(pretrain_mod, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    cfg = pretrain_cfg(tiny_llama, [str(text_file)], tmp_path / "o", grad_accum_steps=3)
    cfg.steps, cfg.checkpoint_every, cfg.eval_every = 2, 0, 0
    phase = pretrain(cfg)["phases"][0]
    assert len(seen) == 6, "2 updates of 3 micro-batches"
    assert phase["seconds"] == 2.0 and phase["tokens_per_second"] == round(sum(seen) / 2, 1)
    assert [h["step"] for h in phase["history"]] == [1, 2], "steps count optimizer updates"


def test_resume_in_the_middle_of_an_accumulation(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints fall on update boundaries: a run killed in the second micro-batch of update 5 resumes from
    update 4 and takes update 5 whole, once (no micro-batch counted twice, none lost)."""
    ref = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "ref", grad_accum_steps=2))["phases"][0]
    original = Pretrainer._batch
    keys: list[int] = []

    def dying(self, rows, key):
        if key == 9:  # update 5's second micro-batch (keys 2 * update + j)
            raise KeyboardInterrupt
        if key < 10**9:
            keys.append(key)
        return original(self, rows, key)

    with monkeypatch.context() as m:
        m.setattr(Pretrainer, "_batch", dying)
        with pytest.raises(KeyboardInterrupt):
            pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", grad_accum_steps=2))
        assert keys == list(range(9))
        keys.clear()
        m.setattr(Pretrainer, "_batch", lambda self, rows, key: (keys.append(key) if key < 10**9 else None,
                                                                  original(self, rows, key))[1])
        cut = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", grad_accum_steps=2))["phases"][0]
    assert keys == [8, 9, 10, 11], "update 5 from its first micro-batch, then update 6"
    assert cut["resumed_from_step"] == 4 and cut["history"] == ref["history"]
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grad_accum_steps_must_be_positive(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    from transferlm.errors import ConfigError

    with pytest.raises(ConfigError, match="grad_accum_steps must be > 0, got 0"):
        pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o", grad_accum_steps=0).validate()


# --- a batch with nothing masked; no NaN in pretrain.json ----------------------------------------------------

@pytest.mark.parametrize("step", [0, 2])
def test_a_batch_with_nothing_masked_is_skipped_not_nan(step: int, tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The collator can mask nothing in a batch (short texts, small batches): its mean loss is 0/0. The update is
    skipped, the history says so, and pretrain.json stays valid JSON (failed before: "loss": NaN in the file)."""
    original = Pretrainer._batch

    def unmasked(self, rows, key):
        batch = original(self, rows, key)
        if key == step:
            keep = batch["labels"] != -100
            batch["input_ids"][keep] = batch["labels"][keep]
            batch["labels"][:] = -100
        return batch

    monkeypatch.setattr(Pretrainer, "_batch", unmasked)
    updates = _spy_grads(monkeypatch)
    phase = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))["phases"][0]
    skipped = phase["history"][step]
    assert skipped["step"] == step + 1 and skipped["loss"] is None and skipped["skipped"] == "nothing masked"
    assert all(isinstance(h["loss"], float) and math.isfinite(h["loss"]) and "skipped" not in h
               for i, h in enumerate(phase["history"]) if i != step)
    assert len(updates) == 5, "no optimizer update for the skipped step"
    assert all(torch.isfinite(g).all() for grads in updates for g in grads.values())
    weights = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    recorded = strict_json(tmp_path / "o" / "pretrain.json")["phases"][0]["history"][step]
    assert recorded == {**skipped, "loss": None}


def test_pretrain_json_never_holds_nan(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A perplexity over no masked token is NaN: written as null, not as NaN (not JSON)."""
    monkeypatch.setattr(Pretrainer, "perplexity", lambda self, rows: float("nan"))
    cfg = pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o")
    report = pretrain(cfg)
    assert math.isnan(report["phases"][0]["perplexity_before"])
    phase = strict_json(tmp_path / "o" / "pretrain.json")["phases"][0]
    assert phase["perplexity_before"] is None and phase["perplexity_after"] is None
    assert phase["history"][2]["perplexity"] is None


def test_pretrain_cli_schedule_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.cli import main

    seen: list[PretrainConfig] = []
    monkeypatch.setattr("transferlm.training.pretrain.pretrain", lambda cfg: seen.append(cfg) or {"phases": []})
    base = ["pretrain", "--text", str(tmp_path / "t.txt"), "--output", str(tmp_path / "o")]
    assert main([*base, "--warmup-ratio", "0.06", "--grad-accum-steps", "4"]) == 0
    assert (seen[0].warmup_ratio, seen[0].grad_accum_steps) == (0.06, 4)


@pytest.mark.parametrize("setting", [{"warmup_ratio": 0.5}, {"grad_accum_steps": 2}])
def test_unfinished_work_with_another_warmup_or_accumulation_is_not_resumed(setting: dict, tiny_bert: Path,
                                                                            text_file: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Both settings are in the resume stamp: a checkpoint of another schedule or batch is not continued."""
    cut_after_step_4(monkeypatch, pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    stamp = json.loads((tmp_path / ".cut.pretrain" / "settings.json").read_text())
    assert stamp["warmup_ratio"] == 0.0 and stamp["grad_accum_steps"] == 1
    report = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", **setting))
    assert report["phases"][0]["resumed_from_step"] is None
    config = json.loads((tmp_path / "cut" / "pretrain.json").read_text())["config"]
    assert all(config[k] == v for k, v in setting.items())
