"""`transferlm serve`: replaced task versions are freed once unused, and plain finetune runs are served."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from pathlib import Path

import pytest
import torch

import helpers
from serving_helpers import TEXTS, classify, serving, until
from transferlm.data.example import Example
from transferlm.data.tasks import TaskSpec
from transferlm.errors import ConfigError
from transferlm.serving import Registry, ServeConfig, create_app

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.usefixtures("one_thread")]

# One task per method that stays ("keep"), and three versions of another ("t") replaced one after the other.
METHODS = {"lora": {"r": 2}, "adapter": {"bottleneck": 4}, "prefix": {"length": 2, "reparam": False},
           "prompt-tuning": {"length": 2, "init": "random"}, "bitfit": {}, "ia3": {}}
PROMPT = {"template": "{sentence} it was {answer} .", "label_words": {"0": "bad", "1": "good"}}


def spec_of(labels: int, seed: int, *, regression: bool = False) -> TaskSpec:
    if regression:
        return TaskSpec(name=f"r{seed}", regression=True, metric="pearson")
    return TaskSpec(name=f"t{seed}", labels=tuple(str(i) for i in range(labels)),
                    label_names=tuple(f"c{i}" for i in range(labels)))


def save(folder: Path, model: Path, method: str, args: dict, seed: int, labels: int = 2, **kw):
    return helpers.save_task(folder, model, method, args, spec_of(labels, seed, **kw), seed=seed, scale=0.3)


def probs(registry: Registry, entries, texts) -> list[torch.Tensor]:
    """One predict call over rows of several tasks (a mixed batch); each row's probabilities."""
    rows, hosts = [], []
    for entry, text in zip(entries, texts, strict=True):
        rows += entry.rows([Example(text)])
        hosts.append(entry.host)
    return [torch.tensor(list(p.probabilities.values())) for p in registry.predict(rows, hosts)]


def reference(saved, text: str) -> torch.Tensor:
    model, tok = saved
    with torch.no_grad():
        out = model(**tok(text, truncation=True, max_length=128, return_tensors="pt"))[0]
    return out if out.dim() == 0 else out.softmax(-1)


def names_in(host) -> set[str]:
    """Every task version whose weights are anywhere in the host's modules (state-dict key segments)."""
    return {part for key in host.model.state_dict() for part in key.split(".")
            if part.startswith(("keep-v", "t-v"))}


