"""LM-BFF's few-shot table (seed lecture, slide 25) on our offline causal LM: prompting vs fine-tuning.

For each task, runs the K=16, 5-seed protocol for the rows of ``transferlm reproduce --suite lmbff``
(zero-shot prompting, in-context learning, standard fine-tuning with a classification head,
prompt-based fine-tuning, and prompt-based fine-tuning with demonstrations) and prints mean (std)
on the test split with wall time per run.
Usage:
    python benchmarks/lmbff.py --tasks SST-2 --model smollm2-135m --out benchmarks/results/lmbff-smollm2.json
    python benchmarks/lmbff.py --tasks SST-2 --variants prompt-finetune --seeds 13,21   # a subset
Reruns reuse finished runs (the compare cache under --work); results are written after every variant.
Calls for other seeds (or tasks, variants) may run in parallel with the same --out: each adds its seeds to the
rows under a lock, e.g. one process per core:
    python benchmarks/lmbff.py --tasks cr --variants icl --seeds 87 --out benchmarks/results/lmbff.json &
    python benchmarks/lmbff.py --tasks cr --variants icl --seeds 100 --out benchmarks/results/lmbff.json

Budget for 2 CPU cores (LM-BFF itself trains 1000 steps and ensembles 16 demonstration sets):
60 steps of batch 8 at lr 2e-5, dev selection every 15 steps, 2 demonstration sets at inference.
On smollm2 the dev accuracy of prompt-based fine-tuning stops improving by step 60 (120-step runs
picked step 30 or 60 on every seed measured).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from seed_rows import load_rows, record_row  # benchmarks/ is on the path when run as a script

from transferlm.config import CompareConfig, RunConfig
from transferlm.protocol.compare import compare, wall_time
from transferlm.reports.reproduce import LMBFF_VARIANTS, PEFT_LEARNING_RATES, Variant

STEPS = 60
TRAIN = {"max_steps": STEPS, "batch_size": 8, "learning_rate": 2e-5, "eval_every": 15, "checkpoint_every": 0,
         "max_length": 128, "warmup_ratio": 0.06}

# Short command-line names for the suite's rows, in the suite's order.
VARIANTS: dict[str, Variant] = dict(zip(
    ("prompt-zero-shot", "icl", "finetune", "prompt-finetune", "prompt-finetune+demos", "prompt-finetune-auto+demos"),
    LMBFF_VARIANTS, strict=True))
# Not rows of the lecture's table: prompt-based fine-tuning that trains a PEFT transformation of the LM
# instead of all its weights (the PEFT issue's few-shot rows on a causal LM), at the PEFT learning rates.
VARIANTS.update({
    f"prompt-finetune+{key}": Variant(f"Prompt-based FT (man) + {label}", "prompt-finetune", {"peft": {"name": m, **o}},
                                      {"learning_rate": PEFT_LEARNING_RATES[m]})
    # (BitFit has nothing to train on Llama-family LMs: they have no bias terms, a one-line error says so.)
    for key, m, label, o in (("lora", "lora", "LoRA (r=8, q/v)", {"r": 8}), ("ia3", "ia3", "IA3", {}),
                             ("adapter", "adapter", "Adapter (Houlsby, m=64)", {}),
                             ("prefix", "prefix", "Prefix-tuning (10, random start)", {"init": "random"}),
                             ("prefix-vocab", "prefix", "Prefix-tuning (10, from vocabulary keys/values)",
                              {"init": "vocab"}),
                             ("prompt-tuning", "prompt-tuning", "Prompt-tuning (20)", {}),
                             ("bitfit", "bitfit", "BitFit", {}))})
DEFAULT_VARIANTS = "prompt-zero-shot,icl,finetune,prompt-finetune,prompt-finetune+demos"


def train_settings(precision: str = "fp32") -> dict:
    """The benchmark's train settings; fp32 leaves ``mixed_precision`` out, as the rows recorded before it had it."""
    return TRAIN if precision == "fp32" else {**TRAIN, "mixed_precision": precision}


