"""PEFT tasks saved by runs: PEFT's format, several tasks on one base model, mixed-task batches, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import helpers
from transferlm.config import RunConfig
from transferlm.data.tasks import TaskSpec
from transferlm.errors import ConfigError, ModelError
from transferlm.methods.efficient import TaskModel, load_task_adapter
from transferlm.models.loading import load_backbone
from transferlm.protocol.run import run

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]


def batch(rows: int = 4, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1, length - 3:] = 0
    return {"input_ids": torch.randint(7, 38, (rows, length), generator=g), "attention_mask": mask}


def save_task(folder: Path, model_path: Path, method: str, args: dict, labels: int, seed: int):
    spec = TaskSpec(name=f"task{seed}", labels=tuple(str(i) for i in range(labels)))
    return helpers.save_task(folder, model_path, method, args, spec, seed=seed, scale=0.2)[0]


# Two tasks per method that differ in shape where the method allows (rank, variant, prefix/prompt length).
TWO_TASKS = {
    "lora": ({"r": 4}, {"r": 2, "target": "attention"}),
    "adapter": ({"bottleneck": 6}, {"bottleneck": 3, "variant": "pfeiffer"}),
    "prefix": ({"length": 3, "mlp_hidden": 16}, {"length": 5, "reparam": False, "init": "vocab"}),
    "prompt-tuning": ({"length": 2, "init": "random"}, {"length": 4}),
    "bitfit": ({}, {}),
}
MIXED = [(m, f) for m in TWO_TASKS for f in ("bert", "llama") if not (m == "bitfit" and f == "llama")]


@pytest.mark.parametrize("method,family", MIXED)
def test_tasks_share_one_base_and_mix_row_by_row(request, tmp_path, method, family) -> None:
    path = request.getfixturevalue("tiny_bert" if family == "bert" else "tiny_llama")
    args_a, args_b = TWO_TASKS[method]
    original_a = save_task(tmp_path / "a", path, method, args_a, labels=2, seed=1)
    original_b = save_task(tmp_path / "b", path, method, args_b, labels=3, seed=2)
    base = load_backbone(str(path))
    host = load_task_adapter(tmp_path / "a", base, "sst")
    assert load_task_adapter(tmp_path / "b", base, "trec") is host  # one base model, two tasks
    base_params = sum(p.numel() for p in base.model.parameters())
    assert sum(p.numel() for p in host.parameters()) < 2 * base_params
    x = batch()
    with torch.no_grad():
        for name, original in (("sst", original_a), ("trec", original_b)):
            host.set_task(name)  # what was saved is what was trained
            torch.testing.assert_close(host(**x), original(**x), atol=1e-5, rtol=1e-5)
        tasks = ["sst", "trec", "trec", "sst"]
        mixed = host(**x, tasks=tasks)
        for i, name in enumerate(tasks):
            host.set_task(name)
            alone = host(input_ids=x["input_ids"][i:i + 1], attention_mask=x["attention_mask"][i:i + 1])[0]
            assert mixed[i].shape == (2 if name == "sst" else 3,)
            torch.testing.assert_close(mixed[i], alone, atol=1e-5, rtol=1e-5)
    assert len({tuple(r[:2].tolist()) for r in mixed}) > 1  # the tasks really differ
    with pytest.raises(ConfigError, match="'nope' is not loaded"):
        host.set_task("nope")
    with pytest.raises(ConfigError, match="'nope' is not loaded"):
        host(**x, tasks=["sst", "nope", "sst", "sst"])


def test_ia3_switches_tasks_but_refuses_mixed_batches(tiny_bert: Path, tmp_path: Path) -> None:
    save_task(tmp_path / "a", tiny_bert, "ia3", {}, labels=2, seed=1)
    original_b = save_task(tmp_path / "b", tiny_bert, "ia3", {}, labels=2, seed=2)
    base = load_backbone(str(tiny_bert))
    host = load_task_adapter(tmp_path / "a", base, "sst")
    load_task_adapter(tmp_path / "b", base, "trec")
    x = batch()
    host.set_task("trec")
    with torch.no_grad():
        torch.testing.assert_close(host(**x), original_b(**x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="does not support batches that mix"):
        host(**x, tasks=["sst", "trec", "sst", "trec"])
    with pytest.raises(ConfigError, match="peft's parameter prefix"):
        load_task_adapter(tmp_path / "a", base, "a")  # 'a' is inside 'ia3_': peft could mix up its weights


@pytest.mark.parametrize("method,family", [("lora", "bert"), ("lora", "llama"), ("prompt-tuning", "bert"),
                                           ("prompt-tuning", "llama")])
def test_peft_loads_our_lora_and_prompt_tuning(request, tmp_path, method, family) -> None:
    from peft import PeftModel

    path = request.getfixturevalue("tiny_bert" if family == "bert" else "tiny_llama")
    save_task(tmp_path / "t", path, method, TWO_TASKS[method][0], labels=2, seed=3)
    ours = load_task_adapter(tmp_path / "t", load_backbone(str(path)), "t").backbone
    theirs = PeftModel.from_pretrained(AutoModel.from_pretrained(path), str(tmp_path / "t")).eval()
    x = batch()
    with torch.no_grad():
        expected = ours(**x).last_hidden_state
        got = theirs(**x).last_hidden_state
    if method == "prompt-tuning":
        assert got.shape[1] == x["input_ids"].shape[1] + 2
        got = got[:, 2:]  # peft returns the soft-prompt positions too
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_loading_errors(tiny_bert: Path, tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    save_task(tmp_path / "adapter", tiny_bert, "adapter", {"bottleneck": 4}, labels=2, seed=1)
    save_task(tmp_path / "lora", tiny_bert, "lora", {}, labels=2, seed=1)
    with pytest.raises(ModelError, match="model_type bert vs llama"):
        load_task_adapter(tmp_path / "adapter", load_backbone(str(tiny_llama)), "a")
    wider = BertModel(BertConfig(vocab_size=41, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64))
    with pytest.raises(ModelError, match="hidden_size 32 vs 48"):
        load_task_adapter(tmp_path / "lora", wider, "a")
    base = load_backbone(str(tiny_bert))
    host = load_task_adapter(tmp_path / "adapter", base, "a")
    with pytest.raises(ConfigError, match="already loaded"):
        load_task_adapter(tmp_path / "adapter", base, "a")
    with pytest.raises(ConfigError, match="hosts adapter tasks"):
        load_task_adapter(tmp_path / "lora", base, "b")
    with pytest.raises(ConfigError, match="not a saved parameter-efficient model"):
        load_task_adapter(tmp_path, base, "c")
    assert host.backbone.adapter_names == ["a"]


def _run_cfg(model: Path, data: Path, out: Path, method: str, args: dict) -> RunConfig:
    return RunConfig.from_dict({"task": "toy", "model": str(model), "method": method, "output": str(out),
                                "data": {"data_dir": str(data), "shots": 8}, "quiet": True, "save_model": True,
                                "method_args": args,
                                "train": {"max_steps": 4, "learning_rate": 3e-3, "eval_every": 2,
                                          "checkpoint_every": 0, "max_length": 32}})


def _expected_trainable(method: str, d: int, kv: int, layers: int, head: int) -> int | None:
    if method == "lora":  # r=8 on query (d -> d) and value (d -> kv): A (r x d) + B (out x r) each
        return layers * ((8 * d + d * 8) + (8 * d + kv * 8)) + head
    if method == "adapter":  # Houlsby, m=64: two adapters per layer of 2md + d + m
        return layers * 2 * (2 * 64 * d + d + 64) + head
    return None


E2E = [(m, "bert") for m in ("lora", "adapter", "prefix", "prompt-tuning", "bitfit", "ia3")] + \
      [(m, "llama") for m in ("lora", "adapter", "prefix", "prompt-tuning", "ia3")]


@pytest.mark.parametrize("method,family", E2E)
def test_run_end_to_end(request, toy_data, tmp_path, method, family) -> None:
    path = request.getfixturevalue("tiny_bert" if family == "bert" else "tiny_llama")
    out = tmp_path / "o"
    result = run(_run_cfg(path, toy_data, out, method, {"pooling": "mean"}), keep_engine=True)
    res = result.results
    assert 0 < res["trainable_params"] < res["total_params"]
    assert res["trainable_percent"] == round(100 * res["trainable_params"] / res["total_params"], 4)
    kv = 32 if family == "bert" else 16  # the tiny Llama has 2 key/value heads of 8
    expected = _expected_trainable(method, 32, kv, 2, 32 * 2 + 2)
    if expected is not None:
        assert res["trainable_params"] == expected
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["trainable_params"] == res["trainable_params"] and on_disk["method"] == method
    files = {p.name for p in (out / "model").iterdir()}
    own = {"adapter_config.json", "adapter_model.safetensors"} if method in ("lora", "prompt-tuning", "ia3") \
        else {"adapter.safetensors"}
    assert own | {"adapter.json", "head.safetensors", "method.json"} <= files
    # Only the method's weights are saved, not the backbone's.
    assert not any(f.startswith("model") or f == "backbone" for f in files)
    # The saved task reproduces the evaluated model (best-on-dev state).
    host = load_task_adapter(out / "model", load_backbone(str(path)), "toy")
    assert isinstance(host, TaskModel)
    x = batch()
    engine_model = result.engine.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(host(**x), engine_model(**x), atol=1e-5, rtol=1e-5)


def test_lora_merge_option_writes_a_plain_merged_backbone(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    result = run(_run_cfg(tiny_bert, toy_data, tmp_path / "o", "lora", {"merge": True}), keep_engine=True)
    merged = AutoModel.from_pretrained(tmp_path / "o" / "model" / "merged").eval()
    peft = result.engine.model.backbone.eval()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).last_hidden_state, peft(**x).last_hidden_state, atol=1e-5, rtol=1e-5)
