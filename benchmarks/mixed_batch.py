"""Mixed-task batches vs switching adapters per request: inference throughput with 8 LoRA task adapters.

The seed lecture lists "cannot put samples of different tasks into the same batch" as LoRA's limit.
transferlm's TaskModel runs one forward pass where each row uses its own task adapter (peft's
``adapter_names`` for LoRA). This script loads 8 LoRA tasks on one minilm-l6, sends the same stream of
requests (a random task per sentence) three ways, checks all three give the same logits, and prints
examples/s and the ratios:
  switch    one request at a time, activating its task's adapter (what plain LoRA serving does)
  per-task  requests grouped by task, one batch per task (needs the whole stream up front)
  mixed     batches of requests in arrival order, any mix of tasks in one forward pass
The adapters are LoRA weights drawn at random around a fresh init (no training needed to time inference).
Usage:
    python benchmarks/mixed_batch.py --model minilm-l6 --tasks 8 --requests 512 --batch 32
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from transferlm.data.loading import DataOptions, load_task
from transferlm.data.tasks import TaskSpec
from transferlm.io import write_json
from transferlm.methods import get_method
from transferlm.methods.efficient import load_task_adapter
from transferlm.models.loading import load_backbone


def make_adapters(model: str, n: int, folder: Path, r: int) -> list[str]:
    names = []
    for i in range(n):
        backbone = load_backbone(model)
        torch.manual_seed(i)
        method = get_method("lora")
        spec = TaskSpec(name=f"task{i}", labels=("0", "1"))
        prepared = method.prepare(backbone, spec, method.parse_config({"r": r}), max_length=64, train=[])
        with torch.no_grad():  # stand-in for training: move every trainable weight
            for p in prepared.model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        prepared.save(folder / f"task{i}")
        names.append(f"task{i}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--out", default="benchmarks/results/mixed-batch.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    texts = [e.text_a for e in load_task("SST-2", args.data_dir, DataOptions(shots=16, seed=13))[1].test]
    rng = random.Random(0)
    stream = [(texts[i % len(texts)], f"task{rng.randrange(args.tasks)}") for i in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        names = make_adapters(args.model, args.tasks, Path(tmp), args.r)
        base = load_backbone(args.model)
        host = None
        for name in names:
            host = load_task_adapter(Path(tmp) / name, base, name)
    assert host is not None
    tok = base.tokenizer

    def encode(rows: list[str]) -> dict[str, torch.Tensor]:
        enc = tok(rows, padding=True, truncation=True, max_length=64, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    results: dict[str, float] = {}
    outputs: dict[str, list[torch.Tensor]] = {}

    def switch(requests: list[tuple[str, str]] = stream) -> list[torch.Tensor]:
        out = []
        for text, task in requests:
            host.set_task(task)
            out.append(host(**encode([text]))[0])
        return out

    def per_task() -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(stream)
        for task in names:
            idx = [i for i, (_, t) in enumerate(stream) if t == task]
            host.set_task(task)
            for j in range(0, len(idx), args.batch):
                chunk = idx[j:j + args.batch]
                logits = host(**encode([stream[i][0] for i in chunk]))
                for i, row in zip(chunk, logits, strict=True):
                    out[i] = row
        return out  # type: ignore[return-value]

    def mixed() -> list[torch.Tensor]:
        out = []
        for j in range(0, len(stream), args.batch):
            chunk = stream[j:j + args.batch]
            out.extend(host(**encode([t for t, _ in chunk]), tasks=[k for _, k in chunk]))
        return out

    for name, fn in (("switch", switch), ("per-task", per_task), ("mixed", mixed)):
        # Warm-up, so no mode's timing holds the first calls' one-off costs: per-task and mixed pass over the
        # stream once, switch (whose one-at-a-time pass is the long one) over its first --batch requests.
        fn() if name != "switch" else switch(stream[:args.batch])
        t0 = time.perf_counter()
        outputs[name] = fn()
        results[name] = len(stream) / (time.perf_counter() - t0)
        print(f"{name:9s} {results[name]:8.1f} examples/s", flush=True)
    for name in ("per-task", "mixed"):
        diff = max(float((a - b).abs().max()) for a, b in zip(outputs["switch"], outputs[name], strict=True))
        assert diff < 1e-4, f"{name} differs from one-at-a-time by {diff}"
    ratio = results["mixed"] / results["switch"]
    print(f"mixed / switch = {ratio:.2f}x   mixed / per-task = {results['mixed'] / results['per-task']:.2f}x")
    write_json(args.out, {"model": args.model, "tasks": args.tasks, "requests": args.requests, "batch": args.batch,
                          "lora_r": args.r, "threads": torch.get_num_threads(), "examples_per_second": results,
                          "mixed_over_switch": round(ratio, 2),
                          "mixed_over_per_task": round(results["mixed"] / results["per-task"], 2)})


if __name__ == "__main__":
    main()
