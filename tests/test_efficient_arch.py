"""Architecture maps beyond the test fixtures: Gemma-3 and Qwen2 (tiny, random), unknown families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from transferlm.errors import ConfigError
from transferlm.methods.efficient import PEFT_METHODS, apply_peft

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]
METHODS = list(PEFT_METHODS)
IDENTITY_AT_INIT = ("lora", "adapter", "bitfit", "ia3")


def batch() -> dict[str, torch.Tensor]:
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": torch.randint(7, 38, (3, 7), generator=torch.Generator().manual_seed(0)),
            "attention_mask": mask}


def options(name: str) -> dict:
    return {"init": "random"} if name == "prompt-tuning" else {}


def _tiny_model(kind: str) -> torch.nn.Module:
    from transformers import AutoModelForMaskedLM, Gemma3TextConfig, Qwen2Config, RobertaConfig

    torch.manual_seed(0)
    common = dict(vocab_size=41, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if kind == "gemma3_text":
        cfg = Gemma3TextConfig(**common, num_key_value_heads=2, pad_token_id=0, head_dim=8, sliding_window=32,
                               layer_types=["sliding_attention", "full_attention"])
    elif kind == "qwen2":
        cfg = Qwen2Config(**common, num_key_value_heads=2, pad_token_id=0)
    else:
        return AutoModelForMaskedLM.from_config(RobertaConfig(**common, pad_token_id=1)).eval()
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("kind", ["gemma3_text", "qwen2", "roberta"])
@pytest.mark.parametrize("name", METHODS)
def test_other_families(kind, name) -> None:
    model = _tiny_model(kind)
    if name == "bitfit" and kind == "gemma3_text":
        with pytest.raises(ConfigError, match="no bias"):
            apply_peft(model, name)
        return
    x = batch()
    with torch.no_grad():
        ref = model(**x).logits
        out = apply_peft(model, name, options(name)).eval()(**x).logits
    assert out.shape == ref.shape
    assert ((out - ref).abs().max() < 1e-6) == (name in IDENTITY_AT_INIT)


def test_roberta_prefix_keeps_robertas_own_positions() -> None:
    model = _tiny_model("roberta")
    peft = apply_peft(model, "prefix", {"length": 3})
    ids = batch()["input_ids"]
    ids[1, 5:] = model.config.pad_token_id
    ours = peft._positions(ids, torch.full((3,), 3), ids.shape[1])
    theirs = model.roberta.embeddings.create_position_ids_from_input_ids(ids, model.config.pad_token_id)
    assert torch.equal(ours, theirs)


def test_unknown_architecture_and_method_are_clear_errors(tiny_bert: Path) -> None:
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(ConfigError, match="model type 'gpt2'"):
        apply_peft(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40)), "lora")
    with pytest.raises(ConfigError, match="unknown parameter-efficient method"):
        apply_peft(AutoModel.from_pretrained(tiny_bert), "loha")
    model = AutoModel.from_pretrained(tiny_bert)
    apply_peft(model, "lora")
    with pytest.raises(ConfigError, match="already carries lora"):
        apply_peft(model, "adapter")
    with pytest.raises(ConfigError, match="already a lora transformation"):
        apply_peft(apply_peft(AutoModel.from_pretrained(tiny_bert), "lora"), "lora")


def test_random_soft_prompts_start_at_the_scale_of_the_embeddings_gemma_sees() -> None:
    model = _tiny_model("gemma3_text")  # Gemma's embedding module scales its table by sqrt(hidden_size)
    emb = model.get_input_embeddings()
    seen = emb(torch.arange(emb.num_embeddings)).std().item()
    torch.manual_seed(0)
    prompt = apply_peft(model, "prompt-tuning", {"length": 20, "init": "random"}).prompts["default"]
    assert 0.7 < prompt.std().item() / seen < 1.4


def test_a_vocab_prefix_longer_than_gemmas_sliding_window() -> None:
    from transformers import Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=41, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, head_dim=16, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"])
    model = AutoModelForCausalLM.from_config(cfg).eval()
    peft = apply_peft(model, "prefix", {"length": 6, "init": "vocab", "reparam": False}).eval()
    prefix = peft.encoders["default"].prefix
    assert prefix.shape == (2, 2, 6, 32)  # every layer holds all 6 positions, the sliding one too
    with torch.no_grad():
        out = peft(**batch()).logits
    assert out.shape == (3, 7, 41) and torch.isfinite(out).all()


def test_soft_prompts_cut_inputs_to_the_position_table_and_prefixes_do_not() -> None:
    from transferlm.methods.efficient.method import fit_positions

    roberta = _tiny_model("roberta")  # 512 positions, counted from padding_idx + 1 = 2
    peft = apply_peft(roberta, "prompt-tuning", {"length": 20, "init": "random"}).eval()
    cfg = peft.configs["default"]
    assert fit_positions(peft, "prompt-tuning", cfg, 512) == fit_positions(roberta, "prompt-tuning", cfg, 512) == 490
    assert fit_positions(peft, "prompt-tuning", cfg, 128) == 128
    with torch.no_grad():  # the longest input that is kept takes the last position
        assert peft(input_ids=torch.full((1, 490), 7)).logits.shape == (1, 490, 41)
    prefix = apply_peft(_tiny_model("roberta"), "prefix", {"length": 20})
    assert fit_positions(prefix, "prefix", prefix.configs["default"], 512) == 512  # the text keeps its positions
    qwen = apply_peft(_tiny_model("qwen2"), "prompt-tuning", {"length": 20, "init": "random"})
    assert fit_positions(qwen, "prompt-tuning", qwen.configs["default"], 10**6) == 10**6  # rotary: no table
