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
from ..evaluation.significance import vs_best
from ..io import check_output_dir, output_lock, write_json, write_text
from ..methods import get_method
from ..models.zoo import model_digest
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


def _dev_score(res: dict[str, Any]) -> float:
    """The candidate's dev score for selection; NaN (a diverged run) ranks last, as a missing score does."""
    score = res["dev_metrics"].get(res["primary_metric"], -np.inf)
    return -np.inf if score is None or np.isnan(score) else score


def compare(cfg: CompareConfig) -> dict[str, Any]:
    if not cfg.output:
        raise ConfigError("compare needs --output (a folder for the runs and summary.json)")
    check_output_dir(cfg.output)
    if not cfg.methods or not cfg.seeds:
        raise ConfigError("compare needs at least one method (--methods) and one seed (--seeds)")
    for name, values in (("seeds", cfg.seeds), ("methods", cfg.methods)):
        # A repeat would reuse one run dir and count that run twice in the mean (std).
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"compare: {name} {', '.join(repeated)} listed more than once; list each once")
    points = grid_points(cfg.grid)
    for m in cfg.methods:
        method = get_method(m)  # fail fast on a typo, before any training
        for point in points:  # and on a bad grid value: not after the candidates before it have trained
            candidate = _apply(cfg.run, point, method=m)
            candidate.train.validate()
            method.parse_config(candidate.method_args)
    out = Path(cfg.output)
    # Its own folder (summary.json, the eval memos); each run locks its sub-folder too (another lock file).
    with output_lock(out):
        return _compare(cfg, out, points)


def _compare(cfg: CompareConfig, out: Path, points: list[dict[str, Any]]) -> dict[str, Any]:
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg.methods}
    # Which runs came from the cache: wall time is only known for the ones computed now.
    reused = dict.fromkeys(cfg.methods, 0)
    computed_seconds = dict.fromkeys(cfg.methods, 0.0)
    jobs = [(m, s) for m in cfg.methods for s in cfg.seeds]
    bar = tqdm(jobs, desc="compare", unit="run", disable=cfg.run.quiet)
    for method, seed in bar:
        bar.set_postfix_str(f"{method} seed {seed}")
        memo = out / method / EVAL_MEMO
        # LM-BFF: choose the hyper-parameters on each seed's dev split, report that run's test score. With a
        # grid, candidates score dev only; the test split is evaluated once, for the one selected (its model
        # kept in memory until a better one comes).
        best: tuple[dict[str, Any], dict[str, Any], RunConfig, Any] | None = None
        for gi, point in enumerate(points):
            run_dir = out / method / f"seed-{seed}" / (f"grid-{gi}" if len(points) > 1 else "")
            rcfg = _apply(cfg.run, point, method=method, seed=seed, output=str(run_dir).rstrip("/"))
            res, finish = cached_result(run_dir, rcfg), None
            if res is None:
                t0 = time.perf_counter()
                result = run(rcfg, eval_memo=memo, defer_test=len(points) > 1)
                res, finish = result.results, result.finish_test
                computed_seconds[method] += time.perf_counter() - t0
            else:
                reused[method] += 1
            if best is None or _dev_score(res) > _dev_score(best[0]):  # ties: the first point
                best = (res, point, rcfg, finish)
            del finish
        assert best is not None
        res, point, rcfg, finish = best
        best = None
        if res.get("test_deferred"):
            t0 = time.perf_counter()
            # The model is in memory if it was trained now; a candidate recorded earlier trains again (same seed,
            # same numbers) to be evaluated.
            res = finish() if finish is not None else run(rcfg, eval_memo=memo).results
            computed_seconds[method] += time.perf_counter() - t0
        del finish
        per_method[method].append(dict(res, selected=point))
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
               # The files behind the model name: a report of a suite shows this summary only while they are.
               "model_digest": model_digest(cfg.run.model),
               "std": "population std (ddof=0) over seeds, as LM-BFF reports", "rows": rows,
               # Is the best mean's lead beyond seed noise? Each other method paired with it by seed.
               "vs_best": vs_best(rows, cfg.seeds),
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
