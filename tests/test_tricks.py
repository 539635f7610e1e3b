"""Fine-tuning tricks: layer selection, freezing, layer-wise LR decay, self-ensemble, self-distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transferlm.config import RunConfig, TrainConfig
from transferlm.data.loading import DataOptions, load_task
from transferlm.errors import ConfigError
from transferlm.methods import get_method
from transferlm.models.loading import load_backbone
from transferlm.protocol.run import run
from transferlm.training.engine import Engine
from transferlm.training.ensemble import ParameterAverage, SelfDistillation
from transferlm.training.layers import layer_of
from transferlm.training.param_groups import build_param_groups


def _prepared(model_dir: Path, toy_data: Path, **method_args):
    spec, data = load_task("toy", toy_data, DataOptions(shots=8, seed=13))
    method = get_method("finetune")
    torch.manual_seed(0)
    prepared = method.prepare(load_backbone(str(model_dir)), spec, method.parse_config(method_args),
                              max_length=32, train=data.train)
    return spec, data, prepared


def _cfg(model: Path, data: Path, **train: object) -> RunConfig:
    return RunConfig.from_dict({"task": "toy", "model": str(model), "data": {"data_dir": str(data), "shots": 8},
                                "quiet": True, "train": {"max_steps": 8, "learning_rate": 3e-3, "eval_every": 4,
                                                         "checkpoint_every": 0, **train}})


def test_layer_index_from_parameter_names() -> None:
    assert layer_of("backbone.encoder.layer.0.attention.self.query.weight") == 1
    assert layer_of("backbone.layers.3.mlp.down_proj.weight") == 4
    assert layer_of("backbone.embeddings.word_embeddings.weight") == 0
    assert layer_of("backbone.embed_tokens.weight") == 0
    assert layer_of("head.weight") is None and layer_of("backbone.norm.weight") is None


def _tiny(name: str) -> torch.nn.Module:
    import transformers as hf

    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)
    configs = {
        # word_embed_proj_dim < hidden_size (opt-350m): project_in after the embeddings, project_out before the head
        "opt": lambda: hf.OPTForCausalLM(hf.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                      num_attention_heads=2, ffn_dim=32, max_position_embeddings=32,
                                                      word_embed_proj_dim=8)),
        "gpt2": lambda: hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)),
        "gpt_neox": lambda: hf.GPTNeoXForCausalLM(hf.GPTNeoXConfig(**small, tie_word_embeddings=False)),
        "llama": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**small, tie_word_embeddings=False)),
        "gemma": lambda: hf.GemmaForCausalLM(hf.GemmaConfig(**small, head_dim=8)),
        "bert": lambda: hf.BertForMaskedLM(hf.BertConfig(**small)),
        "roberta": lambda: hf.RobertaForMaskedLM(hf.RobertaConfig(**small)),
        "t5": lambda: hf.T5ForConditionalGeneration(hf.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32,
                                                                num_layers=2, num_heads=2)),
    }
    return configs[name]()


# Per family, the parameters outside the blocks that belong with the embeddings (the rest sit above the blocks:
# final norms, projections to the head, heads).
EMBEDDING_SIDE = {
    "opt": {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
            "model.decoder.project_in.weight"},
    "gpt2": {"transformer.wte.weight", "transformer.wpe.weight"},
    "gpt_neox": {"gpt_neox.embed_in.weight"},
    "llama": {"model.embed_tokens.weight"},
    "gemma": {"model.embed_tokens.weight"},
    "bert": {f"bert.embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                               "token_type_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias")},
    "roberta": {f"roberta.embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                                     "token_type_embeddings.weight", "LayerNorm.weight",
                                                     "LayerNorm.bias")},
    "t5": {"shared.weight"},
}


@pytest.mark.parametrize("family", sorted(EMBEDDING_SIDE))
def test_layer_decay_puts_embedding_side_projections_at_the_bottom_rate(family: str) -> None:
    model = _tiny(family)
    lr, xi, depth = 1e-3, 0.5, 2
    rate = {n: g["lr"] for g in build_param_groups(model, None, lr, 0.0, xi) for n in g["names"]}
    outside = {n for n in rate if not any(f".{b}." in n for b in ("layer", "layers", "h", "block"))}
    assert EMBEDDING_SIDE[family] <= outside
    for name in outside:
        assert rate[name] == pytest.approx(lr * xi**depth if name in EMBEDDING_SIDE[family] else lr), name


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_llama"])
def test_layerwise_lr_decay_groups_carry_exact_rates(model: str, toy_data: Path, request) -> None:
    _, _, prepared = _prepared(request.getfixturevalue(model), toy_data)
    lr, xi, depth = 1e-3, 0.5, 2
    groups = build_param_groups(prepared.model, prepared.model.backbone, lr, 0.01, xi)
    rate = {name: g["lr"] for g in groups for name in g["names"]}
    for name, r in rate.items():
        k = layer_of(name)
        expected = lr if k is None else lr * xi ** (depth - k)
        assert r == pytest.approx(expected, rel=1e-12), name
    emb = [r for n, r in rate.items() if layer_of(n) == 0]
    assert emb and max(emb) == pytest.approx(lr * xi**depth) and min(rate.values()) == pytest.approx(lr * xi**depth)
    assert rate["head.weight"] == lr
    # The engine's optimizer is built from the same groups.
    engine = Engine(prepared, load_task("toy", toy_data, DataOptions(shots=8))[0],
                    TrainConfig(learning_rate=lr, layer_decay=xi), seed=1, quiet=True)
    opt = engine._optimizer()
    opt_rates = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert opt_rates == rate


def test_layer_decay_too_strong_for_the_depth_warns(tiny_bert: Path, toy_data: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    _, _, prepared = _prepared(tiny_bert, toy_data)  # 2 layers
    with caplog.at_level("WARNING", logger="transferlm.training.param_groups"):
        build_param_groups(prepared.model, prepared.model.backbone, 1e-3, 0.01, 0.5)  # 0.25: fine
        assert not caplog.records
        build_param_groups(prepared.model, prepared.model.backbone, 1e-3, 0.01, 0.05)  # 0.0025 at the bottom
    assert len(caplog.records) == 1 and "ξ=0.05 over 2 layers" in caplog.text and "ξ=0.316" in caplog.text


@pytest.mark.parametrize("xi", [0.0, -0.5, 1.5])
def test_layer_decay_outside_range_is_an_error(xi: float) -> None:
    with pytest.raises(ConfigError, match="layer_decay"):
        TrainConfig(layer_decay=xi).validate()


def test_layer_selection_and_freezing(tiny_bert: Path, toy_data: Path) -> None:
    _, data, prepared = _prepared(tiny_bert, toy_data, layers=[1, -1], layer_combine="concat", freeze_layers=1)
    model = prepared.model
    assert model.head.in_features == 2 * 32
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any("embeddings" in n for n in frozen) and any(".layer.0." in n for n in frozen)
    assert not any(".layer.1." in n for n in frozen) and "head.weight" not in frozen
    batch = prepared.collate(data.train[:3])
    assert model(**batch).shape == (3, 2)
    _, _, mean_prep = _prepared(tiny_bert, toy_data, layers=[0, 2], layer_combine="mean")
    assert mean_prep.model.head.in_features == 32
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        _prepared(tiny_bert, toy_data, layers=[5])


@pytest.fixture(scope="module")
def tiny_albert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ALBERT: 2 layers sharing one set of weights (``albert_layer_groups.0``, no per-layer index in names)."""
    from transformers import AlbertConfig, AlbertModel, BertTokenizerFast

    from conftest import _vocab

    folder = tmp_path_factory.mktemp("tiny-albert")
    tok = BertTokenizerFast(vocab=_vocab(), do_lower_case=True)
    torch.manual_seed(0)
    AlbertModel(AlbertConfig(vocab_size=len(tok), embedding_size=8, hidden_size=16, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_layer_options_on_shared_layers_are_refused_not_ignored(tiny_albert: Path, toy_data: Path) -> None:
    """ALBERT's shared block has no layer index, so it counted as "above the blocks": freeze_layers=1 froze only the
    embeddings and layer_decay gave the block the head's rate, both silently (failed before: no error)."""
    from transferlm.errors import ModelError

    with pytest.raises(ModelError, match=r"freeze_layers=1 needs one set of weights per layer.*num_hidden_groups=1"):
        _prepared(tiny_albert, toy_data, freeze_layers=1)
    _, _, prepared = _prepared(tiny_albert, toy_data)
    with pytest.raises(ModelError, match="train.layer_decay needs one set of weights per layer"):
        build_param_groups(prepared.model, prepared.model.backbone, 1e-3, 0.0, 0.9)
    assert {g["lr"] for g in build_param_groups(prepared.model, prepared.model.backbone, 1e-3, 0.0)} == {1e-3}
    # Freezing every layer is well defined with shared weights: the whole backbone, as a probe wants.
    _, data, probe = _prepared(tiny_albert, toy_data, layers=[1], freeze_layers=2)
    trainable = {n for n, p in probe.model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    assert probe.model(**probe.collate(data.train[:2])).shape == (2, 2)


def test_window_average_equals_mean_of_snapshots() -> None:
    model = torch.nn.Linear(3, 2)
    avg = ParameterAverage(model, "window", window=3)
    saved = []
    for i in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(i + 1))
        avg.update(model)
        saved.append({n: p.detach().clone() for n, p in model.named_parameters()})
    out = avg.averaged()
    for n in out:
        assert torch.allclose(out[n], torch.stack([s[n] for s in saved[-3:]]).mean(0))
    restored = ParameterAverage(model, "window", window=3)
    restored.load_state_tensors(avg.state_tensors())
    assert all(torch.equal(restored.averaged()[n], out[n]) for n in out)


def test_ema_average() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    avg = ParameterAverage(model, "ema", decay=0.9)
    w0 = model.weight.detach().clone()
    avg.update(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    avg.update(model)
    assert torch.allclose(avg.averaged()["weight"], 0.9 * w0 + 0.1 * (w0 + 1.0))


class _Named(torch.nn.Module):
    """A linear layer called with a keyword batch, as the engine calls models."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.lin(features)


def test_self_distillation_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    student = _Named()
    avg = ParameterAverage(student, "ema", decay=0.5)
    avg.update(student)
    with torch.no_grad():
        student.lin.weight.mul_(2.0)
    avg.update(student)
    sd = SelfDistillation(student, avg, weight=0.7)
    sd.refresh()
    x = torch.randn(5, 4)
    s_logits = student(features=x)
    t = avg.averaged()
    teacher_logits = x @ t["lin.weight"].T + t["lin.bias"]
    by_hand = 0.7 * ((s_logits - teacher_logits) ** 2).mean(-1)
    assert torch.allclose(sd(batch={"features": x}, logits=s_logits), by_hand, atol=1e-6)
    # The teacher is the average, not the current student.
    assert not torch.allclose(teacher_logits, s_logits)


def test_self_ensemble_run_deploys_the_average(tiny_bert: Path, toy_data: Path) -> None:
    spec, data, prepared = _prepared(tiny_bert, toy_data, dropout=0.0)
    cfg = TrainConfig(max_steps=6, learning_rate=3e-3, eval_every=0, checkpoint_every=0, select_on_dev=False,
                      self_ensemble="window", ensemble_every=2, ensemble_window=2)
    engine = Engine(prepared, spec, cfg, seed=3, quiet=True)
    engine.fit(data.train, data.dev)
    assert engine.average.updates == 3
    final = {n: p for n, p in engine.model.named_parameters() if p.requires_grad}
    expected = engine.average.averaged()
    assert all(torch.allclose(final[n], expected[n]) for n in expected)


def test_tricks_run_end_to_end_and_record_config(tiny_bert: Path, toy_data: Path) -> None:
    res = run(_cfg(tiny_bert, toy_data, layer_decay=0.8, self_ensemble="ema", self_distill=1.0)).results
    assert res["config"]["train"]["self_distill"] == 1.0 and res["metrics"]["accuracy"] >= 0
    base = run(_cfg(tiny_bert, toy_data)).results
    assert [h["loss"] for h in res["history"]] != [h["loss"] for h in base["history"]]


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_a_window_ensemble_that_would_never_take_a_snapshot_is_an_error(tiny_bert: Path, toy_data: Path,
                                                                         distill: float) -> None:
    # 4 steps, a snapshot every 10: nothing would be averaged (and a teacher would stay the initial model).
    spec, data, prepared = _prepared(tiny_bert, toy_data)
    cfg = TrainConfig(max_steps=4, checkpoint_every=0, self_ensemble="window", ensemble_every=10,
                      self_distill=distill)
    with pytest.raises(ConfigError, match=r"train.ensemble_every=10 exceeds the run's 4 training steps"):
        Engine(prepared, spec, cfg, seed=1, quiet=True).fit(data.train, data.dev)
    # At the limit one snapshot is taken, and it is what the run deploys.
    engine = Engine(prepared, spec, TrainConfig(max_steps=4, checkpoint_every=0, eval_every=0, select_on_dev=False,
                                                self_ensemble="window", ensemble_every=4), seed=1, quiet=True)
    engine.fit(data.train, data.dev)
    assert engine.average.updates == 1


@pytest.mark.parametrize("field", ["ensemble_every", "ensemble_window"])
def test_a_bad_ensemble_setting_names_its_field_and_value(field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^train\.{field} must be >= 1, got 0$"):
        TrainConfig(**{field: 0}).validate()


def test_freezing_more_layers_than_the_model_has_says_the_range(tiny_bert: Path, toy_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"freeze_layers=3 exceeds the model's 2 layers; use 0\.\.2"):
        _prepared(tiny_bert, toy_data, freeze_layers=3)


def test_cls_pooling_on_a_decoder_is_an_error(tiny_llama: Path, tiny_bert: Path, toy_data: Path) -> None:
    # A causal model's first position sees only the first token: the same features for every input.
    with pytest.raises(ConfigError, match="pooling=cls on a decoder-only model"):
        _prepared(tiny_llama, toy_data, pooling="cls")
    _, data, prepared = _prepared(tiny_llama, toy_data, pooling="last")
    assert prepared.model(**prepared.collate(data.train[:3])).shape == (3, 2)
    assert _prepared(tiny_bert, toy_data, pooling="cls")[2].model.pooling == "cls"  # an encoder's [CLS] is fine



@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_cls_pooling_on_a_decoder_is_an_error_for_peft_methods_too(tiny_llama: Path, toy_data: Path,
                                                                     method: str) -> None:
    spec, data = load_task("toy", toy_data, DataOptions(shots=8, seed=13))
    m = get_method(method)
    with pytest.raises(ConfigError, match="pooling=cls on a decoder-only model"):
        m.prepare(load_backbone(str(tiny_llama)), spec, m.parse_config({"pooling": "cls"}), max_length=32,
                  train=data.train)


def test_ia3_rescaling_vectors_get_no_weight_decay(tiny_bert: Path, toy_data: Path) -> None:
    # (IA)³ multiplies activations by learned vectors that start at 1 (peft stores them 2-d): decaying them
    # would pull every adapted activation toward 0. LoRA's matrices and the head keep their decay.
    spec, data = load_task("toy", toy_data, DataOptions(shots=8, seed=13))
    decay = {}
    for name in ("ia3", "lora"):
        method = get_method(name)
        prepared = method.prepare(load_backbone(str(tiny_bert)), spec, method.parse_config({}), max_length=32,
                                  train=data.train)
        decay |= {n: g["weight_decay"] for g in build_param_groups(prepared.model, prepared.model.backbone, 1e-3, 0.01)
                  for n in g["names"]}
    ia3 = [n for n in decay if ".ia3_l." in n]
    lora = [n for n in decay if ".lora_" in n]
    assert ia3 and lora and "head.weight" in decay
    assert all(decay[n] == 0.0 for n in ia3)
    assert all(decay[n] == 0.01 for n in lora) and decay["head.weight"] == 0.01


def test_a_model_without_transformer_layers_is_a_one_line_error() -> None:
    from torch import nn

    from transferlm.errors import ModelError
    from transferlm.training.layers import num_layers

    with pytest.raises(ModelError, match="cannot find the transformer layers of Linear"):
        num_layers(nn.Linear(2, 2))
    assert num_layers(nn.Sequential(nn.ModuleList([nn.Linear(2, 2)] * 3))) == 3
