"""Benchmark rows that grow by seeds: a later call with more seeds extends the row a results file holds."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from transferlm.io import write_json

try:
    import fcntl
except ImportError:  # not POSIX: parallel calls into one file are not serialised there
    fcntl = None  # type: ignore[assignment]


def row_seeds(row: dict[str, Any], file_seeds: str = "") -> list[int]:
    # Rows written before per-row seeds share the file's seed list.
    return [int(s) for s in row.get("seeds") or file_seeds.split(",") if str(s).strip()]


def load_rows(out: Path, model: str, train: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, str], dict]]:
    """The results file at ``out`` and its rows by (task, variant), checked to be runs of ``model`` and ``train``.

    Rows of another model or budget must not be extended (their seeds are other runs) nor relabelled as this
    call's, so such a file is an error that names the fix rather than something to overwrite or mix.
    """
    if not out.is_file():
        return {}, {}
    previous = json.loads(out.read_text())
    theirs = (previous.get("model"), previous.get("train") or {})
    if theirs != (model, train):
        raise SystemExit(f"{out}: holds rows of model {theirs[0]!r} with train settings {json.dumps(theirs[1])}, "
                         f"but this call runs {model!r} with {json.dumps(train)}; pass another --out")
    rows = {(r["task"], r["variant"]): {**r, "seeds": row_seeds(r, previous.get("seeds", ""))}
            for r in previous.get("rows", [])}
    return previous, rows


SECONDS_PER_SEED = ("train_seconds_per_seed", "eval_seconds_per_seed")


def merge_seeds(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` plus the seeds of ``old`` (the same variant under the same settings) it did not run.

    Mean and std are recomputed over the union (population std, as compare reports). Per-seed train and eval
    seconds become the mean over the union's seeds (each call's mean weighted by the seeds it contributes), so
    a row's time is not just its last call's; wall times and parameter counts stay those of ``new``;
    ``seeds_from_previous_runs`` lists the seeds taken from ``old``.
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
        if old.get("timing_note") and not new.get("timing_note"):
            merged["timing_note"] = old["timing_note"]  # it explains the kept seeds' share of the seconds
        n_new = len(set(new["seeds"]))
        for key in SECONDS_PER_SEED:
            if isinstance(old.get(key), int | float) and isinstance(new.get(key), int | float):
                merged[key] = (new[key] * n_new + old[key] * len(kept)) / (n_new + len(kept))
    return merged


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (through ``out``.lock) while reading and rewriting it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def record_row(out: Path, model: str, train: dict[str, Any], row: dict[str, Any], *, whole: bool = False,
               header: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``row`` into the results file ``out`` and return the row as recorded.

    The file is read again under a lock right before it is rewritten, so calls running in parallel (one
    per seed, say) each add their seeds and none drops a row or seed another wrote meanwhile. ``row``
    extends the recorded row of its (task, variant) by seeds (``merge_seeds``), or replaces it if ``whole``.
    ``header``: other top-level keys of the file.
    """
    with locked(out):
        previous, rows = load_rows(out, model, train)
        key = (row["task"], row["variant"])
        old = rows.get(key)
        if not whole and old is not None and old.get("method_args", row.get("method_args")) != row.get("method_args"):
            # Seeds run with other method options are other runs: their mean would describe no configuration.
            raise SystemExit(f"{out}: row {key[0]} {key[1]} holds seeds run with method_args "
                             f"{json.dumps(old['method_args'], sort_keys=True)}, this call ran "
                             f"{json.dumps(row.get('method_args'), sort_keys=True)}; pass another --out")
        recorded = rows[key] = row if whole else merge_seeds(old, row)
        write_json(out, {**{k: v for k, v in previous.items() if k not in ("rows", "seeds")}, **(header or {}),
                         "model": model, "train": train, "rows": list(rows.values())})
    return recorded
