"""DAPT/TAPT: continued pretraining writes a model folder that `run --model` takes.

TAPT's text selection is in test_pretrain_tapt.py; warm-up, accumulation and NaN-free reports in
test_pretrain_schedule.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain_helpers import TEXT, cut_after_step_4, pretrain_cfg
from transferlm.config import RunConfig
from transferlm.errors import DataError, ModelError
from transferlm.protocol.run import run
from transferlm.training.pretrain import Pretrainer, pretrain


def test_mlm_with_a_new_head_then_finetune(tiny_bert: Path, text_file: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted"
    report = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], out))
    assert report["objective"] == "mlm" and report["new_head"], "BertModel has no MLM head: a new one is made"
    phase = report["phases"][0]
    assert phase["perplexity_before"] > 0 and phase["perplexity_after"] > 0 and phase["tokens_per_second"] > 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".adapted.pretrain*")), "work folder removed"
    res = run(RunConfig.from_dict({"task": "toy", "model": str(out), "data": {"data_dir": str(toy_data), "shots": 8},
                                   "quiet": True, "train": {"max_steps": 2}})).results
    assert res["model"] == str(out) and "accuracy" in res["metrics"]


def test_final_perplexity_reuses_the_last_steps_evaluation(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    trainer = Pretrainer(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))  # steps 6, eval every 3
    seen: list[list] = []
    real = trainer.perplexity
    trainer.perplexity = lambda rows: (seen.append(rows), real(rows))[1]  # type: ignore[method-assign]
    phase = trainer.run()["phases"][0]
    assert len(seen) == 3, "before, at step 3 and at step 6; not once more for 'after'"
    assert phase["perplexity_after"] == phase["history"][-1]["perplexity"] == real(seen[-1])


def test_new_head_trains_alone_first(tiny_bert: Path, text_file: Path, tmp_path: Path) -> None:
    cfg = pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o")
    cfg.steps, cfg.head_warmup_steps, cfg.checkpoint_every = 3, 3, 0
    trainer = Pretrainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    after = {n: p.detach() for n, p in trainer.model.named_parameters()}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(trainer.new_head)


def test_causal_lm_and_dapt_then_tapt_in_one_call(tiny_llama: Path, text_file: Path, toy_data: Path,
                                                  tmp_path: Path) -> None:
    cfg = pretrain_cfg(tiny_llama, [str(text_file), "task:toy"], tmp_path / "o", data_dir=str(toy_data))
    report = pretrain(cfg)
    assert report["objective"] == "clm" and not report["new_head"]
    assert [p["phase"] for p in report["phases"]] == ["text", "tapt-toy"]
    assert json.loads((tmp_path / "o" / "pretrain.json").read_text())["phases"][1]["train_texts"] > 0


def test_resume_after_interruption_matches(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pretrain(pretrain_cfg(tiny_bert, [str(text_file), str(text_file)], tmp_path / "ref"))
    original = Pretrainer._batch
    calls = {"n": 0}

    def dying(self, rows, step):
        calls["n"] += 1
        if step == 10:  # second phase, after its step-2 checkpoint... and after phase one finished
            raise KeyboardInterrupt
        return original(self, rows, step)

    monkeypatch.setattr(Pretrainer, "_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain(pretrain_cfg(tiny_bert, [str(text_file), str(text_file)], tmp_path / "cut"))
    assert not (tmp_path / "cut").exists()
    monkeypatch.setattr(Pretrainer, "_batch", original)
    report = pretrain(pretrain_cfg(tiny_bert, [str(text_file), str(text_file)], tmp_path / "cut"))
    assert report["phases"][1]["resumed_from_step"] == 4
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unfinished_work_with_other_settings_is_not_resumed(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cut_after_step_4(monkeypatch, pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    assert (tmp_path / ".cut.pretrain" / "phase-0" / "checkpoint").is_dir()
    # Same output folder, a different schedule: the step-4 checkpoint belongs to another run.
    report = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut", learning_rate=1e-4))
    assert report["phases"][0]["resumed_from_step"] is None
    pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "fresh", learning_rate=1e-4))
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
            pretrain(pretrain_cfg(tiny_bert, [str(path)], tmp_path / "o"))
        assert not (tmp_path / "o").exists()


def test_model_without_any_head(tmp_path: Path, text_file: Path) -> None:
    from transformers import BertTokenizerFast, T5Config, T5Model

    folder = tmp_path / "t5"
    T5Model(T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)).save_pretrained(folder)
    BertTokenizerFast(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}).save_pretrained(folder)
    with pytest.raises(ModelError, match="no MLM head"):
        pretrain(pretrain_cfg(folder, [str(text_file)], tmp_path / "o"))


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
        trainer = Pretrainer(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))
        params = dict(trainer.model.named_parameters())
        heads.append({n: params[n].detach().clone() for n in trainer.new_head if n in params})
    assert heads[0] and all(torch.equal(heads[0][n], heads[1][n]) for n in heads[0])


def test_resumed_phase_reports_the_perplexity_before_its_first_step(tiny_bert: Path, text_file: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ref = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "ref"))["phases"][0]
    cut_after_step_4(monkeypatch, pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    cut = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))["phases"][0]
    assert cut["resumed_from_step"] == 4
    assert cut["perplexity_before"] == ref["perplexity_before"], "the phase's start, not the step-4 checkpoint's"
    assert cut["perplexity_after"] == ref["perplexity_after"]


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_perplexity_is_per_predicted_token_over_all_chunks(objective: str, tiny_bert: Path, tiny_llama: Path,
                                                           text_file: Path, tmp_path: Path) -> None:
    model = tiny_bert if objective == "mlm" else tiny_llama
    trainer = Pretrainer(pretrain_cfg(model, [str(text_file)], tmp_path / "o"))
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
    cut_after_step_4(monkeypatch, pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    text_file.write_text("\n".join(reversed(TEXT)) + "\n")  # same path, other text: the checkpoint is stale
    report = pretrain(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "cut"))
    assert report["phases"][0]["resumed_from_step"] is None


def test_unfinished_work_on_a_rewritten_base_model_is_not_resumed(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    base = tmp_path / "base"  # a model folder trained again under the same name (DAPT under DAPT + TAPT)
    shutil.copytree(tiny_bert, base)
    cut_after_step_4(monkeypatch, pretrain_cfg(base, [str(text_file)], tmp_path / "cut"))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rewritten": True}))
    report = pretrain(pretrain_cfg(base, [str(text_file)], tmp_path / "cut"))
    assert report["phases"][0]["resumed_from_step"] is None, "resumed a checkpoint built on the old base model"


def test_no_weight_decay_on_biases_and_layer_norms(tiny_bert: Path, text_file: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from transferlm.training import pretrain as pretrain_mod

    made: list[torch.optim.Optimizer] = []
    real = pretrain_mod.adamw
    monkeypatch.setattr(pretrain_mod, "adamw", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    cfg = pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o")
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

    trainer = Pretrainer(pretrain_cfg(tiny_bert, [str(text_file)], tmp_path / "o"))
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
    cfg = pretrain_cfg(tiny_llama, [str(doc)], tmp_path / "o", max_length=16)
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
        pretrain(pretrain_cfg(folder, [str(text_file)], tmp_path / "o"))
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.pretrain").exists(), "nothing written"


def test_phase_names_tell_apart_sources_of_one_name() -> None:
    from transferlm.training.texts import phase_names

    usb = "/data/unlabeled/usb_subsets"
    # The dapt suite's imdb corpora: both files are dev.json.
    assert phase_names([f"{usb}/amazon_review/dev.json", f"{usb}/yelp_review/dev.json"]) == [
        "amazon_review/dev", "yelp_review/dev"]
    # Names that are unique stay the file's stem, the folder's name, tapt-<task>.
    assert phase_names(["/d/text.txt", "/d/corpus", "task:toy"]) == ["text", "corpus", "tapt-toy"]
    # Only the sources that share a name get folders, as many as tell them apart.
    assert phase_names(["/a/x/dev.json", "/b/x/dev.json", "/c/train.txt"]) == ["a/x/dev", "b/x/dev", "train"]
    assert phase_names(["/a/dev.json", "/a/dev.txt"]) == ["a/dev.json", "a/dev.txt"]  # only the suffix differs
    assert phase_names(["/a/x/text.txt", "/a/x/text.txt"]) == ["text (phase 1)", "text (phase 2)"]
    assert phase_names(["task:toy", "task:toy"]) == ["tapt-toy (phase 1)", "tapt-toy (phase 2)"]


def _two_dev_files(tmp_path: Path) -> list[str]:
    """Two corpora whose files share the stem ``dev``, as the dapt suite's amazon_review and yelp_review."""
    files = []
    for corpus, texts in (("amazon_review", TEXT), ("yelp_review", TEXT[::-1])):
        (tmp_path / corpus).mkdir()
        path = tmp_path / corpus / "dev.txt"
        path.write_text("\n".join(texts) + "\n")
        files.append(str(path))
    return files


