"""Shared fixtures: tiny randomly initialised models saved as local folders, and data locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORDS = ("good great bad terrible movie film plot acting was is it the a an and but not very fun boring "
         "yes no maybe cat dog awful fine love hate story ? . , !").split()


def data_root() -> Path:
    return Path(os.environ.get("TRANSFERLM_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "lm-bff").is_dir():
        pytest.fail(f"benchmark data not found at {root}; set TRANSFERLM_DATA to the folder holding lm-bff/")
    return root


def _vocab() -> dict[str, int]:
    return {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", *WORDS])}


def make_tiny_bert(folder: Path, *, mlm: bool = False, dropout: float = 0.0, positions: int = 128) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast(vocab=_vocab(), do_lower_case=True)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=positions, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg) if mlm else BertModel(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_tiny_llama(folder: Path) -> Path:
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    # A WordPiece tokenizer is enough to drive a causal LM mechanically.
    tok = BertTokenizerFast(vocab=_vocab(), do_lower_case=True, bos_token="<s>",
                            eos_token="</s>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_tiny_gpt2(folder: Path) -> Path:
    """A causal LM whose output layer is tied to its input embeddings (unlike the tiny Llama's)."""
    from transformers import BertTokenizerFast, GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast(vocab=_vocab(), do_lower_case=True, bos_token="<s>", eos_token="</s>")
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-mlm"), mlm=True)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def write_toy_task(folder: Path, n_per_class: int = 20) -> Path:
    """A learnable two-class csv task in LM-BFF layout (label,text; no header)."""
    folder.mkdir(parents=True, exist_ok=True)
    pos = ["good movie", "great film", "love the story", "fun acting", "very good plot"]
    neg = ["bad movie", "terrible film", "hate the story", "boring acting", "very bad plot"]
    rows = []
    for i in range(n_per_class):
        rows.append(f"1,{pos[i % len(pos)]} {WORDS[i % 7]}")
        rows.append(f"0,{neg[i % len(neg)]} {WORDS[i % 7]}")
    (folder / "original").mkdir(exist_ok=True)
    (folder / "original" / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "original" / "test.csv").write_text("\n".join(rows[:16]) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_toy_task(root / "toy")
    return root


@pytest.fixture
def two_tasks(tmp_path: Path) -> Path:
    """Two learnable toy tasks (toy, toy2) in one data folder: intermediate-task and multi-task runs."""
    root = tmp_path / "data"
    write_toy_task(root / "toy")
    write_toy_task(root / "toy2", n_per_class=30)
    return root


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """Unlabelled text for continued pretraining: one line per text (``pretrain_helpers.TEXT``)."""
    from pretrain_helpers import write_text_file

    return write_text_file(tmp_path / "text.txt")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core CPU: one torch thread avoids contention and keeps timings stable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
