"""Reuse of shared demonstration prefixes at evaluation (prompts/prefix_cache.py) on tiny random LMs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from prompt_helpers import PROMPT, SPEC, FakeEmbedder, demo_pool, prompt_cfg
from transferlm.data.example import Example
from transferlm.errors import ConfigError
from transferlm.methods import get_method
from transferlm.methods.efficient import PEFT_METHODS
from transferlm.models.loading import load_backbone
from transferlm.prompts.build import build_prompt
from transferlm.prompts.demonstrations import DemoSampler
from transferlm.prompts.model import PromptModel
from transferlm.prompts.prefix_cache import PrefixCache, length_groups, supports_prefix_reuse
from transferlm.protocol.run import run

pytestmark = pytest.mark.usefixtures("one_thread")


def _llama(attn: str = "sdpa") -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _rows(prefix_lens: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Right-padded rows: 3 distinct prefixes (of the given lengths) shared round-robin, then 2-6 own tokens."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1, 60) for _ in range(n)] for n in prefix_lens]
    rows = [(prefixes[i % len(prefixes)], [rng.randrange(1, 60) for _ in range(rng.randrange(2, 7))])
            for i in range(9)]
    width = max(len(p) + len(q) for p, q in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (p, q) in enumerate(rows):
        ids[r, :len(p) + len(q)] = torch.tensor(p + q)
        mask[r, :len(p) + len(q)] = 1
    answer = mask.sum(1, keepdim=True) - 1
    return ids, mask, torch.cat([answer - 1, answer], dim=1), torch.tensor([len(p) for p, _ in rows])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_rows_with_cached_prefixes_read_the_same_logits_as_whole_rows(attn: str) -> None:
    model = PromptModel(_llama(attn), None)
    ids, mask, positions, shared = _rows([7, 3, 11])
    with torch.no_grad():
        whole = model.answer_logits(ids, mask, positions)
        with model.inference_scope():
            first = model.answer_logits(ids, mask, positions, shared)
            cache = model._prefixes
            assert cache is not None and len(cache.entries) == 3
            assert (cache.rows, cache.hits) == (9, 6)  # 3 prefixes computed, 6 rows reused them
            again = model.answer_logits(ids, mask, positions, shared)
            assert (cache.rows, cache.hits) == (18, 15)
        assert model._prefixes is None  # the scope ended: weights may change now
    assert torch.allclose(whole, first, atol=1e-5) and torch.allclose(whole, again, atol=1e-5)
    # A "prefix" that would reach a position the head reads stops before it: the row runs from there.
    full = mask.sum(1)
    with torch.no_grad(), model.inference_scope():
        capped = model.answer_logits(ids, mask, positions, full)
    assert torch.allclose(whole, capped, atol=1e-5)
    with torch.no_grad(), model.inference_scope():  # prefixes that would end at or before the first read position
        none = model.answer_logits(ids, mask, torch.zeros_like(positions), shared)
        assert model._prefixes.rows == 0
    assert torch.allclose(none, model.answer_logits(ids, mask, torch.zeros_like(positions)), atol=1e-5)


def test_outside_the_scope_or_when_off_every_row_runs_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    model = PromptModel(_llama(), None)
    ids, mask, positions, shared = _rows([5, 6, 7])
    calls: list[int] = []
    forward = model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda *a, **k: (calls.append(k["input_ids"].shape[1]),
                                                                   forward(*a, **k))[1])
    with torch.no_grad():
        model.answer_logits(ids, mask, positions, shared)
        assert calls == [ids.shape[1]]
        off = PromptModel(model.backbone, None, prefix_cache_mb=0)
        with off.inference_scope():
            assert off._prefixes is None
            off.answer_logits(ids, mask, positions, shared)
        with model.inference_scope():
            calls.clear()
            model.answer_logits(ids, mask, positions, shared)
    assert calls[0] == 7 and calls[1] < ids.shape[1]  # the prefixes (longest 7), then only the rows' own tokens


def test_the_cache_is_bounded_and_gives_up_where_prefixes_do_not_repeat() -> None:
    def layers(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, 2, n, 4), torch.zeros(1, 2, n, 4))]  # 2 * 2*n*4 floats = 64 n bytes

    cache = PrefixCache(max_bytes=64 * 10)
    for i in range(4):
        cache.put((i,), 0, layers(3))  # 192 bytes each: the third fits, the fourth evicts the oldest
    assert list(cache.entries) == [(1,), (2,), (3,)] and cache.bytes == 576
    assert len(cache.path((1,), [1])) == 1  # used: now the newest
    cache.put((9,), 0, layers(3))
    assert list(cache.entries) == [(3,), (1,), (9,)]
    cache.put((10,), 0, layers(20))  # larger than the whole budget: not kept
    assert (10,) not in cache.entries and cache.bytes <= 640
    probe = PrefixCache(max_bytes=2**20, probe_rows=100, min_hit_rate=0.3)
    probe.put((1,), 0, layers(2))
    probe.record(60, 0, 600, 100)
    assert probe.active  # too few rows to judge
    probe.record(60, 0, 600, 200)  # 300 of 1200 prefix tokens found: 25% < 30%
    assert not probe.active and not probe.entries and probe.bytes == 0


def test_the_trie_finds_the_longest_stored_run_of_segments_from_the_start() -> None:
    def seg(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.full((1, 1, n, 2), float(n)), torch.zeros(1, 1, n, 2))]

    cache = PrefixCache(max_bytes=2**20)
    key = (5, 6, 7, 8, 9, 10)
    cache.put(key[:2], 0, seg(2))
    cache.put(key[:6], 4, seg(2))  # a third level without the second: unreachable
    assert [s[0][0].shape[2] for s in cache.path(key, [2, 4, 6])] == [2]
    cache.put(key[:4], 2, seg(2))
    found = cache.path(key, [2, 4, 6])
    assert [s[0][0].shape[2] for s in found] == [2, 2, 2]
    assert list(cache.entries)[-1] == key[:2]  # touched deepest first: the root segment is the newest
    assert cache.path(key, [3, 6]) == []  # the same tokens cut elsewhere: the stored segments are not these
    cache.put(key[:3], 1, seg(2))
    assert cache.path(key, [3, 6]) == []  # a segment must start where the previous level ends


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_rows_sharing_only_their_first_demonstrations_reuse_those(attn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Demonstration sets that differ after the first one: each row finds the shared levels and computes the
    rest; scores equal whole rows."""
    model = PromptModel(_llama(attn), None)
    rng = random.Random(3)
    demos = [[rng.randrange(1, 60) for _ in range(n)] for n in (4, 5, 3, 6)]
    sets = [(0, 1), (0, 2), (0, 1), (3, 2), (0, 2), (3, 1), (0, 1), (3, 0)]
    rows, bounds = [], []
    for a, b in sets:
        own = [rng.randrange(1, 60) for _ in range(rng.randrange(2, 6))]
        rows.append(demos[a] + demos[b] + own)
        bounds.append([len(demos[a]), len(demos[a]) + len(demos[b])])
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, seq in enumerate(rows):
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    positions = mask.sum(1, keepdim=True) - 1
    marks = torch.tensor(bounds)
    computed: list[int] = []  # prefix tokens run per call (token 0 is padding here)
    inner = PromptModel._run_with_cache
    monkeypatch.setattr(PromptModel, "_run_with_cache",
                        lambda self, inputs, past: (computed.append(int(inputs["input_ids"].ne(0).sum())),
                                                    inner(self, inputs, past))[1])
    out = []
    with torch.no_grad():
        whole = model.answer_logits(ids, mask, positions)
        with model.inference_scope():
            cache = model._prefixes
            for (lo, hi), expect, hits in (((0, 2), [9 + 7], 0), ((2, 7), [9 + 11], 3), ((7, 8), [4], 0)):
                computed.clear()
                before = cache.hits
                out.append(model.answer_logits(ids[lo:hi], mask[lo:hi], positions[lo:hi], marks[lo:hi]))
                assert computed == expect and cache.hits - before == hits  # rows that found their whole prefix
            # (3, 0) found demo 3, stored by the call before, and ran only demo 0's 4 tokens after it.
            assert cache.tokens == sum(len(demos[a]) + len(demos[b]) for a, b in sets)
            assert cache.found == cache.tokens - (16 + 20 + 4)
    assert torch.allclose(whole, torch.cat(out), atol=1e-5)


