"""Evaluation with LM-BFF demonstrations on a causal LM: whole rows vs reusing the demonstrations' keys/values.

A causal LM reads the demonstrations before the input, and LM-BFF draws them from a small pool (one per class
from the most similar half), so many (input, set) rows start with the same demonstrations. Inside one
evaluation pass transferlm computes each distinct prefix once (prompts/prefix_cache.py). This script builds
prompt-based fine-tuning with demonstrations on the packaged SmolLM2 (untrained: the timing and the equality
of the scores do not depend on training), scores the same test inputs both ways in one process, and prints
rows/s, the ratio, the cache's hit rates (rows that found their whole prefix; prefix tokens found) and the
largest score difference.
Usage:
    python benchmarks/prefix_reuse.py --task SST-2 --n 300 --sets 2
    python benchmarks/prefix_reuse.py --task sst-5 --n 200 --sets 2   # 5 classes: shared first demonstrations
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from transferlm.data.loading import DataOptions, load_task
from transferlm.io import write_json
from transferlm.methods import get_method
from transferlm.models.loading import load_backbone
from transferlm.training.engine import inference_scope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="SST-2")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=300, help="test inputs (the first n)")
    ap.add_argument("--sets", type=int, default=2, help="demonstration sets per input (LM-BFF: 16)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--out", default="benchmarks/results/prefix-reuse.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec, data = load_task(args.task, args.data_dir, DataOptions(shots=16, seed=args.seed))
    method = get_method("prompt-finetune")
    torch.manual_seed(args.seed)  # demonstrations draw from the run's seed
    cfg = method.parse_config({"demonstrations": True, "demo_eval_samples": args.sets})
    backbone = load_backbone(args.model, head=method.head_for(args.model))
    prepared = method.prepare(backbone, spec, cfg, max_length=256, train=data.train)
    model = prepared.model.eval()
    examples = data.test[:args.n]
    # The engine's order: by prompt length, so each batch pads little.
    lengths = prepared.eval_lengths(examples)
    order = sorted(range(len(examples)), key=lengths.__getitem__)

    def score(reuse: bool) -> tuple[torch.Tensor, float, dict]:
        model.prefix_cache_mb = 1024 if reuse else 0
        out, t0 = [], time.perf_counter()
        with torch.no_grad(), inference_scope(model):
            for i in range(0, len(order), args.batch):
                out.append(model(**prepared.collate([examples[j] for j in order[i:i + args.batch]])))
            cache = model._prefixes
            stats = {} if cache is None else {"rows": cache.rows, "hits": cache.hits, "prefix_tokens": cache.tokens,
                                              "found_tokens": cache.found, "segments": len(cache.entries),
                                              "cache_mb": round(cache.bytes / 2**20, 1), "active": cache.active}
        return torch.cat(out), time.perf_counter() - t0, stats

    whole, t_whole, _ = score(False)
    reused, t_reuse, stats = score(True)
    rows = len(examples) * args.sets
    result = {
        "task": args.task, "model": args.model, "inputs": len(examples), "sets": args.sets, "rows": rows,
        "threads": args.threads, "whole_s": round(t_whole, 1), "reuse_s": round(t_reuse, 1),
        "whole_rows_per_s": round(rows / t_whole, 2), "reuse_rows_per_s": round(rows / t_reuse, 2),
        "speedup": round(t_whole / t_reuse, 2), "cache": stats,
        "max_abs_diff_log_prob": float((whole - reused).abs().max()),
        "same_argmax": float((whole.argmax(1) == reused.argmax(1)).float().mean()),
        "command": f"python benchmarks/prefix_reuse.py --task {args.task} --n {args.n} --sets {args.sets}",
    }
    print(json.dumps(result, indent=1))
    out_path = Path(args.out)
    runs = json.loads(out_path.read_text(encoding="utf-8"))["runs"] if out_path.is_file() else []
    runs = [r for r in runs if (r["task"], r["inputs"], r["sets"]) != (args.task, len(examples), args.sets)]
    write_json(out_path, {"runs": [*runs, result]})


if __name__ == "__main__":
    main()
