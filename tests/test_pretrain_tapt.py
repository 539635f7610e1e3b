"""TAPT (`task:<name>`) pretrains on the task's training text less the dev texts of the runs that follow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain_helpers import cut_after_step_4, pretrain_cfg
from transferlm.errors import DataError
from transferlm.training.pretrain import PretrainConfig, Pretrainer, pretrain

# ---------------------------------------------------

PROTOCOL_SEEDS = (13, 21, 42, 87, 100)  # the protocol's default seeds (compare's)


def _joined(ex) -> str:
    return " ".join(t for t in (ex.text_a, ex.text_b) if t)


def _dev_texts(task: str, root: Path, shots: int | None, seeds) -> set[str]:
    from transferlm.data.loading import DataOptions, load_task

    return {_joined(e) for s in seeds for e in load_task(task, root, DataOptions(shots=shots, seed=s))[1].dev}


def _pool_texts(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in path.read_text().splitlines()]
    return [line.split(",", 1)[1] for line in path.read_text().splitlines()]


@pytest.fixture
def tapt_data(tmp_path: Path) -> Path:
    """Two tasks with unique texts: ``lm`` in LM-BFF layout (original/train.csv, no dev file; a k-shot folder
    for K=4 seed 13 only) and ``dom`` in the domain layout with its own dev file."""
    root = tmp_path / "tapt-data"
    rows = [f"{label},{'good' if label else 'bad'} movie number {i}" for i in range(24) for label in (1, 0)]
    (root / "lm-bff" / "lm" / "original").mkdir(parents=True)
    (root / "lm-bff" / "lm" / "original" / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "lm-bff" / "lm" / "original" / "test.csv").write_text("1,good test\n0,bad test\n")
    kdir = root / "lm-bff" / "lm" / "k-shot" / "4-13"
    kdir.mkdir(parents=True)
    (kdir / "train.csv").write_text("\n".join(rows[:8]) + "\n")
    (kdir / "dev.csv").write_text("\n".join(rows[-8:]) + "\n")  # not what sampling would draw: read, not redrawn
    (kdir / "test.csv").write_text("1,good test\n0,bad test\n")
    dom = root / "domain" / "dom"
    dom.mkdir(parents=True)
    for split, n in (("train", 24), ("dev", 4), ("test", 2)):
        lines = [json.dumps({"text": f"{split} {'good' if y == 'pos' else 'bad'} paper {i}", "label": y})
                 for i in range(n) for y in ("pos", "neg")]
        (dom / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_tapt_text_holds_no_dev_text_of_the_protocols_runs(tapt_data: Path) -> None:
    """The K=16 runs over the default seeds sample their dev sets from the same training text TAPT reads: each
    of those dev texts would be pretrained on, then selected on. (Failed before: every dev text was in it.)"""
    from transferlm.training.texts import load_phase_texts

    for task, pool_file in (("dom", tapt_data / "domain" / "dom" / "train.jsonl"),
                            ("lm", tapt_data / "lm-bff" / "lm" / "original" / "train.csv")):
        texts = set(load_phase_texts(f"task:{task}", "text", str(tapt_data))[1])
        for seed in PROTOCOL_SEEDS:
            dev = _dev_texts(task, tapt_data, 16, [seed])
            assert dev and not dev & texts, f"{task}: dev texts of seed {seed} in the TAPT text: {sorted(dev & texts)}"
        # Every other training text is kept (for LM-BFF tasks the whole original train, no hold-out of its own).
        assert texts == set(_pool_texts(pool_file)) - _dev_texts(task, tapt_data, 16, PROTOCOL_SEEDS)


def test_tapt_leaves_out_the_dev_splits_of_the_listed_seeds_only(tapt_data: Path) -> None:
    from transferlm.data.loading import DataOptions, load_task
    from transferlm.training.texts import load_phase_texts

    pool = _pool_texts(tapt_data / "domain" / "dom" / "train.jsonl")
    name, texts, excluded = load_phase_texts("task:dom", "text", str(tapt_data), dev_shots=4, dev_seeds=[13, 21])
    dev = _dev_texts("dom", tapt_data, 4, [13, 21])
    assert name == "tapt-dom" and len(dev) > 8, "two seeds' dev sets (8 each) differ"
    assert texts == [t for t in pool if t not in dev] and excluded == len(dev)
    train = {_joined(e) for e in load_task("dom", tapt_data, DataOptions(shots=4, seed=13))[1].train}
    assert (train - dev) <= set(texts), "the run's training texts are still TAPT text"
    # The LM-BFF k-shot folder of seed 13 is read as the run reads it (its dev file, not a fresh draw).
    kdev = set(_pool_texts(tapt_data / "lm-bff" / "lm" / "k-shot" / "4-13" / "dev.csv"))
    lm_texts = set(load_phase_texts("task:lm", "text", str(tapt_data), dev_shots=4, dev_seeds=[13])[1])
    assert not kdev & lm_texts and set(_pool_texts(tapt_data / "lm-bff" / "lm" / "k-shot" / "4-13" / "train.csv")) \
        <= lm_texts


def test_tapt_for_full_data_runs(tapt_data: Path) -> None:
    from transferlm.training.texts import load_phase_texts

    # No dev file: each full-data run holds out a slice with its own seed; none of those slices is TAPT text.
    texts = load_phase_texts("task:lm", "text", str(tapt_data), dev_shots=None, dev_seeds=[13, 21])[1]
    dev = _dev_texts("lm", tapt_data, None, [13, 21])
    assert texts and not dev & set(texts)
    assert set(texts) == set(_pool_texts(tapt_data / "lm-bff" / "lm" / "original" / "train.csv")) - dev, \
        "only those hold-outs are missing"
    # A dev file: the runs select on it, not on training text, so the whole training file is TAPT text.
    _, texts, excluded = load_phase_texts("task:dom", "text", str(tapt_data), dev_shots=None, dev_seeds=[13, 21])
    assert texts == _pool_texts(tapt_data / "domain" / "dom" / "train.jsonl") and excluded == 0


def test_tapt_protocol_errors_are_clear(tapt_data: Path, tiny_bert: Path, tmp_path: Path) -> None:
    from transferlm.errors import ConfigError

    with pytest.raises(DataError, match="--tapt-shots"):  # 48 per class: K=40 cannot be sampled
        Pretrainer(pretrain_cfg(tiny_bert, ["task:dom"], tmp_path / "o", data_dir=str(tapt_data), tapt_shots=40))
    with pytest.raises(ConfigError, match="tapt_seeds"):
        pretrain_cfg(tiny_bert, ["task:dom"], tmp_path / "o", tapt_seeds=[]).validate()


def test_tapt_report_and_resume_follow_the_downstream_protocol(tiny_bert: Path, tapt_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = pretrain_cfg(tiny_bert, ["task:dom"], tmp_path / "cut", data_dir=str(tapt_data), tapt_shots=4, tapt_seeds=[13])
    cut_after_step_4(monkeypatch, cfg)
    stamp = json.loads((tmp_path / ".cut.pretrain" / "settings.json").read_text())
    assert stamp["tapt_shots"] == 4 and stamp["tapt_seeds"] == [13]
    # Other downstream seeds: other TAPT text, so the unfinished work is not resumed.
    report = pretrain(pretrain_cfg(tiny_bert, ["task:dom"], tmp_path / "cut", data_dir=str(tapt_data), tapt_shots=4,
                           tapt_seeds=[13, 21]))
    phase = report["phases"][0]
    assert phase["resumed_from_step"] is None
    assert phase["excluded_dev_texts"] == len(_dev_texts("dom", tapt_data, 4, [13, 21]))
    assert phase["train_texts"] + phase["eval_texts"] == 48 - phase["excluded_dev_texts"]
    recorded = json.loads((tmp_path / "cut" / "pretrain.json").read_text())
    assert recorded["config"]["tapt_seeds"] == [13, 21] and recorded["phases"][0]["excluded_dev_texts"] > 0


def test_pretrain_cli_tapt_protocol_flags(tapt_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from transferlm.cli import main

    seen: list[PretrainConfig] = []
    monkeypatch.setattr("transferlm.training.pretrain.pretrain",
                        lambda cfg: (seen.append(cfg), {"phases": [{"phase": "tapt-dom", "perplexity_before": 9.0,
                                                                     "perplexity_after": 8.0, "train_texts": 30,
                                                                     "excluded_dev_texts": 12, "seconds": 1.0,
                                                                     "tokens_per_second": 5.0}]})[1])
    base = ["pretrain", "--tapt-task", "dom", "--data-dir", str(tapt_data), "--output", str(tmp_path / "o")]
    assert main([*base, "--tapt-shots", "full", "--tapt-seeds", "13,21"]) == 0
    assert "12 dev texts left out" in capsys.readouterr().out
    assert main([*base, "--tapt-shots", "8"]) == 0
    assert main(base) == 0
    assert [(c.tapt_shots, c.tapt_seeds) for c in seen] == [(None, [13, 21]), (8, list(PROTOCOL_SEEDS)),
                                                           (16, list(PROTOCOL_SEEDS))]
    assert [(c.warmup_ratio, c.grad_accum_steps) for c in seen] == [(0.0, 1)] * 3, "the defaults"