@pytest.mark.parametrize("lengths, most", [([5] * 10, 4), ([3, 40, 4, 38, 5, 41, 3], 64), (list(range(1, 60)), 64),
                                           ([7], 8)])
def test_length_groups_cover_every_row_once_and_pad_little(lengths: list[int], most: int) -> None:
    groups = length_groups(lengths, most, slack=0.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest, real = max(lengths[i] for i in g), sum(lengths[i] for i in g)
        assert len(g) <= most and longest * len(g) <= 1.25 * real
    if most == 4:
        assert len(groups) == 3  # equal lengths: only the size bound splits them
    if lengths == [3, 40, 4, 38, 5, 41, 3]:  # short rows never pad up to the long ones
        assert [1, 3, 5] in map(sorted, groups)


def test_which_models_reuse_prefixes(tiny_llama: Path, tiny_mlm: Path) -> None:
    assert supports_prefix_reuse(_llama("sdpa")) and supports_prefix_reuse(_llama("eager"))
    flex = _llama()
    flex.config._attn_implementation = "flash_attention_2"
    assert not supports_prefix_reuse(flex)
    windowed = MistralConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    assert not supports_prefix_reuse(MistralForCausalLM(windowed))
    assert not supports_prefix_reuse(load_backbone(str(tiny_mlm), head="mlm").model)
    for method, extends in (("lora", False), ("ia3", False), ("prefix", True), ("prompt-tuning", True)):
        lm = load_backbone(str(tiny_llama), head="causal").model
        wrapped = PEFT_METHODS[method].backbone(lm)
        assert supports_prefix_reuse(wrapped) is not extends, method


def test_collator_marks_the_demonstrations_only_at_evaluation(tiny_llama: Path, tiny_mlm: Path) -> None:
    llama = load_backbone(str(tiny_llama), head="causal")
    sampler = DemoSampler(demo_pool(), num_labels=2, per_class=True, seed=0)
    setup = build_prompt(llama, SPEC, max_length=96, sampler=sampler, eval_samples=2, **PROMPT)
    examples = [Example("good movie", label=1), Example("bad film", label=0)]
    setup.model.eval()
    batch = setup.collate(examples)
    bounds = batch["prefix_bounds"]
    assert bounds.shape[1] == 2  # one level per class's demonstration
    tok = llama.tokenizer
    for r, (first, shared) in enumerate(bounds.tolist()):
        ids = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
        own = " ".join(tok.convert_ids_to_tokens(ids[shared:]))
        assert own.startswith(examples[r // 2].text_a) and own.endswith("it was")  # the input and template only
        demos = [" ".join(tok.convert_ids_to_tokens(ids[lo:hi])) for lo, hi in ((0, first), (first, shared))]
        # Each level is one whole demonstration, the negative class's first, ending in its label word.
        assert demos[0].endswith("it was bad .") and demos[1].strip().endswith("it was good .")
    setup.model.train()
    assert "prefix_bounds" not in setup.collate(examples)  # training: every row runs whole, with gradients
    mlm = build_prompt(load_backbone(str(tiny_mlm), head="mlm"), SPEC, max_length=96, sampler=sampler, **PROMPT)
    mlm.model.eval()
    assert "prefix_bounds" not in mlm.collate(examples)  # a masked LM reads demonstrations after the input
    # In-context learning: the k nearest demonstrations may repeat across inputs; k random draws do not.
    for strategy, marked in (("similar", True), ("random", False)):
        icl = build_prompt(llama, SPEC, max_length=96, sampler=DemoSampler(demo_pool(), num_labels=2, k=2, seed=0,
                                                                           strategy=strategy,
                                                                           embedder=FakeEmbedder()), **PROMPT)
        icl.model.eval()
        assert ("prefix_bounds" in icl.collate(examples)) is marked, strategy


def test_prompt_finetune_with_demonstrations_scores_the_same_with_and_without_reuse(
        tiny_llama: Path, toy_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = {"demonstrations": True, "demo_selection": "random", "demo_eval_samples": 3}
    on = run(prompt_cfg(tiny_llama, toy_data, "prompt-finetune", **args), keep_engine=True)
    engine = on.engine
    test = [Example(f"{a} {b}", label=int(a == "good")) for a in ("good", "bad") for b in ("movie", "film", "plot")]
    reused: list[int] = []
    inner = PromptModel._reusing_prefixes
    monkeypatch.setattr(PromptModel, "_reusing_prefixes",
                        lambda self, cache, *a: (reused.append(len(a[0])), inner(self, cache, *a))[1])
    preds, scores = engine.predict(test)
    assert sum(reused) == len(test) * 3  # every (input, set) row went through the cached path
    engine.prepared.model.prefix_cache_mb = 0
    preds0, scores0 = engine.predict(test)
    assert np.array_equal(preds, preds0) and np.allclose(scores, scores0, atol=1e-5)
    with pytest.raises(ConfigError, match="prefix_cache_mb must be >= 0"):
        get_method("prompt-finetune").parse_config({"prefix_cache_mb": -1})
