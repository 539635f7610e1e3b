"""DAPT/TAPT: continued pretraining writes a model folder that `run --model` takes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transferlm.config import RunConfig
from transferlm.errors import DataError, ModelError
from transferlm.protocol.run import run
from transferlm.training.pretrain import PretrainConfig, Pretrainer, pretrain

TEXT = ["the movie was good", "the plot is boring", "very fun acting and a good story", "I hate the film",
        "the cat and the dog", "a great story but the acting was bad", "love it", "not very fun"] * 3


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text("\n".join(TEXT) + "\n")
    return p


def _cfg(model: Path, texts: list[str], out: Path, **kw) -> PretrainConfig:
    return PretrainConfig(model=str(model), texts=texts, output=str(out), steps=6, batch_size=4, eval_every=3,
                          checkpoint_every=2, head_warmup_steps=2, quiet=True, **kw)


def test_mlm_with_a_new_head_then_finetune(tiny_bert: Path, text_file: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted"
    report = pretrain(_cfg(tiny_bert, [str(text_file)], out))
    assert report["objective"] == "mlm" and report["new_head"], "BertModel has no MLM head: a new one is made"
    phase = report["phases"][0]
    assert phase["perplexity_before"] > 0 and phase["perplexity_after"] > 0 and phase["tokens_per_second"] > 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".adapted.pretrain*")), "work folder removed"
    res = run(RunConfig.from_dict({"task": "toy", "model": str(out), "data": {"data_dir": str(toy_data), "shots": 8},
                                   "quiet": True, "train": {"max_steps": 2}})).results
    assert res["model"] == str(out) and "accuracy" in res["metrics"]


def test_final_perplexity_reuses_the_last_steps_evaluation(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    trainer = Pretrainer(_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))  # steps 6, eval every 3
    seen: list[list] = []
    real = trainer.perplexity
    trainer.perplexity = lambda rows: (seen.append(rows), real(rows))[1]  # type: ignore[method-assign]
    phase = trainer.run()["phases"][0]
    assert len(seen) == 3, "before, at step 3 and at step 6; not once more for 'after'"
    assert phase["perplexity_after"] == phase["history"][-1]["perplexity"] == real(seen[-1])


def test_new_head_trains_alone_first(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_bert, [str(text_file)], tmp_path / "o")
    cfg.steps, cfg.head_warmup_steps, cfg.checkpoint_every = 3, 3, 0
    trainer = Pretrainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    after = {n: p.detach() for n, p in trainer.model.named_parameters()}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(trainer.new_head)


def test_causal_lm_and_dapt_then_tapt_in_one_call(tiny_llama: Path, text_file: Path, toy_data: Path,
                                                  tmp_path: Path) -> None:
    cfg = _cfg(tiny_llama, [str(text_file), "task:toy"], tmp_path / "o", data_dir=str(toy_data))
    report = pretrain(cfg)
    assert report["objective"] == "clm" and not report["new_head"]
    assert [p["phase"] for p in report["phases"]] == ["text", "tapt-toy"]
    assert json.loads((tmp_path / "o" / "pretrain.json").read_text())["phases"][1]["train_texts"] > 0


def test_resume_after_interruption_matches(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pretrain(_cfg(tiny_bert, [str(text_file), str(text_file)], tmp_path / "ref"))
    original = Pretrainer._batch
    calls = {"n": 0}

    def dying(self, rows, step):
        calls["n"] += 1
        if step == 10:  # second phase, after its step-2 checkpoint... and after phase one finished
            raise KeyboardInterrupt
        return original(self, rows, step)

    monkeypatch.setattr(Pretrainer, "_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_cfg(tiny_bert, [str(text_file), str(text_file)], tmp_path / "cut"))
    assert not (tmp_path / "cut").exists()
    monkeypatch.setattr(Pretrainer, "_batch", original)
    report = pretrain(_cfg(tiny_bert, [str(text_file), str(text_file)], tmp_path / "cut"))
    assert report["phases"][1]["resumed_from_step"] == 4
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cut_after_step_4(monkeypatch: pytest.MonkeyPatch, cfg: PretrainConfig) -> None:
    """Run ``cfg`` until it is interrupted after its step-4 checkpoint, as a killed run would be."""
    original = Pretrainer._batch

    def dying(self, rows, step):
        if step == 5:
            raise KeyboardInterrupt
        return original(self, rows, step)

    with monkeypatch.context() as m:
        m.setattr(Pretrainer, "_batch", dying)
        with pytest.raises(KeyboardInterrupt):
            pretrain(cfg)


def test_unfinished_work_with_other_settings_is_not_resumed(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _cut_after_step_4(monkeypatch, _cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    assert (tmp_path / ".cut.pretrain" / "phase-0" / "checkpoint").is_dir()
    # Same output folder, a different schedule: the step-4 checkpoint belongs to another run.
    report = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", learning_rate=1e-4))
    assert report["phases"][0]["resumed_from_step"] is None
    pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "fresh", learning_rate=1e-4))
    a = load_file(str(tmp_path / "cut" / "model.safetensors"))
    b = load_file(str(tmp_path / "fresh" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "same as a run that never had the stale checkpoint"


def test_bad_text_sources(tiny_bert: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02binary")
    fields = tmp_path / "t.jsonl"
    fields.write_text('{"body": "hello"}\n')
    for path, needle in ((empty, "empty"), (binary, "binary"), (fields, "missing column 'text'")):
        with pytest.raises(DataError, match=needle):
            pretrain(_cfg(tiny_bert, [str(path)], tmp_path / "o"))
        assert not (tmp_path / "o").exists()


def test_model_without_any_head(tmp_path: Path, text_file: Path) -> None:
    from transformers import BertTokenizerFast, T5Config, T5Model

    folder = tmp_path / "t5"
    T5Model(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)).save_pretrained(folder)
    BertTokenizerFast(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}).save_pretrained(folder)
    with pytest.raises(ModelError, match="no MLM head"):
        pretrain(_cfg(folder, [str(text_file)], tmp_path / "o"))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_masked_positions_only_loss_equals_the_models_own(family: str) -> None:
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    from transferlm.training.pretrain import masked_lm_loss

    torch.manual_seed(0)
    small = {"vocab_size": 50, "max_position_embeddings": 40}
    model = {"bert": lambda: BertForMaskedLM(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=32, **small)),
             "roberta": lambda: RobertaForMaskedLM(RobertaConfig(hidden_size=16, num_hidden_layers=2,
                                                                 num_attention_heads=2, intermediate_size=32,
                                                                 pad_token_id=1, **small)),
             "distilbert": lambda: DistilBertForMaskedLM(DistilBertConfig(dim=16, n_layers=2, n_heads=2,
                                                                          hidden_dim=32, **small))}[family]()
    model.eval()  # no dropout: the two losses see the same network
    ids = torch.randint(3, 50, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[1, 7], labels[2, 11] = 7, 9, 11, 13
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    ours = masked_lm_loss(model, batch)
    ours.backward()
    ours_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs = model(**batch).loss
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n not in ours_grads), n
        if p.grad is not None:
            assert torch.allclose(ours_grads[n], p.grad, atol=1e-6), n
    assert not model.get_output_embeddings()._forward_pre_hooks, "the gather hook is removed"


def test_new_head_initialisation_follows_the_seed_not_the_global_rng(tiny_bert: Path, text_file: Path,
                                                                     tmp_path: Path) -> None:
    heads = []
    for state in (1, 2):  # whatever ran before in this process
        torch.manual_seed(state)
        trainer = Pretrainer(_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))
        params = dict(trainer.model.named_parameters())
        heads.append({n: params[n].detach().clone() for n in trainer.new_head if n in params})
    assert heads[0] and all(torch.equal(heads[0][n], heads[1][n]) for n in heads[0])


def test_resumed_phase_reports_the_perplexity_before_its_first_step(tiny_bert: Path, text_file: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ref = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "ref"))["phases"][0]
    _cut_after_step_4(monkeypatch, _cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    cut = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))["phases"][0]
    assert cut["resumed_from_step"] == 4
    assert cut["perplexity_before"] == ref["perplexity_before"], "the phase's start, not the step-4 checkpoint's"
    assert cut["perplexity_after"] == ref["perplexity_after"]


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_perplexity_is_per_predicted_token_over_all_chunks(objective: str, tiny_bert: Path, tiny_llama: Path,
                                                           text_file: Path, tmp_path: Path) -> None:
    model = tiny_bert if objective == "mlm" else tiny_llama
    trainer = Pretrainer(_cfg(model, [str(text_file)], tmp_path / "o"))
    long = " ".join(TEXT[:6])
    # 32 short rows in the first chunk, one long row alone in the second: the chunks hold unequal token counts.
    rows = [trainer.phases[0][1][0]] * 32 + [long]
    from transferlm.training.pretrain import _tokenize

    tokenized = _tokenize(trainer.tokenizer, rows, 128, False)
    nll, count = 0.0, 0
    trainer.model.eval()
    with torch.no_grad():
        for i in range(0, len(tokenized), 32):
            batch = trainer._batch(tokenized[i:i + 32], 10**9 + i)
            logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
            labels = batch["labels"]
            if objective == "clm":
                logits, labels = logits[:, :-1], labels[:, 1:]
            keep = labels != -100
            nll += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    assert trainer.perplexity(tokenized) == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_unfinished_work_on_edited_text_is_not_resumed(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _cut_after_step_4(monkeypatch, _cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    text_file.write_text("\n".join(reversed(TEXT)) + "\n")  # same path, other text: the checkpoint is stale
    report = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    assert report["phases"][0]["resumed_from_step"] is None


def test_unfinished_work_on_a_rewritten_base_model_is_not_resumed(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    base = tmp_path / "base"  # a model folder trained again under the same name (DAPT under DAPT + TAPT)
    shutil.copytree(tiny_bert, base)
    _cut_after_step_4(monkeypatch, _cfg(base, [str(text_file)], tmp_path / "cut"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rewritten": True}))
    report = pretrain(_cfg(base, [str(text_file)], tmp_path / "cut"))
    assert report["phases"][0]["resumed_from_step"] is None, "resumed a checkpoint built on the old base model"


def test_no_weight_decay_on_biases_and_layer_norms(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.training import pretrain as pretrain_mod

    made: list[torch.optim.Optimizer] = []
    real = pretrain_mod.adamw
    monkeypatch.setattr(pretrain_mod, "adamw", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    cfg = _cfg(tiny_bert, [str(text_file)], tmp_path / "o")
    cfg.steps, cfg.checkpoint_every = 2, 0
    trainer = Pretrainer(cfg)
    trainer.run()
    decay = {id(p): g["weight_decay"] for g in made[0].param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert len(decay) == len(named), "every parameter is optimised"
    for n, p in named.items():
        assert decay[id(p)] == (0.0 if p.ndim < 2 or "LayerNorm" in n else 0.01), n


@pytest.mark.parametrize("wwm", [False, True])
def test_long_texts_are_chunked_not_truncated(tiny_bert: Path, text_file: Path, tmp_path: Path, wwm: bool) -> None:
    """Every token of a text longer than max_length is trained on, in chunks that never mix two texts."""
    from transferlm.training.pretrain import _tokenize

    trainer = Pretrainer(_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))
    tok = trainer.tokenizer
    texts = [" ".join(TEXT), "love it", " ".join(reversed(TEXT[:5]))]
    rows = _tokenize(tok, texts, 12, wwm)
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert all(len(r["input_ids"]) <= 12 for r in rows)
    assert all(r["input_ids"][0] == cls and r["input_ids"][-1] == sep for r in rows), "each chunk a full sequence"
    for r in rows:
        assert r["special_tokens_mask"] == [1] + [0] * (len(r["input_ids"]) - 2) + [1]
        assert len(r["attention_mask"]) == len(r["input_ids"]) and all(r["attention_mask"])
        if wwm:
            assert len(r["offset_mapping"]) == len(r["input_ids"])
            assert list(r["offset_mapping"][0]) == [0, 0] and list(r["offset_mapping"][-1]) == [0, 0]
    body = [r["input_ids"][1:-1] for r in rows]
    # The chunks, in order and concatenated, are each text's tokens; no chunk holds the end of one and the start of
    # the next.
    pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    i = 0
    for piece in pieces:
        got: list[int] = []
        while len(got) < len(piece):
            got += body[i]
            i += 1
        assert got == piece
    assert i == len(rows)
    assert len(pieces[0]) > 10 * 4, "the first text spans several chunks"


def test_a_long_document_trains_on_all_its_chunks(tiny_llama: Path, tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(TEXT) + "\n" + "\n".join(TEXT[:4]) + "\n")
    cfg = _cfg(tiny_llama, [str(doc)], tmp_path / "o", max_length=16)
    cfg.steps, cfg.checkpoint_every, cfg.eval_every = 2, 0, 0
    phase = pretrain(cfg)["phases"][0]
    assert phase["train_texts"] + phase["eval_texts"] == 5
    assert phase["train_chunks"] + phase["eval_chunks"] >= 4 + len(" ".join(TEXT).split()) // 14


def test_mlm_with_a_tokenizer_without_a_mask_token_is_a_model_error(tiny_bert: Path, text_file: Path,
                                                                   tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "nomask"
    shutil.copytree(tiny_bert, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.mask_token = None
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).mask_token is None
    with pytest.raises(ModelError, match="no mask token"):
        pretrain(_cfg(folder, [str(text_file)], tmp_path / "o"))
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.pretrain").exists(), "nothing written"


# --- TAPT leaves out the downstream runs' dev texts ---------------------------------------------------

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
        Pretrainer(_cfg(tiny_bert, ["task:dom"], tmp_path / "o", data_dir=str(tapt_data), tapt_shots=40))
    with pytest.raises(ConfigError, match="tapt_seeds"):
        _cfg(tiny_bert, ["task:dom"], tmp_path / "o", tapt_seeds=[]).validate()


def test_tapt_report_and_resume_follow_the_downstream_protocol(tiny_bert: Path, tapt_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(tiny_bert, ["task:dom"], tmp_path / "cut", data_dir=str(tapt_data), tapt_shots=4, tapt_seeds=[13])
    _cut_after_step_4(monkeypatch, cfg)
    stamp = json.loads((tmp_path / ".cut.pretrain" / "settings.json").read_text())
    assert stamp["tapt_shots"] == 4 and stamp["tapt_seeds"] == [13]
    # Other downstream seeds: other TAPT text, so the unfinished work is not resumed.
    report = pretrain(_cfg(tiny_bert, ["task:dom"], tmp_path / "cut", data_dir=str(tapt_data), tapt_shots=4,
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
    cfg = _cfg(tiny_llama, [str(text_file), str(text_file)], tmp_path / "o", warmup_ratio=0.2)
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
    trainer = Pretrainer(_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))
    seen = _spy_rates(monkeypatch, set(trainer.new_head))
    cfg = _cfg(tiny_bert, [str(text_file)], tmp_path / "o", warmup_ratio=0.2)
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
    cfg = _cfg(tiny_bert, [str(text_file)], tmp_path / "o")  # warmup_ratio 0 (the default)
    cfg.steps, cfg.checkpoint_every, cfg.eval_every = 7, 0, 0
    pretrain(cfg)
    assert [{lr for _, lr in rates} for rates in seen] == [{5e-5 * max(0.0, 1 - s / 7)} for s in range(7)]


def test_resume_with_warmup_matches_an_uninterrupted_run(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule's state is in the checkpoint: a run cut after step 4 (of 6, 3 of them warm-up, the encoder's
    from step 2) and resumed takes the same steps at the same rates."""
    ref = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "ref", warmup_ratio=0.5))["phases"][0]
    _cut_after_step_4(monkeypatch, _cfg(tiny_bert, [str(text_file)], tmp_path / "cut", warmup_ratio=0.5))
    cut = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", warmup_ratio=0.5))["phases"][0]
    assert cut["resumed_from_step"] == 4 and cut["history"] == ref["history"]
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_warmup_ratio_out_of_range_is_a_config_error(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    from transferlm.errors import ConfigError

    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=r"warmup_ratio must be in \[0, 1\)"):
            _cfg(tiny_bert, [str(text_file)], tmp_path / "o", warmup_ratio=bad).validate()


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
        cfg = _cfg(tiny_bert if objective == "mlm" else tiny_llama, [str(text_file)], tmp_path / f"b{batch_size}",
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
    cfg = _cfg(tiny_llama, [str(text_file)], tmp_path / "o", grad_accum_steps=3)
    cfg.steps, cfg.checkpoint_every, cfg.eval_every = 2, 0, 0
    phase = pretrain(cfg)["phases"][0]
    assert len(seen) == 6, "2 updates of 3 micro-batches"
    assert phase["seconds"] == 2.0 and phase["tokens_per_second"] == round(sum(seen) / 2, 1)
    assert [h["step"] for h in phase["history"]] == [1, 2], "steps count optimizer updates"


def test_resume_in_the_middle_of_an_accumulation(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints fall on update boundaries: a run killed in the second micro-batch of update 5 resumes from
    update 4 and takes update 5 whole, once (no micro-batch counted twice, none lost)."""
    ref = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "ref", grad_accum_steps=2))["phases"][0]
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
            pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", grad_accum_steps=2))
        assert keys == list(range(9))
        keys.clear()
        m.setattr(Pretrainer, "_batch", lambda self, rows, key: (keys.append(key) if key < 10**9 else None,
                                                                  original(self, rows, key))[1])
        cut = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", grad_accum_steps=2))["phases"][0]
    assert keys == [8, 9, 10, 11], "update 5 from its first micro-batch, then update 6"
    assert cut["resumed_from_step"] == 4 and cut["history"] == ref["history"]
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grad_accum_steps_must_be_positive(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    from transferlm.errors import ConfigError

    with pytest.raises(ConfigError, match="grad_accum_steps must be > 0, got 0"):
        _cfg(tiny_bert, [str(text_file)], tmp_path / "o", grad_accum_steps=0).validate()


# --- a batch with nothing masked; no NaN in pretrain.json ----------------------------------------------------

def _strict_json(path: Path):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


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
    phase = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))["phases"][0]
    skipped = phase["history"][step]
    assert skipped["step"] == step + 1 and skipped["loss"] is None and skipped["skipped"] == "nothing masked"
    assert all(isinstance(h["loss"], float) and math.isfinite(h["loss"]) and "skipped" not in h
               for i, h in enumerate(phase["history"]) if i != step)
    assert len(updates) == 5, "no optimizer update for the skipped step"
    assert all(torch.isfinite(g).all() for grads in updates for g in grads.values())
    weights = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    recorded = _strict_json(tmp_path / "o" / "pretrain.json")["phases"][0]["history"][step]
    assert recorded == {**skipped, "loss": None}


def test_pretrain_json_never_holds_nan(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A perplexity over no masked token is NaN: written as null, not as NaN (not JSON)."""
    monkeypatch.setattr(Pretrainer, "perplexity", lambda self, rows: float("nan"))
    cfg = _cfg(tiny_bert, [str(text_file)], tmp_path / "o")
    report = pretrain(cfg)
    assert math.isnan(report["phases"][0]["perplexity_before"])
    phase = _strict_json(tmp_path / "o" / "pretrain.json")["phases"][0]
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
    _cut_after_step_4(monkeypatch, _cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    stamp = json.loads((tmp_path / ".cut.pretrain" / "settings.json").read_text())
    assert stamp["warmup_ratio"] == 0.0 and stamp["grad_accum_steps"] == 1
    report = pretrain(_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", **setting))
    assert report["phases"][0]["resumed_from_step"] is None
    config = json.loads((tmp_path / "cut" / "pretrain.json").read_text())["config"]
    assert all(config[k] == v for k, v in setting.items())
