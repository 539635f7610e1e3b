"""Shared pieces of the serving tests: task folders saved on the tiny models, an in-process app and its client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import torch

import helpers
from transferlm.data.tasks import TaskSpec
from transferlm.serving import Registry, ServeConfig, create_app

TEXTS = ["good movie", "bad film and very boring plot", "fun", "the acting was not great but the story is",
         "awful", "love it"]


def save_task(folder: Path, model: Path, method: str, args: dict, labels: int, seed: int, pair: bool = False):
    spec = TaskSpec(name=f"t{seed}", labels=tuple(str(i) for i in range(labels)),
                    label_names=tuple(f"c{i}" for i in range(labels)),
                    text_columns=("sentence1", "sentence2") if pair else ("sentence",))
    return helpers.save_task(folder, model, method, args, spec, seed=seed, scale=0.3)


def save_serving_tasks(tiny_bert: Path, tiny_llama: Path, root: Path) -> dict:
    """Task folders on tiny_bert: two LoRA tasks (2 and 3 labels), a LoRA pair task, an adapter task (another
    base copy), two IA3 tasks (no mixed batches), and a LoRA task trained on the tiny Llama (wrong base).
    Each test module wraps it in its own module-scoped ``saved`` fixture."""
    spec = {"sst": ("lora", {"r": 4}, 2, 1, False), "trec": ("lora", {"r": 2, "target": "attention"}, 3, 2, False),
            "nli": ("lora", {"r": 4}, 3, 3, True), "sub": ("adapter", {"bottleneck": 4}, 2, 4, False),
            "ia_a": ("ia3", {}, 2, 5, False), "ia_b": ("ia3", {}, 3, 6, False)}
    out: dict = {"models": {}}
    for name, (method, args, labels, seed, pair) in spec.items():
        out[name] = root / name
        out["models"][name] = save_task(root / name, tiny_bert, method, args, labels, seed, pair)
    out["llama"] = root / "llama"
    save_task(root / "llama", tiny_llama, "lora", {"r": 2}, 2, 7)
    return out


def make_app(tiny_bert: Path, saved: dict, names: tuple[str, ...] = ("sst", "trec"), **kw):
    cfg = ServeConfig(model=str(tiny_bert), tasks={n: str(saved[n]) for n in names}, device="cpu", **kw)
    registry = Registry(cfg.model, device="cpu", pad_ratio=cfg.pad_ratio)
    for n, folder in cfg.tasks.items():
        registry.load(n, folder)
    return create_app(cfg, registry)


@asynccontextmanager
async def serving(app) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


def gate(app) -> threading.Event:
    """Hold every forward pass until the returned event is set (the batcher's thread waits on it)."""
    batcher, opened = app.state.batcher, threading.Event()
    inner = batcher.predict

    def held(rows, hosts):
        opened.wait(20)
        return inner(rows, hosts)

    batcher.predict = held
    return opened


def count_rows(app) -> list[int]:
    """Record the number of rows of every forward pass the batcher runs (in the returned list)."""
    batcher, sizes = app.state.batcher, []
    inner = batcher.predict

    def counting(rows, hosts):
        sizes.append(len(rows))
        return inner(rows, hosts)

    batcher.predict = counting
    return sizes


async def until(cond, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def classify(task: str, *inputs) -> dict:
    return {"task": task, "inputs": list(inputs)}


def reference(saved: dict, task: str, text: str, text_b: str | None = None) -> torch.Tensor:
    """The probabilities of the model the task was saved from, on one input: the ground truth."""
    model, tok = saved["models"][task]
    batch = tok(text, text_b, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(**batch)[0].softmax(-1)