def variant_run(task: str, model: str, data_dir: str, name: str, train: dict | None = None,
                demo_sets: int | None = None) -> RunConfig:
    v = VARIANTS[name]
    # The suite's budget arguments for short runs (2 demonstration sets at inference instead of 16).
    margs = {**v.method_args, **v.quick_method_args}
    if demo_sets is not None and margs.get("demonstrations"):
        margs["demo_eval_samples"] = demo_sets
    return RunConfig.from_dict({"task": task, "model": model, "method": v.method, "quiet": True,
                                "method_args": margs, "data": {"data_dir": data_dir, "shots": 16},
                                "train": {**(train or TRAIN), **v.train}})


def setting_tags(name: str, precision: str = "fp32", demo_sets: int | None = None) -> list[str]:
    """What sets a run of variant ``name`` apart from the benchmark's default budget: a precision other than float32
    (``fp32``, or ``no`` as train.mixed_precision spells it) and a demonstration-set count other than the variant's."""
    default = VARIANTS[name].quick_method_args.get("demo_eval_samples")
    return ([] if precision in ("fp32", "no") else [precision]) + \
        ([] if demo_sets in (None, default) else [f"{demo_sets} sets"])


def work_slug(name: str, precision: str = "fp32", demo_sets: int | None = None) -> str:
    """The variant's folder under --work. Other precisions and demonstration-set counts get their own folders, so
    runs of one setting never overwrite the cached runs of another (the cache would only recompute them)."""
    return "-".join([name.replace("+", "-"), *(t.replace(" ", "") for t in setting_tags(name, precision, demo_sets))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="SST-2")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--work", default="runs/bench-lmbff")
    ap.add_argument("--out", default="benchmarks/results/lmbff.json")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: train and evaluate under bfloat16 autocast (train.mixed_precision=bf16); about 3x "
                         "faster on CPUs with AMX. Its rows go to their own --out: the file's train settings differ")
    ap.add_argument("--demo-sets", type=int,
                    help="demonstration sets averaged at inference by the rows with demonstrations (default 2; "
                         "LM-BFF: 16). Rows with another number go to their own --out")
    ap.add_argument("--checkpoint-every", type=int, default=0,
                    help="write a resumable checkpoint every N training steps, keep it (and the predictions so far) "
                         "through the evaluations, so a killed call resumes where it stopped (default 0: off). "
                         "Results and the recorded train settings are the same either way")
    args = ap.parse_args()
    if args.checkpoint_every < 0:
        raise SystemExit(f"--checkpoint-every: must be 0 or more, got {args.checkpoint_every}")
    if args.demo_sets is not None and args.demo_sets < 1:
        raise SystemExit(f"--demo-sets: must be at least 1, got {args.demo_sets}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    train = train_settings(args.precision)
    # Rows keep their other seeds when this call runs more; a file of another model or budget is an error
    # (checked now, before any training). Calls running other seeds in parallel may write to the same file.
    load_rows(out, args.model, train)
    for task in args.tasks.split(","):
        for name in args.variants.split(","):
            if name not in VARIANTS:
                raise SystemExit(f"--variants: unknown '{name}'; choose from {', '.join(VARIANTS)}")
            run = variant_run(task, args.model, args.data_dir, name, train, args.demo_sets)
            run.train.checkpoint_every = args.checkpoint_every  # not a setting of the results (nor of the cache)
            slug = work_slug(name, args.precision, run.method_args.get("demo_eval_samples"))
            summary = compare(CompareConfig(run=run, methods=[run.method], seeds=seeds,
                                            output=str(Path(args.work) / args.model / task / slug)))
            r = summary["rows"][0]
            row = {
                "task": task, "variant": name, "label": VARIANTS[name].label, "method": run.method,
                "method_args": run.method_args,
                "metric": summary["primary_metric"], "mean": r["mean"], "std": r["std"], "per_seed": r["per_seed"],
                "seeds": seeds, "trainable_params": r["trainable_params"],
                "train_seconds_per_seed": r["train_seconds"], "eval_seconds_per_seed": r["eval_seconds"],
                **wall_time(r)}
            row = record_row(out, args.model, train, row, header={"shots": 16})
            print(f"{task:6s} {name:26s} {100 * row['mean']:.1f} ({100 * row['std']:.1f}) over seeds {row['seeds']}  "
                  f"train {r['train_seconds']:.0f}s/seed", flush=True)
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