# -- retiring replaced versions --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(METHODS))
def test_replaced_versions_leave_the_host_and_other_tasks_are_unchanged(tiny_bert: Path, tmp_path: Path,
                                                                        method: str) -> None:
    args = METHODS[method]
    keep = save(tmp_path / "keep", tiny_bert, method, args, seed=1, labels=3)
    versions = [save(tmp_path / f"v{i}", tiny_bert, method, args, seed=2 + i) for i in range(4)]
    registry = Registry(str(tiny_bert), device="cpu", pad_ratio=0)
    kept = registry.load("keep", tmp_path / "keep")
    registry.load("t", tmp_path / "v0")
    host = kept.host
    size = sum(p.numel() for p in host.model.parameters())
    texts = [TEXTS[0], TEXTS[3], TEXTS[1]]
    before = probs(registry, [kept] * 3, texts)
    for i in range(1, 4):
        old = registry.get("t")
        new = registry.load("t", tmp_path / f"v{i}", replace=True)
        assert registry.retiring == [old.adapter] and old.adapter in names_in(host)  # retired, not freed yet
        assert registry.free_unused(in_use=[old.adapter]) == 0  # a request still uses it: it stays
        assert registry.free_unused() == 1 and registry.retiring == []
        expected = {kept.adapter, new.adapter}
        assert names_in(host) == expected and set(host.model.heads) == expected
        assert set(host.model.backbone.configs) == expected and host.adapters == [kept.adapter, new.adapter]
        if method in ("lora", "ia3"):
            assert set(host.model.backbone.model.peft_config) == expected
        after = probs(registry, [kept] * 3, texts)
        for a, b in zip(before, after, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # the other task did not move
        mixed = probs(registry, [kept, new, kept], texts)  # and a mixed batch still routes every row
        for p, saved, text in zip(mixed, (keep, versions[i], keep), texts, strict=True):
            torch.testing.assert_close(p, reference(saved, text), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in host.model.parameters()) == size  # three reloads, no growth
    assert registry.hosts == 1


def test_delete_adapter_errors_and_the_last_task_releases_its_model_copy(tiny_bert: Path, tmp_path: Path) -> None:
    save(tmp_path / "lora", tiny_bert, "lora", {"r": 2}, seed=1)
    save(tmp_path / "adapter", tiny_bert, "adapter", {"bottleneck": 4}, seed=2)
    registry = Registry(str(tiny_bert), device="cpu")
    lora = registry.load("t", tmp_path / "lora")
    with pytest.raises(ConfigError, match="task 'nope' is not loaded; loaded tasks: t-v1"):
        lora.host.delete_adapter("nope")
    with pytest.raises(ConfigError, match="adapter 'nope' is not loaded"):
        lora.host.model.backbone.delete_adapter("nope")
    base = weakref.ref(lora.host.backbone.model)
    del lora
    registry.load("t", tmp_path / "adapter", replace=True)  # another method: the lora copy has no task left
    assert registry.hosts == 2 and registry.free_unused() == 1
    assert registry.hosts == 1 and base() is None  # the whole lora base copy is gone


def test_a_request_admitted_before_a_replace_is_answered_by_its_version(tiny_bert: Path, tmp_path: Path) -> None:
    v1 = save(tmp_path / "v1", tiny_bert, "lora", {"r": 2}, seed=1)
    v2 = save(tmp_path / "v2", tiny_bert, "lora", {"r": 2}, seed=2)
    save(tmp_path / "other", tiny_bert, "adapter", {"bottleneck": 4}, seed=3)
    cfg = ServeConfig(model=str(tiny_bert), tasks={"t": str(tmp_path / "v1"), "o": str(tmp_path / "other")},
                      device="cpu", max_wait_ms=0, max_batch_size=1)
    registry = Registry(cfg.model, device="cpu")
    for n, folder in cfg.tasks.items():
        registry.load(n, folder)
    app = create_app(cfg, registry)
    batcher, host = app.state.batcher, registry.get("t").host
    releases: list[threading.Event] = []
    inner = batcher.predict

    def held(rows, hosts):  # each forward pass waits for its own release
        releases.append(threading.Event())
        releases[-1].wait(20)
        return inner(rows, hosts)

    batcher.predict = held

    async def go():
        async with serving(app) as c:
            first = asyncio.create_task(c.post("/v1/classify", json=classify("t", TEXTS[0])))
            await until(lambda: len(releases) == 1)  # running, held
            second = asyncio.create_task(c.post("/v1/classify", json=classify("t", TEXTS[1])))
            await until(lambda: batcher.queued == 1)  # admitted with version 1
            load = asyncio.create_task(c.post("/v1/tasks", json={"name": "t", "path": str(tmp_path / "v2"),
                                                                 "replace": True}))
            await until(lambda: batcher._executor._work_queue.qsize() == 1)  # the load waits behind the pass
            releases[0].set()
            loaded = await load  # swapped while the second request is still to run (held)
            await until(lambda: len(releases) == 2)
            during = {"retiring": registry.retiring, "names": names_in(host),
                      "health": (await c.get("/health")).json(), "metrics": (await c.get("/metrics")).text}
            releases[1].set()
            answers = [await first, await second]
            await until(lambda: not registry.retiring)
            batcher.predict = inner  # nothing holds later passes
            third = await c.post("/v1/classify", json=classify("t", TEXTS[1]))
            return loaded, during, answers, third, (await c.get("/metrics")).text, (await c.get("/health")).json()

    loaded, during, answers, third, metrics, health = asyncio.run(go())
    assert loaded.status_code == 201
    new_version = loaded.json()["version"]
    assert during["retiring"] == ["t-v1"] and "t-v1" in during["names"]  # still needed by the queued request
    assert during["health"]["retiring"] == 1 and "transferlm_adapters_retiring 1.0" in during["metrics"]
    for resp, text in zip(answers, TEXTS[:2], strict=True):
        assert resp.status_code == 200 and resp.json()["adapter_version"] != new_version
        got = torch.tensor(list(resp.json()["results"][0]["probabilities"].values()))
        torch.testing.assert_close(got, reference(v1, text), atol=1e-5, rtol=1e-4)  # the old weights answered
    assert third.json()["adapter_version"] == new_version
    got = torch.tensor(list(third.json()["results"][0]["probabilities"].values()))
    torch.testing.assert_close(got, reference(v2, TEXTS[1]), atol=1e-5, rtol=1e-4)
    assert names_in(host) == {"t-v3"} and health["retiring"] == 0
    assert "transferlm_adapters_freed_total 1.0" in metrics and "transferlm_adapters_retiring 0.0" in metrics


def test_prompt_tasks_free_their_hook_and_adapter(tiny_mlm: Path, tmp_path: Path) -> None:
    lora = {**PROMPT, "peft": {"name": "lora", "r": 2}}
    for i in range(3):
        save(tmp_path / f"p{i}", tiny_mlm, "prompt-finetune", lora, seed=i)
    registry = Registry(str(tiny_mlm), device="cpu")
    registry.load("keep", tmp_path / "p0")
    registry.load("t", tmp_path / "p1")
    host = registry.get("t").host
    head = host.lm.get_output_embeddings()
    assert len(head._forward_pre_hooks) == 2
    before = probs(registry, [registry.get("keep")], [TEXTS[0]])
    registry.load("t", tmp_path / "p2", replace=True)
    assert registry.free_unused() == 1
    assert set(host.tasks) == set(host.lm.configs) == set(host.lm.model.peft_config) == {"keep-v1", "t-v3"}
    assert len(head._forward_pre_hooks) == 2  # the retired task's verbalizer hook went with it
    torch.testing.assert_close(probs(registry, [registry.get("keep")], [TEXTS[0]])[0], before[0], atol=1e-6, rtol=0)


def test_full_model_tasks_are_freed_by_reference_counting(tiny_bert: Path, tiny_mlm: Path, tmp_path: Path) -> None:
    """A finetune task and a whole-LM prompt-finetune task each own a model copy: it goes with its last use."""
    for i in range(2):
        save(tmp_path / f"ft{i}", tiny_bert, "finetune", {"dropout": 0.0}, seed=i)
        save(tmp_path / f"pr{i}", tiny_mlm, "prompt-finetune", PROMPT, seed=i)
    gc.collect()
    gc.disable()  # reference counting alone, no cycle collector
    try:
        for name in ("ft", "pr"):
            registry = Registry(str(tiny_bert), device="cpu")
            entry = registry.load(name, tmp_path / f"{name}0")
            probs(registry, [entry], [TEXTS[0]])
            model = weakref.ref(entry.host.backbone.model)
            del entry
            registry.load(name, tmp_path / f"{name}1", replace=True)
            assert model() is not None and registry.hosts == 2
            assert registry.free_unused() == 1
            assert model() is None, f"{name}: the replaced model copy is still alive"
            assert registry.hosts == 1
    finally:
        gc.enable()


# -- finetune runs ---------------------------------------------------------------------------------------------


def test_finetune_runs_are_served_beside_adapters_in_mixed_batches(tiny_bert: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    saved = {"ft": save(tmp_path / "ft", tiny_bert, "finetune", {"dropout": 0.0}, seed=1, labels=3),
             "ft_cls": save(tmp_path / "ft_cls", tiny_bert, "finetune",
                            {"dropout": 0.0, "pooling": "cls", "layers": [-1, -2], "layer_combine": "concat"}, seed=2),
             "ft_reg": save(tmp_path / "ft_reg", tiny_bert, "finetune", {"dropout": 0.0}, seed=3, regression=True),
             "sst": save(tmp_path / "sst", tiny_bert, "lora", {"r": 2}, seed=4)}
    cfg = ServeConfig(model=str(tiny_bert), tasks={n: str(tmp_path / n) for n in saved}, device="cpu",
                      max_wait_ms=300)
    registry = Registry(cfg.model, device="cpu")
    with caplog.at_level(logging.WARNING, logger="transferlm.serving"):
        for n, folder in cfg.tasks.items():
            registry.load(n, folder)
    assert [r.folder for r in caplog.records if getattr(r, "event", None) == "own_copy"] == [
        str(tmp_path / n) for n in ("ft", "ft_cls", "ft_reg")]
    assert registry.hosts == 4 and registry.get("ft").method == "finetune"
    app = create_app(cfg, registry)
    requests = [classify("ft", TEXTS[0], TEXTS[1]), classify("sst", TEXTS[2]), classify("ft_cls", TEXTS[3]),
                classify("ft_reg", TEXTS[4], TEXTS[5]), classify("ft", TEXTS[5])]

    async def go():
        async with serving(app) as c:
            return await asyncio.gather(*(c.post("/v1/classify", json=r) for r in requests))

    responses = asyncio.run(go())
    assert app.state.batcher.batches == 1  # three full models and an adapter in one batch
    for req, resp in zip(requests, responses, strict=True):
        assert resp.status_code == 200, resp.text
        for text, result in zip(req["inputs"], resp.json()["results"], strict=True):
            truth = reference(saved[req["task"]], text)
            if req["task"] == "ft_reg":
                assert result["score"] == pytest.approx(float(truth), abs=1e-5) and "probabilities" not in result
            else:
                got = torch.tensor(list(result["probabilities"].values()))
                torch.testing.assert_close(got, truth, atol=1e-5, rtol=1e-4)
    assert len(responses[0].json()["results"][0]["probabilities"]) == 3


def test_a_finetune_folder_without_its_weights_is_a_one_line_error(tiny_bert: Path, tmp_path: Path) -> None:
    save(tmp_path / "ft", tiny_bert, "finetune", {"dropout": 0.0}, seed=1)
    (tmp_path / "ft" / "head.safetensors").unlink()
    registry = Registry(str(tiny_bert), device="cpu")
    with pytest.raises(ConfigError, match=r"needs its backbone/ folder and head.safetensors") as err:
        registry.load("ft", tmp_path / "ft")
    assert "\n" not in str(err.value) and registry.hosts == 0 and len(registry) == 0
