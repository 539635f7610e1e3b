"""Verbalizers: label words, their errors, multi-token scoring, aggregation, calibration, answer search."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from transferlm.errors import ConfigError
from transferlm.models.loading import load_backbone
from transferlm.prompts.verbalizer import Verbalizer, answer_search, normalize_label_words

# A toy vocabulary: word -> ids (two words are two tokens long).
VOCAB = {"bad": [1], "good": [2], "great": [3], "so so": [4, 5], "very good": [6, 2], "[UNK]": [0]}


def tokenize(word: str) -> list[int]:
    return VOCAB.get(word.strip(), [0])


def make(words, **kw) -> Verbalizer:
    return Verbalizer(words, tokenize, label_names=[f"l{i}" for i in range(len(words))], unk_token_id=0, **kw)


@pytest.mark.parametrize("words, message", [
    ([["bad"], [""]], "empty label word"),
    ([["bad"], ["zzz"]], "unknown to the tokenizer"),
    ([["bad"], ["good", "bad"]], "both map to the word 'bad'"),
    ([["bad"]], "label words name 1 labels but the task has 2"),
])
def test_label_word_errors(words, message: str) -> None:
    names = ["l0", "l1"]
    with pytest.raises(ConfigError) as e:
        Verbalizer(words, tokenize, label_names=names, unk_token_id=0)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_special_token_is_no_label_word(tiny_mlm: Path) -> None:
    from transferlm.data.tasks import TASKS
    from transferlm.prompts.build import prompt_parts

    backbone = load_backbone(str(tiny_mlm), head="mlm")
    with pytest.raises(ConfigError, match=r"label word '\[MASK\]' \(label 'positive'\) contains the tokenizer's special"):
        prompt_parts(backbone, TASKS["SST-2"], template=None, label_words={"0": "terrible", "1": "[MASK]"})
    # Ordinary words still pass.
    assert prompt_parts(backbone, TASKS["SST-2"], template=None,
                        label_words={"0": "terrible", "1": "great"}).verbalizer.num_labels == 2


def test_same_word_through_the_tokenizer_is_caught(tiny_mlm: Path) -> None:
    tok = load_backbone(str(tiny_mlm), head="mlm").tokenizer  # lower-cases: "Good" == "good"
    ids = lambda w: tok(" " + w, add_special_tokens=False)["input_ids"]  # noqa: E731
    with pytest.raises(ConfigError, match="both map to the word 'Good'.*= 'good'"):
        Verbalizer([["good"], ["Good"]], ids, label_names=["a", "b"], unk_token_id=tok.unk_token_id)


def test_label_words_forms() -> None:
    labels, names = ("0", "1"), ("negative", "positive")
    assert normalize_label_words({"0": "bad", "1": ["good", "great"]}, labels, names) == [["bad"], ["good", "great"]]
    assert normalize_label_words({"negative": "bad", "positive": "good"}, labels, names) == [["bad"], ["good"]]
    assert normalize_label_words(["bad", "good"], labels, names) == [["bad"], ["good"]]
    with pytest.raises(ConfigError, match="no word for label '1'"):
        normalize_label_words({"0": "bad"}, labels, names)
    with pytest.raises(ConfigError, match="unknown label"):
        normalize_label_words({"0": "bad", "1": "good", "2": "x"}, labels, names)
    with pytest.raises(ConfigError, match="gives label 'positive' an empty word"):
        normalize_label_words({"0": "bad", "1": None}, labels, names)  # YAML `1:` with nothing after it


def _logprobs(table: dict[tuple[int, int], float], rows: int = 1, width: int = 2, vocab: int = 8) -> torch.Tensor:
    lp = torch.full((rows, width, vocab), -20.0)
    for (pos, tok), v in table.items():
        lp[:, pos, tok] = v
    return lp


def test_multi_token_words_summed_or_averaged() -> None:
    lp = _logprobs({(0, 1): -1.0, (0, 4): -0.5, (1, 5): -2.5})
    rows = torch.zeros(1, 2, dtype=torch.long)
    mean = make([["bad"], ["so so"]], multi_token="mean").project(lp, rows)
    total = make([["bad"], ["so so"]], multi_token="sum").project(lp, rows)
    assert torch.allclose(mean, torch.tensor([[-1.0, -1.5]]))
    assert torch.allclose(total, torch.tensor([[-1.0, -3.0]]))
    # Rows: word w of unit n is read from row rows[n, w] (the causal path uses one row per word).
    lp2 = torch.cat([_logprobs({(0, 1): -1.0}), _logprobs({(0, 4): -0.1, (1, 5): -0.1})])
    scores = make([["bad"], ["so so"]], multi_token="sum").project(lp2, torch.tensor([[0, 1]]))
    assert torch.allclose(scores, torch.tensor([[-1.0, -0.2]]))


def test_several_words_per_label_aggregate() -> None:
    words = [["bad"], ["good", "great"]]
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    for how, expected in [("logsumexp", [0.5, 0.5]), ("max", [0.5 / 0.8, 0.3 / 0.8])]:
        out = make(words, aggregate=how).aggregate(scores).exp()
        assert torch.allclose(out, torch.tensor([expected]), atol=1e-6), how
    mean = make(words, aggregate="mean").aggregate(scores)
    geo = math.sqrt(0.3 * 0.2)
    assert torch.allclose(mean.exp(), torch.tensor([[0.5 / (0.5 + geo), geo / (0.5 + geo)]]), atol=1e-6)


def test_contextual_calibration_changes_a_biased_prediction() -> None:
    verb = make([["bad"], ["good"]])
    # The LM leans to "bad" for everything, content-free input included (p_cf = 0.8 / 0.2) ...
    biased = torch.log(torch.tensor([[0.6, 0.4]]))
    prior = torch.log(torch.tensor([[0.8, 0.2]]))
    assert verb.aggregate(verb.calibrate(biased, None)).argmax(-1).item() == 0
    # ... so 0.4 for "good" is much more than the prior's 0.2: calibrated, the input is "good".
    calibrated = verb.aggregate(verb.calibrate(biased, prior)).exp()
    assert calibrated.argmax(-1).item() == 1
    assert torch.allclose(calibrated, torch.tensor([[0.75 / 2.75, 2 / 2.75]]), atol=1e-6)


def test_full_pipeline_with_prior_rows() -> None:
    verb = make([["bad"], ["good"]])
    logits = torch.zeros(2, 1, 8)
    logits[0, 0, 1], logits[0, 0, 2] = math.log(0.6), math.log(0.4)  # the input
    logits[1, 0, 1], logits[1, 0, 2] = math.log(0.8), math.log(0.2)  # "N/A"
    plain = verb(logits, torch.tensor([[0, 0]]))
    calibrated = verb(logits, torch.tensor([[0, 0]]), torch.tensor([[1, 1]]), torch.tensor([0]))
    assert plain.argmax(-1).item() == 0 and calibrated.argmax(-1).item() == 1


def test_answer_search() -> None:
    scores = torch.log(torch.tensor([[0.1, 0.9], [0.7, 0.3]]))
    assert answer_search(scores).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([answer_search(scores, "sample", g) for _ in range(400)]).float().mean(0)
    assert 0.8 < draws[0] < 0.97 and 0.18 < draws[1] < 0.45
    with pytest.raises(ConfigError, match="answer_search"):
        answer_search(scores, "beam")
