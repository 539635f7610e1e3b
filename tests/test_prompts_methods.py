"""Prompt methods on tiny random LMs: what the model reads, demonstrations, calibration, the three methods."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from prompt_helpers import PROMPT, SPEC, FakeEmbedder, demo_pool, prompt_cfg
from transferlm.data.example import Example
from transferlm.data.tasks import TaskSpec
from transferlm.errors import ConfigError
from transferlm.methods import get_method
from transferlm.methods.efficient import PEFT_METHODS
from transferlm.models.loading import load_backbone
from transferlm.prompts.build import build_prompt, predict_scores
from transferlm.prompts.demonstrations import DemoSampler
from transferlm.protocol.run import load_run_data, run

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = [Example("good movie", label=1), Example("bad film very bad plot and boring acting", label=0),
            Example("fun", label=1)]


@pytest.fixture(scope="module")
def mlm(tiny_mlm: Path):
    return load_backbone(str(tiny_mlm), head="mlm")


@pytest.fixture(scope="module")
def llama(tiny_llama: Path):
    return load_backbone(str(tiny_llama), head="causal")


def _manual(backbone, batch, word_ids: list[int]) -> torch.Tensor:
    """Label log-probs from a plain forward: the full logits at the answer position, label words kept."""
    with torch.no_grad():
        logits = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    at = logits[torch.arange(len(logits)), batch["positions"][:, 0]]
    return at[:, word_ids].log_softmax(-1)


@pytest.mark.parametrize("which", ["mlm", "llama"])
def test_zero_shot_reads_the_lm_at_the_answer_slot(which: str, request: pytest.FixtureRequest) -> None:
    backbone = request.getfixturevalue(which)
    setup = build_prompt(backbone, SPEC, max_length=32, **PROMPT)
    batch = setup.collate(EXAMPLES)
    tok = backbone.tokenizer
    ids = batch["input_ids"]
    for r in range(len(EXAMPLES)):
        row = tok.convert_ids_to_tokens(ids[r][batch["attention_mask"][r].bool()].tolist())
        p = int(batch["positions"][r, 0])
        if which == "mlm":  # the cloze slot is the mask, exactly after "it was"
            assert row[p] == "[MASK]" and row[p - 2:p] == ["it", "was"] and row[p + 1] == "."
        else:  # the next token after "... it was" is the answer: the row ends there
            assert row[p - 1:p + 1] == ["it", "was"] and p == len(row) - 1
    words = [tok.convert_tokens_to_ids(w) for w in ("bad", "good")]
    expected = _manual(backbone, batch, words)
    got = torch.from_numpy(predict_scores(setup, EXAMPLES))
    assert torch.allclose(got, expected, atol=1e-5)


def test_causal_multi_token_word_is_scored_by_teacher_forcing(llama) -> None:
    words = {"0": "bad", "1": "very good"}
    for how in ("sum", "mean"):
        setup = build_prompt(llama, SPEC, template=PROMPT["template"], label_words=words, max_length=32,
                             multi_token=how)
        got = torch.from_numpy(predict_scores(setup, EXAMPLES[:1]))
        tok = llama.tokenizer
        prefix = tok("good movie it was", add_special_tokens=True)["input_ids"][:-1]  # [CLS] ... (no [SEP])
        very, good, bad = tok.convert_tokens_to_ids(["very", "good", "bad"])
        with torch.no_grad():
            lp = llama.model(input_ids=torch.tensor([prefix + [very]])).logits[0].log_softmax(-1)
        n = len(prefix)
        word = lp[n - 1, very] + lp[n, good]
        scores = torch.stack([lp[n - 1, bad], word / 2 if how == "mean" else word]).log_softmax(-1)
        assert torch.allclose(got[0], scores, atol=1e-5), how


def test_mlm_multi_token_word_gets_as_many_masks(mlm) -> None:
    setup = build_prompt(mlm, SPEC, template=PROMPT["template"], label_words={"0": "bad", "1": "very good"},
                         max_length=32, multi_token="sum")
    batch = setup.collate(EXAMPLES[:1])
    mask = mlm.tokenizer.mask_token_id
    assert sorted((batch["input_ids"] == mask).sum(1).tolist()) == [1, 2]  # one row per word length
    with torch.no_grad():
        logits = mlm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    very, good, bad = mlm.tokenizer.convert_tokens_to_ids(["very", "good", "bad"])
    r1, r2 = (0, 1) if (batch["input_ids"][0] == mask).sum() == 1 else (1, 0)
    p1, p2 = int(batch["positions"][r1, 0]), int(batch["positions"][r2, 0])
    manual = torch.stack([logits[r1, p1, bad], logits[r2, p2, very] + logits[r2, p2 + 1, good]]).log_softmax(-1)
    assert torch.allclose(torch.from_numpy(predict_scores(setup, EXAMPLES[:1]))[0], manual, atol=1e-5)


def test_calibrated_model_divides_by_the_content_free_prior(mlm) -> None:
    plain = build_prompt(mlm, SPEC, max_length=32, **PROMPT)
    calibrated = build_prompt(mlm, SPEC, max_length=32, calibrate=True, **PROMPT)
    p = torch.from_numpy(predict_scores(plain, EXAMPLES))
    prior = torch.from_numpy(predict_scores(plain, [Example("N/A")]))
    got = torch.from_numpy(predict_scores(calibrated, EXAMPLES))
    assert torch.allclose(got, (p - prior).log_softmax(-1), atol=1e-5)


def test_sampled_answers_do_not_depend_on_the_batch(mlm) -> None:
    # answer_search=sample draws each input's answer from its own seed: the same whatever shares its batch.
    examples = [Example(f"{a} {b}") for a in ("good", "bad", "fun", "boring") for b in ("movie", "plot", "cat")]
    setup = build_prompt(mlm, SPEC, max_length=32, search="sample", seed=3, **PROMPT)
    whole = predict_scores(setup, examples, batch_size=len(examples))
    assert set(np.unique(whole)) <= {0.0, -1e4} and (whole == 0).sum(1).tolist() == [1] * len(examples)
    for size in (1, 5):
        assert np.array_equal(predict_scores(setup, examples, batch_size=size), whole), size
    assert np.array_equal(predict_scores(setup, examples[::-1], batch_size=7)[::-1], whole)


def test_regression_is_the_expected_value_between_two_poles(mlm) -> None:
    spec = TaskSpec(name="STS-B", text_columns=("sentence1", "sentence2"), regression=True, metric="pearson")
    setup = build_prompt(mlm, spec, template=None, label_words=None, max_length=32)
    assert setup.template.source == "{sentence1} {answer}, {sentence2|lower_first}"
    pairs = [Example("a cat", "the dog", 1.0), Example("good movie", "bad film", 4.0)]
    values = predict_scores(setup, pairs)
    probs = torch.from_numpy(predict_scores(build_prompt(mlm, spec.with_overrides(regression=False, labels=("0", "1")),
                                                         template=None, label_words=None, max_length=32), pairs))
    assert np.allclose(values, 5.0 * probs[:, 1].exp().numpy(), atol=1e-5)
    # With LM-BFF demonstrations: one per half (split at the median), each showing its nearer pole's word.
    pool = [Example(f"a cat {i}", "the dog", float(i)) for i in range(6)]
    sampler = DemoSampler(pool, num_labels=1, per_class=True, regression=True, seed=0)
    with_demos = build_prompt(mlm, spec, template=None, label_words=None, max_length=64, sampler=sampler,
                              eval_samples=2)
    row = mlm.tokenizer.convert_ids_to_tokens(with_demos.collate(pairs[:1])["input_ids"][0].tolist())
    assert sum(t in ("no", "yes") for t in row) == 2  # "No" for a low score, "Yes" for a high one
    assert 0.0 <= float(predict_scores(with_demos, pairs[:1])[0]) <= 5.0


def test_regression_demonstrations_show_the_word_of_the_half_they_were_drawn_from(mlm) -> None:
    # Scores mostly low: the median (1.25) is below the poles' middle (2.5). Drawn one per half, the
    # demonstrations must show one "No" and one "Yes", whichever threshold splits the halves.
    spec = TaskSpec(name="STS-B", text_columns=("sentence1", "sentence2"), regression=True, metric="pearson")
    pool = [Example(f"a cat {w}", "the dog", v) for w, v in zip(("good", "bad", "fun", "fine", "love", "hate"),
                                                                  (0.0, 0.5, 1.0, 1.5, 2.0, 4.5), strict=True)]
    for split in (None, 2.5):
        sampler = DemoSampler(pool, num_labels=1, per_class=True, regression=True, seed=0, split=split)
        setup = build_prompt(mlm, spec, template=None, label_words=None, max_length=96, sampler=sampler,
                             eval_samples=8)
        setup.model.eval()
        batch = setup.collate([Example("good movie", "bad film", 3.0)])
        tok = mlm.tokenizer
        for r in range(batch["input_ids"].shape[0]):
            row = tok.convert_ids_to_tokens(batch["input_ids"][r].tolist())
            assert sorted(t for t in row if t in ("no", "yes")) == ["no", "yes"], (split, row)
    # k in-context examples (no classes to balance) show the nearer pole's word: 1.5 and 2.0 are "No",
    # though 2.0 is above their median.
    icl = build_prompt(mlm, spec, template=None, label_words=None, max_length=96,
                       sampler=DemoSampler(pool[3:5], num_labels=1, k=2, regression=True))
    row = mlm.tokenizer.convert_ids_to_tokens(icl.collate([Example("good movie", "bad film", 3.0)])["input_ids"][0])
    assert [t for t in row if t in ("no", "yes")] == ["no", "no"]
    # prompt-finetune splits them as LM-BFF does: at the middle of the poles (2.5 on STS-B).
    method = get_method("prompt-finetune")
    cfg = method.parse_config({"demonstrations": True, "demo_selection": "random"})
    prepared = method.prepare(mlm, spec, cfg, max_length=96, train=pool)
    assert prepared.collate.sampler.split == 2.5
    assert [[pool[i].label for i in c] for c in prepared.collate.sampler.classes] == [[0.0, 0.5, 1.0, 1.5, 2.0],
                                                                                      [4.5]]


def test_lmbff_demonstrations_one_per_class_from_the_most_similar_half() -> None:
    pool = demo_pool()
    sampler = DemoSampler(pool, num_labels=2, strategy="similar", per_class=True, seed=1, embedder=FakeEmbedder())
    query = pool[0]  # "good movie": itself is never a demonstration
    seen = set()
    for draw in range(40):
        demos = sampler.sample(query, draw)
        assert [d.label for d in demos] == [0, 1] and query not in demos
        seen.update(d.text_a for d in demos)
    # Expected: per class, the ceil(50%) most similar examples (the query itself excluded).
    emb = FakeEmbedder()
    top_half = set()
    for c in (0, 1):
        members = [e for e in pool if e.label == c and e is not query]
        sims = emb([e.text_a for e in members]) @ emb([query.text_a])[0]
        order = np.argsort(-sims, kind="stable")[:(len(members) + 1) // 2]
        top_half |= {members[i].text_a for i in order}
    assert seen == top_half
    assert sampler.sample(query, 3) == sampler.sample(query, 3)  # a function of (seed, input, draw)


def test_icl_demonstrations_random_or_nearest() -> None:
    pool = demo_pool()
    near = DemoSampler(pool, num_labels=2, strategy="similar", k=3, embedder=FakeEmbedder())
    assert all("good" in d.text_a for d in near.sample(Example("good acting")))
    rand = DemoSampler(pool, num_labels=2, strategy="random", k=4, seed=3)
    a, b = rand.sample(Example("x")), rand.sample(Example("y"))
    assert len(a) == 4 and len(set(map(id, a))) == 4 and a != b and a == rand.sample(Example("x"))
    assert DemoSampler(pool, num_labels=2, k=0).sample(Example("x")) == []


def test_demonstrations_that_do_not_fit_are_dropped_and_logged(llama, caplog: pytest.LogCaptureFixture) -> None:
    pool = demo_pool()
    sampler = DemoSampler(pool, num_labels=2, k=4, seed=0)
    setup = build_prompt(llama, SPEC, max_length=20, sampler=sampler, **PROMPT)
    with caplog.at_level(logging.WARNING):
        batch = setup.collate(EXAMPLES[:1])
    assert batch["attention_mask"].sum(1).max() <= 20
    assert "dropped" in caplog.text and "of 4" in caplog.text and "20 tokens" in caplog.text
    # It says which classes lost demonstrations (with one per class, a drop unbalances them).
    m = re.search(r"dropped (\d+) \(((?:\w+ \d+(?:, )?)+) by label\).*of 4 \(([\w, ]+)\) for input", caplog.text)
    assert m is not None, caplog.text
    counts = {k: int(v) for k, v in (part.split() for part in m.group(2).split(", "))}
    assert set(counts) <= set(SPEC.label_names) and sum(counts.values()) == int(m.group(1))
    assert set(m.group(3).split(", ")) <= set(counts)
    strict = build_prompt(llama, SPEC, max_length=20, sampler=sampler, demo_overflow="error", **PROMPT)
    with pytest.raises(ConfigError, match="do not fit the context of 20 tokens"):
        strict.collate(EXAMPLES[:1])
    roomy = build_prompt(llama, SPEC, max_length=128, sampler=sampler, **PROMPT)
    rows = roomy.collate(EXAMPLES[:1])["input_ids"][0].tolist()
    # Demonstrations come first for a causal LM, each filled with its label word; the input is last.
    text = " ".join(llama.tokenizer.convert_ids_to_tokens(rows))
    assert text.count("it was") == 5 and text.endswith("good movie it was")


@pytest.mark.parametrize("which", ["llama", "mlm"])
def test_eval_lengths_are_the_collated_prompt_lengths(which: str, request: pytest.FixtureRequest) -> None:
    backbone = request.getfixturevalue(which)
    sampler = DemoSampler(demo_pool(), num_labels=2, k=3, seed=0)
    setup = build_prompt(backbone, SPEC, max_length=64, sampler=sampler, **PROMPT)
    setup.model.eval()
    lengths = setup.collate.eval_lengths(EXAMPLES)
    for ex, n in zip(EXAMPLES, lengths, strict=True):
        assert int(setup.collate([ex])["attention_mask"].sum(1).max()) == n
    # Demonstrations make the prompt much longer than its input text.
    assert min(lengths) > max(len(backbone.tokenizer(e.text_a)["input_ids"]) for e in EXAMPLES)


def test_icl_evaluation_is_sorted_by_prompt_length_with_the_same_predictions(tiny_llama: Path, toy_data: Path) -> None:
    out = run(prompt_cfg(tiny_llama, toy_data, "icl", k=3), keep_engine=True)
    engine, test = out.engine, load_run_data(prompt_cfg(tiny_llama, toy_data, "icl", k=3))[1].test
    seen: list[int] = []
    collate = engine.prepared.collate
    engine.prepared.collate = lambda exs: (seen.extend(int(n) for n in collate(exs)["attention_mask"].sum(1)),
                                           collate(exs))[1]
    engine.cfg.eval_batch_size = 1
    preds, scores = engine.predict(test)
    assert seen == sorted(seen)  # batches in order of prompt length
    engine.prepared.eval_lengths = None  # the generic order (input characters) gives the same numbers
    seen.clear()
    preds2, scores2 = engine.predict(test)
    assert seen != sorted(seen)  # ... though not in order of prompt length (the demonstrations dominate)
    assert np.array_equal(preds, preds2) and np.allclose(scores, scores2, atol=1e-5)


def test_demonstration_ensemble_averages_probabilities(mlm) -> None:
    sampler = DemoSampler(demo_pool(), num_labels=2, per_class=True, seed=0)
    setup = build_prompt(mlm, SPEC, max_length=64, sampler=sampler, eval_samples=3, **PROMPT)
    setup.model.eval()
    batch = setup.collate(EXAMPLES[:2])
    assert int(batch["n_samples"]) == 3 and batch["word_rows"].shape[0] == 6
    with torch.no_grad():
        avg = setup.model(**batch)
        single = setup.model(**{**batch, "n_samples": torch.tensor(1)})
    expected = single.view(2, 3, 2).exp().mean(1).log()
    assert torch.allclose(avg, expected, atol=1e-5)
    setup.model.train()  # training draws one fresh set per input
    assert int(setup.collate(EXAMPLES[:2])["n_samples"]) == 1


def test_demonstration_ensemble_of_logits_as_lm_bff(mlm) -> None:
    # LM-BFF averages the raw label-word logits over the sets: the argmax of the mean log-probability.
    sampler = DemoSampler(demo_pool(), num_labels=2, per_class=True, seed=0)
    setup = build_prompt(mlm, SPEC, max_length=64, sampler=sampler, eval_samples=3, ensemble="logit", **PROMPT)
    setup.model.eval()
    batch = setup.collate(EXAMPLES[:2])
    with torch.no_grad():
        avg = setup.model(**batch)
        single = setup.model(**{**batch, "n_samples": torch.tensor(1)})
    assert torch.allclose(avg, single.view(2, 3, 2).mean(1).log_softmax(-1), atol=1e-5)
    with pytest.raises(ConfigError, match="demo_ensemble must be one of prob, logit, got 'median'"):
        build_prompt(mlm, SPEC, max_length=64, sampler=sampler, eval_samples=3, ensemble="median", **PROMPT)


def test_the_three_methods_run_through_the_protocol(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    zs = run(prompt_cfg(tiny_llama, toy_data, "prompt-zero-shot")).results
    assert zs["trainable_params"] == 0 and zs["steps"] == 0 and "accuracy" in zs["metrics"]
    icl = run(prompt_cfg(tiny_llama, toy_data, "icl", k=2, calibrate=True)).results
    assert icl["trainable_params"] == 0 and icl["method_config"]["k"] == 2
    cfg = prompt_cfg(tiny_llama, toy_data, "prompt-finetune")
    cfg.save_model, cfg.output, cfg.train.select_on_dev = True, str(tmp_path / "pf"), False
    out = run(cfg, keep_engine=True)
    ft = out.results
    assert ft["trainable_params"] == ft["total_params"] > 0
    losses = [h["loss"] for h in ft["history"]]
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])  # the LM learns to fill the slot
    train = load_run_data(cfg)[1].train
    assert out.engine.evaluate(train).metrics["accuracy"] >= 0.9
    saved = json.loads((tmp_path / "pf" / "model" / "method.json").read_text())
    assert saved["template"] == PROMPT["template"] and saved["label_words"] == {"0": ["bad"],
                                                                                "1": ["good"]}
    assert (tmp_path / "pf" / "model" / "backbone" / "config.json").is_file()


def test_prompt_finetune_with_demonstrations_trains(tiny_mlm: Path, toy_data: Path) -> None:
    res = run(prompt_cfg(tiny_mlm, toy_data, "prompt-finetune", demonstrations=True, demo_selection="random",
                   demo_eval_samples=2)).results
    assert res["steps"] == 24 and 0 <= res["metrics"]["accuracy"] <= 1


def test_bad_prompt_setups_are_one_line_errors(tiny_bert: Path, tiny_mlm: Path, toy_data: Path) -> None:
    with pytest.raises(ConfigError, match="encoder without one"):
        run(prompt_cfg(tiny_bert, toy_data, "prompt-zero-shot"))
    no_prompt = prompt_cfg(tiny_mlm, toy_data, "prompt-zero-shot")
    no_prompt.method_args = {}
    with pytest.raises(ConfigError, match="no default prompt.*template and label_words"):
        run(no_prompt)
    with pytest.raises(ConfigError, match="no answer slot"):
        run(prompt_cfg(tiny_mlm, toy_data, "prompt-zero-shot", template="{sentence} it was good"))
    with pytest.raises(ConfigError, match="both map to the word"):
        run(prompt_cfg(tiny_mlm, toy_data, "icl", label_words={"0": "good", "1": "good"}))
    with pytest.raises(ConfigError, match="multi_token"):
        get_method("prompt-finetune").parse_config({"multi_token": "max"})
    assert get_method("icl").head_for(str(tiny_mlm)) == "mlm"


def test_prompt_finetune_with_lora(tiny_llama: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = prompt_cfg(tiny_llama, toy_data, "prompt-finetune", peft={"name": "lora", "r": 4})
    cfg.save_model, cfg.output = True, str(tmp_path / "lora")
    res = run(cfg).results
    assert 0 < res["trainable_params"] < 0.5 * res["total_params"]
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] != losses[0]  # the adapter trains through the prompt
    assert (tmp_path / "lora" / "model" / "method.json").is_file()
    assert any((tmp_path / "lora" / "model" / "adapter").iterdir())


@pytest.mark.parametrize("name", list(PEFT_METHODS))  # every registered method, new ones included
@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_prompt_finetune_trains_through_every_peft_method(name: str, kind: str, tiny_mlm: Path, tiny_llama: Path,
                                                          toy_data: Path) -> None:
    model = tiny_mlm if kind == "mlm" else tiny_llama
    small = {"prefix": {"mlp_hidden": 8}, "adapter": {"bottleneck": 4}}.get(name, {})  # sized for a tiny model
    cfg = prompt_cfg(model, toy_data, "prompt-finetune", peft={"name": name, **small})
    cfg.train.select_on_dev = False
    if name == "bitfit" and kind == "causal":
        with pytest.raises(ConfigError, match="bias"):  # Llama has no bias terms to train
            run(cfg)
        return
    res = run(cfg).results
    assert 0 < res["trainable_params"] < 0.5 * res["total_params"]
    losses = [h["loss"] for h in res["history"]]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # the answer slot's loss falls through the transformation
    assert res["method_config"]["peft"]["name"] == name


def test_auto_picks_the_best_label_words_on_dev_and_records_them(tiny_mlm: Path, toy_data: Path) -> None:
    from transferlm.prompts.search import search_label_words
    from transferlm.prompts.template import Template

    cfg = prompt_cfg(tiny_mlm, toy_data, "prompt-zero-shot", auto="labels", auto_k=3)
    cfg.method_args.pop("label_words")
    res = run(cfg).results
    spec, data = load_run_data(cfg)
    found = search_label_words(load_backbone(str(tiny_mlm), head="mlm"), spec, Template.parse(PROMPT["template"]),
                               data.train, data.dev, k=3, n=1)
    expected = found["assignments"][0]["label_words"]
    assert res["method_config"]["label_words"] == expected  # the run records what it used
    assert res["prompt"]["label_words"] == {k: [v] for k, v in expected.items()}


def _spy_search_length(monkeypatch: pytest.MonkeyPatch, searcher: str) -> list[int]:
    """Record the max_length each call of the search function ``searcher`` ranks candidates at."""
    import transferlm.prompts.search as search

    seen: list[int] = []
    real = getattr(search, searcher)

    def spy(*args, **kwargs):
        seen.append(kwargs["max_length"])
        return real(*args, **kwargs)

    monkeypatch.setattr(search, searcher, spy)
    return seen


@pytest.mark.parametrize("auto, searcher", [("labels", "search_label_words"), ("templates", "search_templates")])
def test_auto_search_ranks_under_the_runs_max_length(auto: str, searcher: str, tiny_mlm: Path, toy_data: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Candidates must be ranked with the truncation the run will use, not a fixed one.
    seen = _spy_search_length(monkeypatch, searcher)
    cfg = prompt_cfg(tiny_mlm, toy_data, "prompt-zero-shot", auto=auto, auto_k=2)
    cfg.train.max_length = 40
    run(cfg)
    assert seen == [40]


@pytest.mark.parametrize("auto, searcher", [("labels", "search_label_words"), ("templates", "search_templates")])
def test_auto_search_ranks_at_the_length_a_nested_soft_prompt_leaves(auto: str, searcher: str, toy_data: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # BERT with 48 positions, 8 soft tokens: the run cuts inputs to 40, and the search must rank at 40 as well.
    from conftest import make_tiny_bert

    seen = _spy_search_length(monkeypatch, searcher)
    model = make_tiny_bert(tmp_path / "bert48", mlm=True, positions=48)
    cfg = prompt_cfg(model, toy_data, "prompt-finetune", auto=auto, auto_k=2,
                     peft={"name": "prompt-tuning", "length": 8, "init": "random"})
    cfg.train.max_steps, cfg.train.eval_every, cfg.output = 2, 2, str(tmp_path / "run")
    cfg.save_model = True
    run(cfg)
    assert seen == [40]
    assert json.loads((tmp_path / "run" / "model" / "method.json").read_text())["max_length"] == 40


def test_regression_poles_are_settled_before_the_run_and_recorded(mlm) -> None:
    # A regression task without default poles takes them from the training labels, which differ by seed:
    # the resolved config must say so (the eval memo of seed-free zero-shot keys on it).
    method = get_method("prompt-zero-shot")
    spec = TaskSpec(name="my-scores", text_columns=("sentence",), regression=True, metric="pearson")
    cfg = method.parse_config({"template": "{sentence} it was {answer} .", "label_words": ["bad", "good"]})
    a = method.resolve(cfg, mlm, spec, [Example("x", label=1.0), Example("y", label=3.0)], [])
    b = method.resolve(cfg, mlm, spec, [Example("x", label=0.0), Example("y", label=4.0)], [])
    assert a.poles == [1.0, 3.0] and b.poles == [0.0, 4.0] and a.to_dict() != b.to_dict()
    assert cfg.poles is None  # the parsed options are left as given
    assert method.resolve(cfg, mlm, SPEC, EXAMPLES, []).poles is None  # classification: no poles
    setup = method.setup(mlm, spec, a, max_length=32, train=[])
    assert setup.model.poles == (1.0, 3.0)


def test_auto_without_a_dev_split_is_an_error(mlm) -> None:
    method = get_method("prompt-finetune")
    cfg = method.parse_config({**PROMPT, "auto": "both"})
    with pytest.raises(ConfigError, match="dev split"):
        method.resolve(cfg, mlm, SPEC, EXAMPLES, [])
    with pytest.raises(ConfigError, match="method_args.auto must be one of"):
        method.parse_config({"auto": "everything"})


def test_compare_evaluates_a_seed_free_method_once_and_reuses_it_faithfully(
        tiny_llama: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.config import CompareConfig
    from transferlm.protocol.compare import EVAL_MEMO, compare
    from transferlm.training.engine import Engine

    passes: list[str] = []
    evaluate = Engine.evaluate
    monkeypatch.setattr(Engine, "evaluate", lambda self, examples, desc="eval", **kw: (
        passes.append(desc), evaluate(self, examples, desc=desc, **kw))[1])
    cfg = prompt_cfg(tiny_llama, toy_data, "prompt-zero-shot")
    out = tmp_path / "cmp"
    summary = compare(CompareConfig(run=cfg, methods=["prompt-zero-shot"], seeds=[13, 21], output=str(out)))
    first, second = (json.loads((out / "prompt-zero-shot" / f"seed-{s}" / "results.json").read_text())
                     for s in (13, 21))
    assert "test_reused_from_seed" not in first and second["test_reused_from_seed"] == 13
    assert passes.count("test") == 1  # seed 21 spent no test pass (a count, not a timing: timings vary with load)
    monkeypatch.undo()
    assert len(list((out / "prompt-zero-shot" / EVAL_MEMO).glob("*.json"))) == 1
    # What seed 21 would have measured on its own.
    alone = prompt_cfg(tiny_llama, toy_data, "prompt-zero-shot")
    alone.seed = 21
    assert run(alone).results["metrics"] == second["metrics"]
    assert summary["rows"][0]["per_seed"][1] == second["metrics"]["accuracy"]


@pytest.mark.parametrize(("method", "args", "free"), [
    ("prompt-zero-shot", {}, True),
    ("prompt-zero-shot", {"calibrate": True}, True),
    ("prompt-zero-shot", {"answer_search": "sample"}, False),  # draws answers from the seed
    ("prompt-zero-shot", {"auto": "labels"}, False),  # searches on this seed's train/dev
    ("icl", {"k": 2}, False),  # demonstrations come from this seed's training split
    ("prompt-finetune", {}, False),
])
def test_which_methods_are_seed_free(method: str, args: dict, free: bool) -> None:
    m = get_method(method)
    assert m.seed_free(m.parse_config({**PROMPT, **args})) is free


def test_the_eval_memo_key_follows_weights_options_and_test_set(tmp_path: Path) -> None:
    from transferlm.protocol.eval_memo import EvalMemo

    model = torch.nn.Linear(3, 2)

    def memo(**change):
        kw = {"model": model, "method": "prompt-zero-shot", "method_config": {"template": "t"},
              "train_settings": {"max_length": 48, "eval_batch_size": 64, "mixed_precision": "no"},
              "device": "cpu", "test": EXAMPLES, **change}
        return EvalMemo.for_run(tmp_path, **kw)

    base = memo()
    assert memo().key == base.key
    assert memo(method_config={"template": "u"}).key != base.key
    assert memo(test=EXAMPLES[:-1]).key != base.key
    assert memo(train_settings={"max_length": 32, "eval_batch_size": 64, "mixed_precision": "no"}).key != base.key
    assert memo(train_settings={"max_length": 48, "eval_batch_size": 64, "mixed_precision": "no",
                                "learning_rate": 1.0}).key == base.key  # training settings do not matter
    base.store({"accuracy": 0.5}, 1.0, seed=13)
    assert memo().load()["metrics"] == {"accuracy": 0.5}
    with torch.no_grad():
        model.weight[0, 0] += 1e-3  # another model under the same name (e.g. a retrained folder)
    assert memo().key != base.key and memo().load() is None
    base.path.write_text("{not json")
    assert base.load() is None  # unreadable: evaluate afresh


@pytest.mark.parametrize("lm", ["tiny_mlm", "tiny_llama"])
def test_prompt_finetune_with_demonstrations_killed_in_its_test_evaluation_resumes(
        lm: str, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        request: pytest.FixtureRequest) -> None:
    from helpers import run_killed_in_test_evaluation

    model = request.getfixturevalue(lm)

    def cfg(out: Path | None):  # a RunConfig
        c = prompt_cfg(model, toy_data, "prompt-finetune", demonstrations=True, demo_eval_samples=2)
        c.train.max_steps, c.train.checkpoint_every, c.train.eval_batch_size = 8, 4, 3
        c.output = str(out) if out else None
        return c

    whole = run(cfg(None)).results
    run_killed_in_test_evaluation(monkeypatch, cfg(tmp_path / "o"), 2)
    again = run(cfg(tmp_path / "o")).results
    assert again["resumed_from_step"] == 8
    assert again["metrics"] == whole["metrics"] and again["dev_metrics"] == whole["dev_metrics"]
