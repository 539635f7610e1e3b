"""The few-shot protocol over methods and seeds, with per-seed dev-set selection from a grid."""

from __future__ import annotations

import copy
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..config import CompareConfig, RunConfig, from_dict, set_dotted
from ..errors import ConfigError
from ..io import write_json, write_text
from ..methods import get_method
from .run import run
from .run_cache import cached_result
from .table import format_table

log = logging.getLogger(__name__)
EVAL_MEMO = "eval-memo"  # per method: test metrics of seed-free methods, shared by the seeds


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], list) or not grid[k]:
            raise ConfigError(f"grid.{k} must be a non-empty list of values")
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def _apply(base: RunConfig, point: dict[str, Any], **fixed: Any) -> RunConfig:
    d = base.to_dict()
    for k, v in {**point, **fixed}.items():
        set_dotted(d, k, v)
    return from_dict(RunConfig, d, source="grid")


def compare(cfg: CompareConfig) -> dict[str, Any]:
    if not cfg.output:
        raise ConfigError("compare needs --output (a folder for the runs and summary.json)")
    if not cfg.methods or not cfg.seeds:
        raise ConfigError("compare needs at least one method (--methods) and one seed (--seeds)")
    for m in cfg.methods:
        get_method(m)  # fail fast on a typo, before any training
    points = grid_points(cfg.grid)
    out = Path(cfg.output)
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.methods}
    # Which runs came from the cache: wall time is only known for the ones computed now.
    reused = dict.fromkeys(cfg.methods, 0)
    computed_seconds = dict.fromkeys(cfg.methods, 0.0)
    jobs = [(m, s) for m in cfg.methods for s in cfg.seeds]
    bar = tqdm(jobs, desc="compare", unit="run", disable=cfg.run.quiet)
    for method, seed in bar:
        bar.set_postfix_str(f"{method} seed {seed}")
        candidates = []
        for gi, point in enumerate(points):
            run_dir = out / method / f"seed-{seed}" / (f"grid-{gi}" if len(points) > 1 else "")
            rcfg = _apply(cfg.run, point, method=method, seed=seed, output=str(run_dir).rstrip("/"))
            res = cached_result(run_dir, rcfg)
            if res is None:
                t0 = time.perf_counter()
                res = run(rcfg, eval_memo=out / method / EVAL_MEMO).results
                computed_seconds[method] += time.perf_counter() - t0
            else:
                reused[method] += 1
            candidates.append((res, point))
        # LM-BFF: choose the hyper-parameters on each seed's dev split, report that run's test score.
        metric = candidates[0][0]["primary_metric"]
        best, point = max(candidates, key=lambda c: c[0]["dev_metrics"].get(metric, -np.inf))
        per_method[method].append(dict(best, selected=point))
    first = next(iter(per_method.values()))[0]
    split = first["split"]
    rows = []
    for method, results in per_method.items():
        scores = [r["metrics" if split == "test" else "dev_metrics"][r["primary_metric"]] for r in results]
        rows.append({"method": method, "mean": float(np.mean(scores)), "std": float(np.std(scores)),
                     "per_seed": [float(s) for s in scores], "seeds": list(cfg.seeds),
                     "selected": [r["selected"] for r in results],
                     "trainable_params": results[0]["trainable_params"], "total_params": results[0]["total_params"],
                     "trainable_percent": results[0]["trainable_percent"],
                     "train_seconds": float(np.mean([r["train_seconds"] for r in results])),
                     "eval_seconds": float(np.mean([r["eval_seconds"] for r in results])),
                     "runs": len(results) * len(points), "reused_runs": reused[method],
                     "computed_wall_seconds": round(computed_seconds[method], 1)})
    summary = {"task": first["task"], "model": cfg.run.model, "shots": first["shots"], "split": split,
               "primary_metric": first["primary_metric"], "seeds": list(cfg.seeds), "grid": cfg.grid,
               "std": "population std (ddof=0) over seeds, as LM-BFF reports", "rows": rows,
               "config": {"run": cfg.run.to_dict(), "methods": cfg.methods, "seeds": cfg.seeds}}
    table = format_table(summary)
    write_json(out / "summary.json", summary)
    write_text(out / "table.txt", table + "\n")
    summary["table"] = table
    return summary


def compare_config_from_run(run_cfg: RunConfig, methods: list[str], seeds: list[int],
                            grid: dict[str, list[Any]] | None, output: str) -> CompareConfig:
    return CompareConfig(run=copy.deepcopy(run_cfg), methods=methods, seeds=seeds, grid=grid or {}, output=output)


def wall_time(row: dict[str, Any]) -> dict[str, Any]:
    """A compare row's wall time, honest about the cache: a row with reused runs has no whole wall time."""
    reused = row.get("reused_runs", 0)
    return {"wall_seconds": row.get("computed_wall_seconds") if not reused else None,
            "reused_runs": reused, "computed_wall_seconds": row.get("computed_wall_seconds")}
