"""Fabricated compare folders (summary.json + per-seed results.json) for the report tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_compare(folder: Path, task: str, rows: dict[str, dict[str, Any]], *, metric: str = "accuracy",
                  seeds: tuple[int, ...] = (13, 21, 42), grid: dict[str, list[Any]] | None = None,
                  steps: int = 6, model: str = "tiny", method_args: dict[str, Any] | None = None) -> Path:
    """A compare output folder. ``rows``: method -> {"per_seed": [...], "params": n, "total": n, "trains": bool,
    "selected": [grid point per seed]}; mean and std are computed from per_seed as compare does.
    ``method_args``: the run's method options, recorded in the summary's config as compare does."""
    folder.mkdir(parents=True, exist_ok=True)
    out_rows = []
    for method, r in rows.items():
        per_seed = [float(x) for x in r["per_seed"]]
        mean = sum(per_seed) / len(per_seed)
        std = (sum((x - mean) ** 2 for x in per_seed) / len(per_seed)) ** 0.5
        selected = r.get("selected") or [{} for _ in seeds]
        total = r.get("total", 1000)
        params = r.get("params", total)
        out_rows.append({"method": method, "mean": mean, "std": std, "per_seed": per_seed, "seeds": list(seeds),
                         "selected": selected, "trainable_params": params, "total_params": total,
                         "trainable_percent": round(100 * params / total, 4), "train_seconds": r.get("train", 2.0),
                         "eval_seconds": r.get("eval", 1.0)})
        n_points = 1
        for values in (grid or {}).values():
            n_points *= len(values)
        for i, seed in enumerate(seeds):
            run_dir = folder / method / f"seed-{seed}"
            if n_points > 1:
                keys = list(grid or {})
                idx = 0  # index of the selected point in compare's itertools.product order
                for k in keys:
                    idx = idx * len(grid[k]) + grid[k].index(selected[i][k])
                run_dir = run_dir / f"grid-{idx}"
            run_dir.mkdir(parents=True, exist_ok=True)
            history = []
            if r.get("trains", True):
                for s in range(1, steps + 1):
                    h: dict[str, Any] = {"step": s, "loss": 1.0 / s + 0.01 * seed}
                    if s % 3 == 0:
                        h["dev"] = {metric: 0.5 + 0.01 * s}
                    history.append(h)
            (run_dir / "results.json").write_text(json.dumps({
                "task": task, "method": method, "seed": seed, "metrics": {metric: per_seed[i]},
                "dev_metrics": {metric: 0.5}, "primary_metric": metric, "history": history}), encoding="utf-8")
    summary = {"task": task, "model": model, "shots": 16, "split": "test", "primary_metric": metric,
               "seeds": list(seeds), "grid": grid or {}, "rows": out_rows,
               "config": {"run": {"task": task, "method_args": method_args or {}}, "seeds": list(seeds)}}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def two_task_dirs(root: Path) -> list[Path]:
    """SST-2 and cr, four methods (one that trains nothing), designed ties and a missing cell."""
    a = write_compare(root / "sst2", "SST-2", {
        "finetune": {"per_seed": [0.80, 0.82, 0.84], "params": 22_000_000, "total": 22_700_000},
        "lora": {"per_seed": [0.83, 0.81, 0.85], "params": 150_000, "total": 22_700_000},  # best: 83.0
        "bitfit": {"per_seed": [0.70, 0.75, 0.72], "params": 30_000, "total": 22_700_000},
        "prompt-zero-shot": {"per_seed": [0.61, 0.61, 0.61], "params": 0, "total": 22_700_000, "trains": False},
    })
    b = write_compare(root / "cr", "cr", {
        "finetune": {"per_seed": [0.75, 0.77, 0.76], "params": 22_000_000, "total": 22_700_000},  # 76.0
        "lora": {"per_seed": [0.7604, 0.7598, 0.7597], "params": 150_000, "total": 22_700_000},  # 76.0 too: tie
        "prompt-zero-shot": {"per_seed": [0.5, 0.5, 0.5], "params": 0, "total": 22_700_000, "trains": False},
    })
    return [a, b]
