"""Benchmark rows that grow by seeds: a later call with more seeds extends the row a results file holds."""

from __future__ import annotations

from typing import Any

import numpy as np


def row_seeds(row: dict[str, Any], file_seeds: str = "") -> list[int]:
    # Rows written before per-row seeds share the file's seed list.
    return [int(s) for s in row.get("seeds") or file_seeds.split(",") if str(s).strip()]


def merge_seeds(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` plus the seeds of ``old`` (the same variant under the same settings) it did not run.

    Mean and std are recomputed over the union (population std, as compare reports); timings and
    parameter counts stay those of ``new``; ``seeds_from_previous_runs`` lists the seeds taken from ``old``.
    """
    if old is None:
        return new
    scores = dict(zip(old["seeds"], old["per_seed"], strict=True))
    scores.update(zip(new["seeds"], new["per_seed"], strict=True))
    seeds = sorted(scores)
    values = [scores[s] for s in seeds]
    kept = sorted(set(seeds) - set(new["seeds"]))
    merged = {**new, "seeds": seeds, "per_seed": values, "mean": float(np.mean(values)), "std": float(np.std(values))}
    if kept:
        merged["seeds_from_previous_runs"] = kept
    return merged
