"""Parameter-efficient fine-tuning vs full fine-tuning on full-data SST-2 (seed lecture, slide 33).

Each method gets its usual learning rate (full fine-tuning 5e-5; LoRA/adapters/BitFit 1e-3;
prefix 5e-4; prompt-tuning 1e-2) and the same budget; prints accuracy and trainable parameters.
Usage:
    python benchmarks/peft_full.py --task SST-2 --model minilm-l6 --epochs 1
A finished run under --work with the same settings is reused (compare's run cache), so after a default
changes only the methods it touches train again; a reused row keeps the wall time of the call that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import transformers

from transferlm.config import RunConfig
from transferlm.io import write_json
from transferlm.protocol.run import run
from transferlm.protocol.run_cache import cached_result
from transferlm.reports.reproduce import PEFT_LEARNING_RATES as LEARNING_RATES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="SST-2")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--methods", default="finetune,lora,adapter,prefix,prompt-tuning,bitfit")
    ap.add_argument("--shots", default="full")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--work", default="runs/bench-peft")
    ap.add_argument("--out", default="benchmarks/results/peft-full-sst2.json")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    header = {"task": args.task, "model": args.model, "shots": args.shots, "epochs": args.epochs, "seed": args.seed}
    old_file = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    # Rows of the same setting from an earlier call: methods not run now are kept; others are replaced.
    same = all(old_file.get(k) == v for k, v in header.items())
    before = {r["method"]: r for r in old_file.get("rows", [])} if same else {}
    if old_file and not same:
        print(f"{args.out} holds another setting; it is replaced", flush=True)
    rows = []
    for method in args.methods.split(","):
        out = Path(args.work) / args.task / method
        t0 = time.perf_counter()
        cfg = RunConfig.from_dict({
            "task": args.task, "model": args.model, "method": method, "seed": args.seed, "output": str(out),
            "quiet": True, "data": {"data_dir": args.data_dir, "shots": None if args.shots == "full" else int(args.shots)},
            "train": {"learning_rate": LEARNING_RATES[method], "epochs": args.epochs, "batch_size": 16,
                      "eval_every": 130, "checkpoint_every": 130, "warmup_ratio": 0.06}})
        res = cached_result(out, cfg)
        reused = res is not None
        res = res if reused else run(cfg).results
        metric = res["primary_metric"]
        wall = round(time.perf_counter() - t0, 1)
        if reused:  # this call did not run it: keep the wall time measured when it ran, if that row is this run
            old = before.get(method, {})
            wall = old.get("wall_seconds") if old.get("test") == res["metrics"][metric] else None
        rows.append({"method": method, "metric": metric, "test": res["metrics"][metric], "dev": res["dev_metrics"][metric],
                     "trainable_params": res["trainable_params"], "total_params": res["total_params"],
                     "trainable_percent": res["trainable_percent"], "learning_rate": LEARNING_RATES[method],
                     "steps": res["steps"], "train_seconds": res["train_seconds"],
                     "wall_seconds": wall, "reused": reused,
                     "options": res.get("method_settings", res["method_config"])})
        print(f"{method:14s} test {100 * res['metrics'][metric]:.1f}  trainable {res['trainable_params']:>10,} "
              f"({res['trainable_percent']:.2f}%)  train {res['train_seconds']:.0f}s{'  (reused)' if reused else ''}",
              flush=True)
    ran = {r["method"] for r in rows}
    write_json(args.out, {**header, "rows": rows + [r for m, r in before.items() if m not in ran]})


if __name__ == "__main__":
    main()
