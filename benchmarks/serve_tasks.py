"""The serving load test's eight tasks: their LoRA task folders (random or briefly trained) and the inputs its
clients send (the tasks' test sets, a saved inputs file, or synthetic text when the data is absent)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TASKS = ["SST-2", "sst-5", "mr", "cr", "trec", "CoLA", "MRPC", "RTE"]  # 6 single-sentence, 2 pair tasks
FALLBACK = ["a gripping, funny and moving film", "flat, tedious and far too long", "what is the capital of peru ?",
            "the plot never quite comes together but the acting is fine", "i loved it", "this is not a sentence of"]


def served_name(task: str) -> str:
    return task.lower()


def build_adapters(model: str, work: Path, how: str, data_dir: str | None, steps: int) -> dict[str, str]:
    """One LoRA task folder per task: random weights in our saved format, or a few steps of real training."""
    import torch

    from transferlm.config import RunConfig
    from transferlm.data.tasks import get_task
    from transferlm.methods import get_method
    from transferlm.models.loading import load_backbone
    from transferlm.protocol.run import run

    folders = {}
    for i, task in enumerate(TASKS):
        folder = work / how / task / "model"
        folders[served_name(task)] = str(folder.resolve())  # the YAML resolves relative paths against itself
        if (folder / "method.json").is_file():
            continue  # built by an earlier run of this benchmark
        if how == "trained":
            cfg = RunConfig.from_dict({
                "task": task, "model": model, "method": "lora", "seed": 13, "output": str(folder.parent),
                "quiet": True, "save_model": True, "data": {"data_dir": data_dir, "shots": 16, "max_test": 32},
                "train": {"learning_rate": 1e-3, "max_steps": steps, "batch_size": 8, "eval_every": steps,
                          "checkpoint_every": 0}})
            run(cfg)
            continue
        backbone = load_backbone(model)
        torch.manual_seed(100 + i)
        method = get_method("lora")
        prepared = method.prepare(backbone, get_task(task), method.parse_config({"r": 8}), max_length=128, train=[])
        with torch.no_grad():
            for p in prepared.model.parameters():
                if p.requires_grad:  # LoRA's B starts at zero: move every trained weight, as training would
                    p.add_(torch.randn_like(p) * 0.02)
        folder.mkdir(parents=True, exist_ok=True)
        prepared.save(folder)
    return folders


def check_inputs(inputs: Any, source: str) -> dict[str, list[Any]]:
    """``inputs`` as load_inputs returns them ({served task name: [text, or {"sentence1", "sentence2"}]}),
    with every task present and non-empty; else SystemExit naming what is wrong in ``source``."""
    if not isinstance(inputs, dict):
        raise SystemExit(f"{source}: expected a JSON object {{task: [inputs]}}, got {type(inputs).__name__}")
    out: dict[str, list[Any]] = {}
    for task in TASKS:
        rows = inputs.get(served_name(task))
        if not isinstance(rows, list) or not rows:
            raise SystemExit(f"{source}: no inputs for task {served_name(task)!r} (has: {', '.join(sorted(inputs))}); "
                             "write the file again with --write-inputs")
        for row in rows:
            ok = isinstance(row, str) or (isinstance(row, dict) and isinstance(row.get("sentence1"), str)
                                          and isinstance(row.get("sentence2", ""), str))
            if not ok:
                raise SystemExit(f"{source}: task {served_name(task)!r}: an input must be a text or "
                                 f"{{\"sentence1\", \"sentence2\"}}, got {row!r:.80}")
        out[served_name(task)] = rows
    return out


def read_inputs(path: str | Path) -> dict[str, list[Any]]:
    """The inputs saved by ``--write-inputs`` (a JSON object {task: [inputs]})."""
    try:
        inputs = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"--inputs {path}: cannot read it ({e})") from None
    return check_inputs(inputs, f"--inputs {path}")


def load_inputs(data_dir: str | None) -> dict[str, list[Any]]:
    """Test (or dev) inputs of each task from the benchmark data; synthetic text when it is absent."""
    from transferlm.data.loading import DataOptions, load_task

    out: dict[str, list[Any]] = {}
    for task in TASKS:
        try:
            spec, data = load_task(task, data_dir, DataOptions(shots=16, seed=13, max_test=300))
            examples = data.test or data.dev
            rows = [{"sentence1": e.text_a, "sentence2": e.text_b or ""} if spec.is_pair else e.text_a
                    for e in examples]
        except Exception as e:  # noqa: BLE001  (any data problem: fall back, and say so)
            print(f"  {task}: no data ({e}); synthetic inputs", flush=True)
            rows = []
        out[served_name(task)] = rows or synthetic_inputs(task)
    return out


def synthetic_inputs(task: str) -> list[Any]:
    pair = task in ("MRPC", "RTE")
    return [{"sentence1": t, "sentence2": FALLBACK[0]} if pair else t for t in FALLBACK]
