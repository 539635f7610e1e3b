"""PEFT wrappers through their life: copied as a teacher, loaded onto a mismatched base, switched, emptied, and
given layer-wise learning rates."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from transferlm.errors import ConfigError, TransferLMError
from transferlm.methods.efficient import PEFT_METHODS, apply_peft, config_from_dict
from transferlm.methods.finetune import SequenceClassifier
from transferlm.training.ensemble import ParameterAverage, SelfDistillation, load_into
from transferlm.training.param_groups import build_param_groups

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]

METHODS = list(PEFT_METHODS)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": torch.randint(7, 38, (2, 6), generator=g), "attention_mask": mask}


def options(name: str) -> dict:
    return {"init": "random"} if name == "prompt-tuning" else {}


def base(path: Path) -> torch.nn.Module:
    return AutoModel.from_pretrained(path).eval()


def nudge(model: torch.nn.Module, names: tuple[str, ...] = (), seed: int = 0) -> None:
    """Move trainable (or the named adapter's) weights off their start, where most adapters are the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if (p.requires_grad and not n.startswith("head")) or any(f".{a}." in n or n.endswith(f".{a}") for a in names):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


# -- 1: self-distillation's teacher runs the averaged weights -------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_the_distillation_teacher_runs_the_averaged_weights_not_the_students(tiny_bert: Path, name: str) -> None:
    model = SequenceClassifier(apply_peft(base(tiny_bert), name, options(name)), 32, 2, "mean", 0.0).eval()
    average = ParameterAverage(model, "ema", decay=0.5)
    average.update(model)
    teacher = SelfDistillation(model, average, 1.0)
    nudge(model)  # the student moves on; the average stays where it was
    teacher.refresh()
    with torch.no_grad():
        t, s = teacher.teacher(**batch()), model(**batch())
        reference = copy.deepcopy(model)
        load_into(reference, average.averaged())
        expected = reference(**batch())
    torch.testing.assert_close(t, expected)
    assert (t - s).abs().max() > 1e-5, f"{name}: the teacher runs the student's weights"


# -- 2: an adapter for another FFN width -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def narrow_ffn_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = BertConfig.from_pretrained(tiny_bert)
    cfg.intermediate_size = 48  # the only difference from tiny_bert
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("bert_ffn48")
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name,args", [("lora", {"target": "all-linear"}), ("ia3", {}), ("bitfit", {}),
                                       ("adapter", {})])
def test_an_adapter_for_another_ffn_width_is_refused_in_one_line(tiny_bert: Path, narrow_ffn_bert: Path,
                                                                  tmp_path: Path, name: str, args: dict) -> None:
    apply_peft(base(tiny_bert), name, args, adapter_name="t1").save_adapter(tmp_path, "t1")
    other = PEFT_METHODS[name].backbone(base(narrow_ffn_bert))
    with pytest.raises(TransferLMError, match="intermediate_size 64 vs 48") as err:
        other.load_adapter(tmp_path, "t1")
    assert "\n" not in str(err.value)
    assert other.adapter_names == [] and other.active is None


@pytest.mark.parametrize("name", ["lora", "ia3", "bitfit", "adapter", "prompt-tuning"])
def test_an_adapter_whose_weights_do_not_load_is_removed_and_the_name_reusable(tiny_bert: Path, tmp_path: Path,
                                                                               name: str) -> None:
    from safetensors.torch import load_file, save_file

    source = apply_peft(base(tiny_bert), name, options(name), adapter_name="t1")
    nudge(source, ("t1",))
    source.save_adapter(tmp_path / "good", "t1")
    source.save_adapter(tmp_path / "bad", "t1")
    weights = next(f for f in (tmp_path / "bad").glob("*.safetensors"))
    state = load_file(str(weights))
    key = sorted(state)[0]
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)  # one column too many
    save_file(state, str(weights))

    target = PEFT_METHODS[name].backbone(base(tiny_bert))
    with pytest.raises(TransferLMError) as err:
        target.load_adapter(tmp_path / "bad", "t1")
    assert "\n" not in str(err.value)
    assert target.adapter_names == [] and target.active is None
    target.load_adapter(tmp_path / "good", "t1")  # the same name again
    target.eval()
    source.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(**batch()).last_hidden_state, source(**batch()).last_hidden_state)


