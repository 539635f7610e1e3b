"""Domain- and task-adaptive pretraining (seed lecture, slide 8): base vs DAPT vs TAPT vs DAPT+TAPT.

For each task: continued pretraining of the base model on domain text (DAPT), on the task's own
training text (TAPT), or both in sequence, then the K-shot fine-tuning protocol on each model.
Usage:
    python benchmarks/dapt.py --tasks acl-arc,imdb,SST-2 --seeds 13,21,42 --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import transformers

from transferlm.config import CompareConfig, RunConfig, parse_shots
from transferlm.io import write_json
from transferlm.protocol.compare import compare, wall_time
from transferlm.reports.reproduce import DOMAIN_TEXT  # domain text per task: one table for both
from transferlm.training.pretrain import PretrainConfig, pretrain

# What a pretrained model under --work must have been made with to stand for this call's variant.
PRETRAIN_KEYS = ("model", "texts", "text_field", "steps")
# With a task: phase, also the fine-tuning runs whose dev texts TAPT left out (absent: from before it did).
TAPT_KEYS = ("tapt_shots", "tapt_seeds")


def pretrain_mismatch(recorded: dict, cfg: PretrainConfig) -> list[str]:
    """The settings in which a finished pretraining (its pretrain.json ``config``) differs from ``cfg``."""
    keys = PRETRAIN_KEYS + (TAPT_KEYS if any(t.startswith("task:") for t in cfg.texts) else ())
    return [k for k in keys if recorded.get(k) != getattr(cfg, k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="acl-arc,imdb,SST-2")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--seeds", default="13,21,42")
    ap.add_argument("--shots", default="16")
    ap.add_argument("--steps", type=int, default=150, help="pretraining steps per phase")
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--work", default="runs/bench-dapt")
    ap.add_argument("--out", default="benchmarks/results/dapt.json")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    data = Path(args.data_dir)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for task in args.tasks.split(","):
        files, field = DOMAIN_TEXT[task]
        domain = [str(data / f) for f in files]
        variants = {"base": None, "TAPT": [f"task:{task}"], "DAPT": domain, "DAPT+TAPT": [*domain, f"task:{task}"]}
        for name, texts in variants.items():
            model = args.model
            pre = None
            if texts is not None:
                folder = Path(args.work) / "models" / f"{task}-{name}"
                # The text field applies to domain files; task: sources read the task's own columns.
                # TAPT leaves out the dev texts of the fine-tuning runs below (their K and seeds).
                pcfg = PretrainConfig(model=args.model, texts=texts, text_field=field, output=str(folder),
                                      data_dir=args.data_dir, steps=args.steps, quiet=True,
                                      tapt_shots=parse_shots(args.shots), tapt_seeds=seeds)
                if not (folder / "pretrain.json").is_file():
                    pretrain(pcfg)
                pre = json.loads((folder / "pretrain.json").read_text())
                # A model another --model or --steps made here must not be fine-tuned (and its cached runs
                # reported) as this call's: the folder's name holds neither.
                if stale := pretrain_mismatch(pre.get("config", {}), pcfg):
                    raise SystemExit(f"{folder}: pretrained with other {', '.join(stale)} ("
                                     + ", ".join(f"{k} {pre.get('config', {}).get(k)!r}" for k in stale)
                                     + f"); pass another --work for model {args.model!r}, {args.steps} steps")
                model = str(folder)
            run = RunConfig.from_dict({"task": task, "model": model, "quiet": True,
                                       "data": {"data_dir": args.data_dir, "shots": args.shots}})
            summary = compare(CompareConfig(run=run, methods=["finetune"], seeds=seeds,
                                            output=str(Path(args.work) / task / name)))
            r = summary["rows"][0]
            rows.append({"task": task, "variant": name, "metric": summary["primary_metric"], "mean": r["mean"],
                         "std": r["std"], "per_seed": r["per_seed"],
                         "finetune_wall_seconds": wall_time(r)["wall_seconds"], "reused_runs": r["reused_runs"],
                         "pretrain": [{k: p[k] for k in ("phase", "perplexity_before", "perplexity_after", "seconds",
                                                         "tokens_per_second", "train_texts")} for p in pre["phases"]]
                         if pre else None})
            print(f"{task:8s} {name:10s} {summary['primary_metric']} {100 * r['mean']:.1f} ({100 * r['std']:.1f})",
                  flush=True)
            # After every variant, so a stopped run still leaves what it finished.
            write_json(args.out, {"model": args.model, "shots": args.shots, "seeds": args.seeds,
                                  "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
