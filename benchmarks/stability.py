"""Do the fine-tuning tricks make few-shot fine-tuning more stable? (seed lecture, slides 3-4)

Runs the 5-seed K=16 protocol for plain fine-tuning and with each trick, and prints mean (std)
over seeds. Usage:
    python benchmarks/stability.py --tasks SST-2,cr --model minilm-l6 --out benchmarks/results/stability-minilm.json
Reruns reuse finished runs (the compare cache under --work). Rows already in --out keep their other seeds:
`--seeds 87,100` after `--seeds 13,21,42` records 5-seed rows. An --out of another model or --train is an error.
--finetune-from takes the finetune row from benchmarks/lmbff.py results of the same model and settings.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from seed_rows import load_rows, record_row  # benchmarks/ is on the path when run as a script

from transferlm.config import CompareConfig, RunConfig
from transferlm.protocol.compare import compare, wall_time

LLRD_XI = 0.8  # the LLRD row's default ξ; its runs keep the plain "LLRD" cache folder
VARIANTS = {
    "finetune": {},
    f"+ LLRD (ξ={LLRD_XI:g})": {"layer_decay": LLRD_XI},
    "+ self-ensemble (window 5)": {"self_ensemble": "window", "ensemble_every": 10, "ensemble_window": 5},
    "+ self-distillation (λ=1)": {"self_distill": 1.0, "self_ensemble": "ema", "ema_decay": 0.95},
}


def _slug(name: str) -> str:
    return name.split("(")[0].strip("+ ").replace(" ", "-") or "finetune"


def borrowed_finetune_row(files: list[str], task: str, seeds: list[int], model: str,
                          train: dict[str, Any]) -> dict[str, Any]:
    """The plain fine-tuning row of ``task`` taken from LM-BFF results files instead of rerun.

    ``benchmarks/lmbff.py``'s finetune variant is this script's finetune run exactly (method finetune, no
    method arguments, the same train settings, which ``load_rows`` checks), so its seeds need not be trained twice.
    """
    for f in files:
        if not Path(f).is_file():
            raise SystemExit(f"--finetune-from: {f} does not exist; pass a benchmarks/lmbff.py --out file")
        src = load_rows(Path(f), model, train)[1].get((task, "finetune"))
        if src is None:
            continue
        missing = sorted(set(seeds) - set(src["seeds"]))
        if missing:
            raise SystemExit(f"{f}: its {task} finetune row lacks seeds {missing}; run them there first: "
                             f"python benchmarks/lmbff.py --tasks {task} --variants finetune "
                             f"--seeds {','.join(map(str, missing))} --out {f}")
        scores = dict(zip(src["seeds"], src["per_seed"], strict=True))
        per_seed = [scores[s] for s in seeds]
        row = {"task": task, "variant": "finetune", "seeds": seeds, "mean": float(np.mean(per_seed)),
               "std": float(np.std(per_seed)), "per_seed": per_seed,
               "train_seconds_per_seed": src["train_seconds_per_seed"], "wall_seconds": None,
               "source": f"seeds {', '.join(map(str, seeds))} of the {task} finetune row of {f}: the identical "
                         "run config (method finetune, these train settings), computed there"}
        # LM-BFF rows keep one mean of the seconds, not each seed's: with fewer seeds borrowed than the row
        # has, that mean is over the source's seeds, and the row says so. The source's own note on its seconds
        # (a paused or resumed seed) holds for the borrowed number as well.
        notes = []
        if sorted(set(seeds)) != sorted(set(src["seeds"])):
            notes.append(f"train_seconds_per_seed is the mean over seeds {', '.join(map(str, src['seeds']))} of "
                         f"the source row ({f} keeps no per-seed seconds), not over the borrowed seeds alone")
        if src.get("timing_note"):
            notes.append(f"source row's note: {src['timing_note']}")
        if notes:
            row["timing_note"] = "; ".join(notes)
        return row
    raise SystemExit(f"--finetune-from: no {task} finetune row in {', '.join(files)}; run benchmarks/lmbff.py "
                     f"--tasks {task} --variants finetune into one of them, or drop --finetune-from")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="SST-2,cr")
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--data-dir", default=os.environ.get("TRANSFERLM_DATA", "../shared/data"))
    ap.add_argument("--work", default="runs/bench-stability")
    ap.add_argument("--out", default="benchmarks/results/stability.json")
    ap.add_argument("--train", type=json.loads, default={},
                    help="JSON of base training settings under every variant's own, e.g. the LM-BFF benchmark's "
                         "'{\"max_steps\": 60, \"learning_rate\": 2e-5, \"eval_every\": 15}'")
    ap.add_argument("--layer-decay", type=float, default=LLRD_XI,
                    help="xi of the LLRD variant; pick it for the depth (xi^layers is the embeddings' share of the rate)")
    ap.add_argument("--finetune-from", help="comma-separated LM-BFF results files (benchmarks/lmbff.py --out) of the "
                    "same --model and --train: take the finetune row from them instead of training it again")
    ap.add_argument("--variants", help=f"comma-separated subset of: {', '.join(_slug(v) for v in VARIANTS)}")
    args = ap.parse_args()
    if not 0 < args.layer_decay <= 1:
        ap.error(f"--layer-decay {args.layer_decay}: must be in (0, 1]")
    variants = {(f"+ LLRD (ξ={args.layer_decay:g})" if "layer_decay" in train else name):
                ({"layer_decay": args.layer_decay} if "layer_decay" in train else train)
                for name, train in VARIANTS.items()}
    chosen = {name: train for name, train in variants.items()
              if not args.variants or _slug(name) in args.variants.split(",")}
    if not chosen:
        ap.error(f"--variants matches none of {', '.join(_slug(v) for v in variants)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    load_rows(out, args.model, args.train)  # a file of another model or budget fails now, before any training
    for task in args.tasks.split(","):
        for name, train in chosen.items():
            if name == "finetune" and args.finetune_from:
                # The source holds every seed asked for, so the row is taken whole, not merged.
                row = record_row(out, args.model, args.train, borrowed_finetune_row(
                    args.finetune_from.split(","), task, seeds, args.model, args.train), whole=True,
                    header={"shots": 16})
            else:
                run = RunConfig.from_dict({"task": task, "model": args.model, "quiet": True,
                                           "data": {"data_dir": args.data_dir, "shots": 16},
                                           "train": {**args.train, **train}})
                slug = _slug(name)
                if train.get("layer_decay", LLRD_XI) != LLRD_XI:
                    slug += f"-{train['layer_decay']:g}"  # its own cache: another xi is another run
                summary = compare(CompareConfig(run=run, methods=["finetune"], seeds=seeds,
                                                output=str(Path(args.work) / args.model / task / slug)))
                r = summary["rows"][0]
                new = {"task": task, "variant": name, "seeds": seeds, "mean": r["mean"], "std": r["std"],
                       "per_seed": r["per_seed"], "train_seconds_per_seed": r["train_seconds"], **wall_time(r)}
                # Written after every variant, so a stopped run still leaves what it finished.
                row = record_row(out, args.model, args.train, new, header={"shots": 16})
            print(f"{task:6s} {name:30s} {100 * row['mean']:.1f} ({100 * row['std']:.1f}) over seeds {row['seeds']}",
                  flush=True)
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