def test_adapters_saved_before_the_ffn_width_was_recorded_still_load(tiny_bert: Path, tmp_path: Path) -> None:
    import json

    apply_peft(base(tiny_bert), "lora", {}, adapter_name="t1").save_adapter(tmp_path, "t1")
    meta = json.loads((tmp_path / "adapter.json").read_text())
    del meta["base"]["intermediate_size"]
    (tmp_path / "adapter.json").write_text(json.dumps(meta))
    other = PEFT_METHODS["lora"].backbone(base(tiny_bert))
    other.load_adapter(tmp_path, "t1")
    assert other.active == "t1"


# -- 3: IA3 batches and peft's set_adapter ---------------------------------------------------------------------
def two_tasks(path: Path, name: str) -> torch.nn.Module:
    p = apply_peft(base(path), name, {}, adapter_name="t1")
    p.add_adapter("t2", p.configs["t1"])
    nudge(p, ("t1", "t2"), seed=1)
    return p


@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_a_batch_naming_another_adapter_leaves_the_active_one_active(tiny_bert: Path, name: str) -> None:
    p = two_tasks(tiny_bert, name).eval()
    with torch.no_grad():
        before = p(**batch()).last_hidden_state
        other = p(**batch(), adapter_names=["t2", "t2"]).last_hidden_state
        after = p(**batch()).last_hidden_state
    assert (other - before).abs().max() > 1e-5
    torch.testing.assert_close(after, before)
    assert p.active == "t1" and p.model.active_adapter == "t1"


@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_switching_adapters_on_a_frozen_wrapper_keeps_it_frozen(tiny_bert: Path, name: str) -> None:
    p = two_tasks(tiny_bert, name)
    p.set_adapter("t2")
    assert any(q.requires_grad for q in p.parameters())  # an unfrozen wrapper trains the active adapter
    p.requires_grad_(False)
    p.set_adapter("t1")
    if name == "ia3":  # a batch switches peft's adapter there and back
        p(**batch(), adapter_names=["t2", "t2"])
    assert not any(q.requires_grad for q in p.parameters())


# -- 4: deleting the last adapter ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_after_deleting_the_last_adapter_the_bare_model_runs_and_a_new_one_activates(tiny_bert: Path,
                                                                                    name: str) -> None:
    model = base(tiny_bert)
    with torch.no_grad():
        bare = model(**batch()).last_hidden_state
    p = apply_peft(model, name, options(name), adapter_name="t1")
    nudge(p, ("t1",))
    p.eval()
    p.delete_adapter("t1")
    with torch.no_grad():
        torch.testing.assert_close(p(**batch()).last_hidden_state, bare)
    p.add_adapter("t3", config_from_dict(name, options(name)))
    assert p.active == "t3"
    nudge(p, ("t3",), seed=2)
    with torch.no_grad():
        assert (p(**batch()).last_hidden_state - bare).abs().max() > 1e-5


# -- 5: layer-wise learning rates -------------------------------------------------------------------------------
def rates(path: Path, name: str) -> dict[str, float]:
    model = SequenceClassifier(apply_peft(base(path), name, options(name), adapter_name="t1"), 32, 2, "mean", 0.0)
    groups = build_param_groups(model, model.backbone, 1.0, 0.0, 0.5)
    return {n: g["lr"] for g in groups for n in g["names"]}


@pytest.mark.parametrize("name", ["lora", "ia3", "adapter", "bitfit"])
def test_layer_decay_gives_peft_weights_the_rate_of_their_block(tiny_bert: Path, name: str) -> None:
    lr = rates(tiny_bert, name)  # 2 blocks, ξ=0.5: block 1 at 0.5, block 2 at 1, the embeddings 0.25
    blocks = {n: r for n, r in lr.items() if not n.startswith("head")}
    first = [r for n, r in blocks.items() if any(s in n for s in (".layer.0.", "banks.0_", "layer__0__"))]
    second = [r for n, r in blocks.items() if any(s in n for s in (".layer.1.", "banks.1_", "layer__1__"))]
    assert first and set(first) == {0.5}
    assert second and set(second) == {1.0}
    assert lr["head.weight"] == 1.0
    if name == "bitfit":
        assert lr["backbone.deltas.t1.embeddings__LayerNorm"] == 0.25


def test_layer_decay_gives_a_soft_prompt_the_embeddings_rate(tiny_bert: Path) -> None:
    assert rates(tiny_bert, "prompt-tuning")["backbone.prompts.t1"] == 0.25


def test_layer_decay_with_prefix_tuning_is_a_one_line_error(tiny_bert: Path) -> None:
    with pytest.raises(ConfigError, match="layer_decay does not apply to prefix") as err:
        rates(tiny_bert, "prefix")
    assert "\n" not in str(err.value)
