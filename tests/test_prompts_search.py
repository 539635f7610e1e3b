"""Automatic label words and templates (LM-BFF), the search CLI, and the real splade-tiny cloze path (slow)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transferlm.data.example import Example
from transferlm.data.tasks import TaskSpec
from transferlm.errors import ConfigError, TransferLMError
from transferlm.models.loading import load_backbone
from transferlm.prompts.cli import add_search_commands
from transferlm.prompts.demonstrations import DemoSampler
from transferlm.prompts.search import (
    SlotReader,
    candidate_words,
    pool_templates,
    rank_assignments,
    search_label_words,
    search_templates,
    t5_templates,
)
from transferlm.prompts.template import Template, TemplateEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = TaskSpec(name="toy", labels=("0", "1"), label_names=("negative", "positive"))
TRAIN = [Example(t, label=y) for t, y in [("good movie", 1), ("great film", 1), ("love the story", 1),
                                         ("bad movie", 0), ("terrible film", 0), ("hate the story", 0)]]


def test_label_search_returns_the_words_with_the_largest_log_prob_sum(tiny_mlm: Path) -> None:
    backbone = load_backbone(str(tiny_mlm), head="mlm")
    tok = backbone.tokenizer
    template = Template.parse("{sentence} it was {answer} .")
    result = search_label_words(backbone, SPEC, template, TRAIN, TRAIN, k=3, n=4)
    # Brute force, independently of the search's batching: one plain forward per example.
    cands = candidate_words(tok, TemplateEncoder(template, tok))
    assert "[MASK]" not in cands.values() and "good" in cands.values() and "." not in cands.values()
    sums = {0: torch.zeros(len(tok)), 1: torch.zeros(len(tok))}
    for ex in TRAIN:
        enc = tok(f"{ex.text_a} it was {tok.mask_token} .", return_tensors="pt")
        with torch.no_grad():
            logits = backbone.model(**enc).logits[0]
        at = int((enc["input_ids"][0] == tok.mask_token_id).nonzero())
        sums[ex.label] += logits[at].log_softmax(-1)
    for c, name in enumerate(SPEC.label_names):
        ranked = sorted(cands, key=lambda i: -float(sums[c][i]))[:3]
        got = result["per_class"][name]
        assert [w["token_id"] for w in got] == ranked
        assert np.allclose([w["logprob_sum"] for w in got], [float(sums[c][i]) for i in ranked], atol=1e-3)
    # Assignments: one distinct word per class, from those candidates, best first.
    scores = [a["zero_shot"] for a in result["assignments"]]
    assert scores == sorted(scores, reverse=True) and len(result["assignments"]) == 4
    for a in result["assignments"]:
        w0, w1 = a["label_words"]["0"], a["label_words"]["1"]
        assert w0 != w1 and w0 in {w["word"] for w in result["per_class"]["negative"]}


def test_assignment_ranking_finds_the_best_pair() -> None:
    # Word 5 marks class 0 and word 7 class 1; words 6 and 8 are likelier still, but for the other class.
    rng = np.random.RandomState(0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    lp = torch.from_numpy(rng.normal(size=(6, 10)).astype(np.float32) * 0.1)
    lp[labels == 0, 5] += 3.0
    lp[labels == 1, 7] += 3.0
    lp[labels == 1, 6] += 3.5
    lp[labels == 0, 8] += 3.5
    ranked = rank_assignments(lp, labels, [[6, 5, 7], [8, 7, 5]], metric="accuracy", n=3, beam=10)
    assert ranked[0] == ((5, 7), 1.0)
    assert all(len(set(a)) == len(a) for a, _ in ranked)


def _tiny_t5(folder: Path) -> tuple[object, object]:
    from transformers import BertTokenizerFast, T5Config, T5ForConditionalGeneration

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] good bad movie film it was is a the great terrible".split()
    extra = [f"<extra_id_{i}>" for i in range(3)]
    folder.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words + extra)}, do_lower_case=True,
                            additional_special_tokens=extra)
    cfg = T5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                   num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def test_t5_span_filling_proposes_parseable_templates(tmp_path: Path, tiny_mlm: Path) -> None:
    t5, tok = _tiny_t5(tmp_path / "t5")
    templates = t5_templates(t5, tok, TRAIN[:2], ["bad", "good"], is_pair=False, beams=3, max_new_tokens=4, top=50)
    assert templates
    for text in templates:
        t = Template.parse(text)  # every proposal is a valid template with the input and the answer slot
        assert t.kinds.count("a") == 1 and "answer" in t.kinds
    pair = t5_templates(t5, tok, [Example("a movie", "the film", 1)], ["no", "yes"], is_pair=True, beams=2,
                        max_new_tokens=3)
    assert all(Template.parse(p).validate_for(is_pair=True) for p in pair)


def test_t5_span_filling_keeps_the_sentinels_of_long_inputs(tmp_path: Path) -> None:
    t5, tok = _tiny_t5(tmp_path / "t5")
    inputs: list[list[int]] = []
    real = t5.generate

    def spy(**kw):
        inputs.append(kw["input_ids"][0].tolist())
        return real(**kw)

    t5.generate = spy
    long = " ".join(["good movie"] * 200)  # 400 tokens, over T5's 256 here
    t5_templates(t5, tok, [Example(long, label=1)], ["bad", "good"], is_pair=False, beams=2, max_new_tokens=2)
    t5_templates(t5, tok, [Example(long, long, label=0)], ["bad", "good"], is_pair=True, beams=2, max_new_tokens=2)
    sentinels = tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    assert len(inputs) == 3
    for ids in inputs:
        assert len(ids) <= 256 and all(s in ids for s in sentinels)
        assert ids.count(tok.convert_tokens_to_ids("movie")) > 50  # the inputs were cut, not dropped


def test_template_ranking_skips_what_the_lm_cannot_use(tiny_llama: Path) -> None:
    backbone = load_backbone(str(tiny_llama), head="causal")
    cands = ["{sentence} it was {answer} .", "{answer} ! {sentence}", "{sentence} is {answer}"]
    ranked = search_templates(backbone, SPEC, {"0": "bad", "1": "good"}, cands, TRAIN)
    # The causal LM cannot read an input after the answer slot: that candidate is left out.
    assert [r["template"] for r in ranked if r["template"] == "{answer} ! {sentence}"] == []
    assert len(ranked) == 2 and ranked[0]["zero_shot"] >= ranked[1]["zero_shot"]
    assert len(pool_templates(True)) > 3 and all("{sentence2" in t for t in pool_templates(True))
    with pytest.raises(ConfigError, match="empty"):
        search_templates(backbone, SPEC, {"0": "bad", "1": "good"}, cands, [])
    # Where nothing can be scored, the error says why (not an empty ranking).
    long = "very good"
    assert len(backbone.tokenizer(" " + long, add_special_tokens=False)["input_ids"]) > 1
    with pytest.raises(ConfigError, match=f"none of the 3 candidates.*'{long}' are several tokens.*search labels"):
        search_templates(backbone, SPEC, {"0": "bad", "1": long}, cands, TRAIN)
    with pytest.raises(ConfigError, match="none of the 1 candidates.*no input may follow"):
        search_templates(backbone, SPEC, {"0": "bad", "1": "good"}, ["{answer} ! {sentence}"], TRAIN)
    reader = SlotReader(backbone)
    lp = reader.logprobs(Template.parse(cands[0]), TRAIN)
    reader.close()
    assert lp.shape == (6, len(backbone.tokenizer)) and torch.allclose(lp.exp().sum(-1), torch.ones(6), atol=1e-4)


def search_cli(*argv: str) -> int:
    """``transferlm search ...`` through the real parser (wired here until cli.py calls add_search_commands)."""
    from transferlm import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "search" not in sub.choices:
        add_search_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except TransferLMError as e:
        print(f"transferlm: error: {e}", file=sys.stderr)
        return e.exit_code


def test_search_cli_writes_ranked_json_and_auto_needs_dev(tiny_mlm: Path, toy_data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--task", "toy", "--data-dir", str(toy_data), "--shots", "8", "--model", str(tiny_mlm), "--quiet"]
    tpl = "{sentence} it was {answer} ."
    assert search_cli("search", "labels", *common, "--template", tpl, "--k", "3", "--n", "2",
                      "--output", str(tmp_path / "labels")) == 0
    out = json.loads((tmp_path / "labels" / "label_words.json").read_text())
    assert out["rank_on"] == "dev" and len(out["assignments"]) == 2 and set(out["best"]["label_words"]) == {"0", "1"}
    assert search_cli("search", "templates", *common, "--label-words", '{"0": "bad", "1": "good"}', "--n", "3",
                      "--output", str(tmp_path / "templates")) == 0
    ranked = json.loads((tmp_path / "templates" / "templates.json").read_text())["templates"]
    assert len(ranked) == 3 and ranked[0]["zero_shot"] >= ranked[-1]["zero_shot"]
    # Each search takes the other's output file: its best candidate.
    assert search_cli("search", "templates", *common, "--label-words", str(tmp_path / "labels" / "label_words.json"),
                      "--n", "2", "--output", str(tmp_path / "chained-t")) == 0
    chained = json.loads((tmp_path / "chained-t" / "templates.json").read_text())
    assert chained["label_words"] == out["best"]["label_words"]
    assert search_cli("search", "labels", *common, "--template", str(tmp_path / "templates" / "templates.json"),
                      "--k", "2", "--n", "1", "--output", str(tmp_path / "chained-l")) == 0
    assert json.loads((tmp_path / "chained-l" / "label_words.json").read_text())["best"]["template"] == \
        ranked[0]["template"]
    # --auto: fine-tune each kept candidate briefly and re-rank by dev.
    assert search_cli("search", "labels", *common, "--template", tpl, "--k", "2", "--n", "2", "--auto",
                      "--steps", "2", "--set", "train.eval_every=2", "--output", str(tmp_path / "auto")) == 0
    auto = json.loads((tmp_path / "auto" / "label_words.json").read_text())
    assert all("finetuned_dev" in a for a in auto["assignments"])
    # Own data with exactly K per class: no dev split to select on.
    mine = tmp_path / "mine.csv"
    mine.write_text("sentence,label\n" + "".join(f"good movie {i},1\nbad movie {i},0\n" for i in range(4)))
    capsys.readouterr()
    code = search_cli("search", "labels", "--task", "mine", "--train-file", str(mine), "--shots", "4",
                      "--model", str(tiny_mlm), "--template", tpl, "--auto", "--output", str(tmp_path / "x"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--auto" in err and "no dev split" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_splade_tiny_cloze_end_to_end_with_label_search(data_dir: Path, tmp_path: Path) -> None:
    from transferlm.config import RunConfig
    from transferlm.protocol.run import load_run_data, run

    cfg = RunConfig.from_dict({"task": "SST-2", "model": "splade-tiny", "method": "prompt-zero-shot", "seed": 13,
                               "quiet": True, "data": {"data_dir": str(data_dir), "shots": 16},
                               "train": {"max_length": 64, "max_steps": 16, "eval_every": 8,
                                         "learning_rate": 1e-4, "checkpoint_every": 0}})
    zs = run(cfg).results
    assert zs["method_config"]["template"] is None and zs["data"]["sizes"]["test"] == 872
    assert 0.3 < zs["metrics"]["accuracy"] < 0.9  # the LM-BFF template and words, read at [MASK]
    spec, data = load_run_data(cfg)
    backbone = load_backbone("splade-tiny", head="mlm")
    template = Template.parse("{sentence} It was {answer}.")
    result = search_label_words(backbone, spec, template, data.train, data.dev, k=5, n=3)
    reader = SlotReader(backbone, max_length=64)
    lp = reader.logprobs(template, data.train)
    reader.close()
    cands = candidate_words(backbone.tokenizer, TemplateEncoder(template, backbone.tokenizer))
    y = np.array([e.label for e in data.train])
    for c, name in enumerate(spec.label_names):
        totals = lp[torch.from_numpy(y == c)].sum(0)
        best = max(cands, key=lambda i: float(totals[i]))
        assert result["per_class"][name][0]["token_id"] == best
    best_words = result["assignments"][0]["label_words"]
    ft = run(RunConfig.from_dict({**cfg.to_dict(), "method": "prompt-finetune",
                                  "method_args": {"label_words": best_words}})).results
    assert ft["steps"] == 16 and ft["method_config"]["label_words"] == best_words
    # SBERT-nearest demonstrations with the packaged MiniLM: a paraphrase finds its original.
    sampler = DemoSampler(data.train, num_labels=2, strategy="similar", k=1)
    original = data.train[5]
    assert sampler.sample(Example(original.text_a.upper() + " !"))[0] is original
