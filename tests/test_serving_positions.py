"""Soft prompts take positions: a served task tokenises as its run did and stays within the position table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import WORDS, make_tiny_bert
from transferlm.config import RunConfig
from transferlm.data.example import Example
from transferlm.protocol.run import run
from transferlm.serving import Registry

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]

TABLE, SOFT = 24, 4  # a BERT with 24 positions and 4 soft tokens: inputs must stop at 20 tokens
LONG = [" ".join(WORDS[i:] + WORDS[:i]) for i in (0, 5)]  # ~40 tokens each: longer than the table


@pytest.fixture(scope="module")
def short_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert24"), positions=TABLE)


@pytest.fixture(scope="module")
def short_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("mlm24"), mlm=True, positions=TABLE)


def _run(model: Path, data: Path, out: Path, method: str, args: dict):
    cfg = RunConfig.from_dict({
        "task": "toy", "model": str(model), "method": method, "output": str(out), "quiet": True,
        "save_model": True, "data": {"data_dir": str(data), "shots": 8}, "method_args": args,
        # train.max_length fills the whole table: the soft prompt does not fit beside a full-length input
        "train": {"max_steps": 2, "learning_rate": 3e-2, "eval_every": 2, "checkpoint_every": 0,
                  "max_length": TABLE}})
    return run(cfg, keep_engine=True).engine


def _served(folder: Path, **kw) -> tuple[dict, torch.Tensor]:
    registry = Registry(None, device="cpu", **kw)  # the base model comes from the run's results.json
    entry = registry.load("t", folder)
    preds = registry.predict(entry.rows([Example(t) for t in LONG]), [entry.host] * len(LONG))
    return entry.describe(), torch.tensor([list(p.probabilities.values()) for p in preds])


@pytest.mark.parametrize("method,args", [
    ("prompt-tuning", {"length": SOFT, "init": "random", "pooling": "mean"}),
    ("prompt-finetune", {"template": "{sentence} it was {answer} .", "label_words": {"0": "bad", "1": "good"},
                         "peft": {"name": "prompt-tuning", "length": SOFT, "init": "random"}}),  # nested
])
def test_long_inputs_are_served_as_the_run_evaluated_them(method: str, args: dict, short_bert: Path,
                                                          short_mlm: Path, toy_data: Path, tmp_path: Path) -> None:
    engine = _run(short_mlm if method == "prompt-finetune" else short_bert, toy_data, tmp_path / "run", method, args)
    folder = tmp_path / "run" / "model"
    assert json.loads((folder / "method.json").read_text())["max_length"] == TABLE - SOFT
    _, truth = engine.predict([Example(t, label=0) for t in LONG])
    truth = torch.as_tensor(truth).float()
    described, served = _served(folder)
    assert described["max_length"] == TABLE - SOFT
    torch.testing.assert_close(served, truth, atol=1e-5, rtol=1e-4)
    # A longer --max-length is still cut to what fits.
    described, served = _served(folder, max_length=100)
    assert described["max_length"] == TABLE - SOFT
    torch.testing.assert_close(served, truth, atol=1e-5, rtol=1e-4)
    # A task folder saved before method.json recorded max_length: the length is computed on load.
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "model" / "method.json").read_text())
    del meta["max_length"]
    (tmp_path / "old" / "model" / "method.json").write_text(json.dumps(meta))
    described, served = _served(tmp_path / "old" / "model")
    assert described["max_length"] == TABLE - SOFT
    torch.testing.assert_close(served, truth, atol=1e-5, rtol=1e-4)