def test_corpora_with_one_file_name_get_distinct_phase_names(tiny_bert: Path, tmp_path: Path) -> None:
    report = pretrain(pretrain_cfg(tiny_bert, _two_dev_files(tmp_path), tmp_path / "o"))
    names = ["amazon_review/dev", "yelp_review/dev"]
    assert [p["phase"] for p in report["phases"]] == names
    assert [p["phase"] for p in json.loads((tmp_path / "o" / "pretrain.json").read_text())["phases"]] == names


def test_work_interrupted_before_phases_had_distinct_names_still_resumes(tiny_bert: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    import hashlib

    from helpers import killed_when

    cfg = pretrain_cfg(tiny_bert, _two_dev_files(tmp_path), tmp_path / "o")
    # Killed in the second phase (steps 6 + 4: after its step-4 checkpoint), the first one finished.
    killed_when(monkeypatch, Pretrainer, "_batch", lambda self, rows, step: step == 10, lambda: pretrain(cfg))
    work = tmp_path / ".o.pretrain"
    # The resume stamp is what the code before distinct names wrote: it hashed each phase's name, both "dev".
    old = hashlib.sha256()
    for name, texts in (("dev", TEXT), ("dev", TEXT[::-1])):
        for piece in (name, *texts, ""):
            raw = piece.encode("utf-8")
            old.update(len(raw).to_bytes(8, "little") + raw)
    assert json.loads((work / "settings.json").read_text())["texts_sha256"] == old.hexdigest()
    # ... and its finished phase's report has the old name.
    done = work / "phase-0.done.json"
    recorded = json.loads(done.read_text()) | {"phase": "dev"}
    done.write_text(json.dumps(recorded))
    with caplog.at_level("WARNING", logger="transferlm.training.pretrain"):
        report = pretrain(cfg)
    assert "discarding" not in caplog.text
    first, second = report["phases"]
    assert first == recorded | {"phase": "amazon_review/dev"}, "the finished phase is reused, under its new name"
    assert second["phase"] == "yelp_review/dev" and second["resumed_from_step"] == 4


def test_pretrain_output_is_locked_beside_it_and_a_lock_file_is_no_other_file(tiny_bert: Path, text_file: Path,
                                                                              tmp_path: Path) -> None:
    from helpers import hold_lock
    from transferlm.errors import ConfigError
    from transferlm.io import LOCK_FILE

    out = tmp_path / "adapted"
    out.mkdir()
    (out / LOCK_FILE).write_text("1 an earlier run's lock file\n")  # e.g. a run that failed on its data
    cfg = pretrain_cfg(tiny_bert, [str(text_file)], out)
    cfg.steps, cfg.eval_every = 2, 0
    holder = hold_lock(out, beside=True)  # another pretrain of this folder, running
    try:
        with pytest.raises(ConfigError, match=rf"adapted is in use by another transferlm process \(pid {holder.pid}\)"):
            pretrain(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert not list(tmp_path.glob(".adapted.pretrain*")), "nothing started"
    pretrain(cfg)  # the lock file is not 'other files' the adapted model would replace
    assert (out / "pretrain.json").is_file() and not (tmp_path / ".adapted.lock").exists()
