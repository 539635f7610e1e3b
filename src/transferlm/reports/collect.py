"""Load the output of ``compare`` (summary.json and each run's results.json) into one tidy structure.

A folder given to the report is one of:

* a ``compare`` output folder (it has ``summary.json``);
* a ``reproduce`` output folder (it has ``suite.json``, naming its compare folders and their labels);
* a folder holding either kind further down (found by walking it).

One :class:`Cell` per (task, method): the summary's mean (std) and per-seed scores, the parameter counts
and timings, and the learning curves of the runs that were reported (the grid point chosen on dev).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TransferLMError

SUMMARY = "summary.json"
SUITE = "suite.json"
RESULTS = "results.json"
_ROW_KEYS = ("method", "mean", "std", "per_seed")


class ReportError(TransferLMError):
    """A folder that cannot be reported on: missing or malformed compare output."""


@dataclass
class Curve:
    """One run's learning curve: training loss per step and the dev metric at each evaluation."""

    seed: int
    steps: list[int]
    loss: list[float]
    dev_steps: list[int]
    dev: list[float]


@dataclass
class Cell:
    """One method on one task: the protocol's numbers over seeds."""

    task: str
    method: str  # the label shown in the report
    raw_method: str  # the registered method that produced it
    metric: str
    split: str
    model: str
    shots: Any
    mean: float
    std: float
    per_seed: list[float]
    seeds: list[int]
    trainable_params: int
    total_params: int
    trainable_percent: float
    train_seconds: float
    eval_seconds: float
    source: str
    curves: list[Curve] = field(default_factory=list)
    # The method's options as the compare run them (JSON): one label with two of these is two rows.
    options: str = ""


@dataclass
class Reference:
    """Published numbers to show beside ours (e.g. the lecture's table); values in percent."""

    source: str
    rows: list[dict[str, Any]]  # {"method", "task", "value", "std" (optional), "params" (optional)}
    note: str = ""


@dataclass
class Collection:
    cells: list[Cell]
    title: str = "transferlm report"
    notes: list[str] = field(default_factory=list)
    reference: Reference | None = None
    method_order: list[str] = field(default_factory=list)
    # One row per finished pretraining phase of a dapt suite: its cost and perplexity change.
    pretraining: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(c.task for c in self.cells))

    @property
    def methods(self) -> list[str]:
        seen = list(dict.fromkeys(c.method for c in self.cells))
        ordered = [m for m in self.method_order if m in seen]
        return ordered + [m for m in seen if m not in ordered]

    def get(self, task: str, method: str) -> Cell | None:
        return next((c for c in self.cells if c.task == task and c.method == method), None)

    def metric(self, task: str) -> str:
        return next(c.metric for c in self.cells if c.task == task)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON (line {e.lineno}); rerun the command that wrote it") from None
    except UnicodeDecodeError as e:
        raise ReportError(f"{path} is not UTF-8 text ({e.reason}), so not a file transferlm wrote; rerun the command "
                          "that wrote it") from None
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object at the top level")
    return data


_DAMAGED = ("the file is damaged or not a compare summary: rerun `transferlm compare` into that folder, or leave "
            "the folder out of the report")


def _read_summary(path: Path) -> dict[str, Any]:
    """A compare summary.json, checked for every key and type the report reads: a damaged one (a value of the
    wrong type as much as truncated JSON) is a one-line error naming the file, never a traceback."""
    summary = _read_json(path)
    for key in ("task", "rows", "primary_metric"):
        if key not in summary:
            raise ReportError(f"{path}: missing key '{key}'; is it a compare summary?")
    if summary["rows"] == []:
        raise ReportError(f"{path}: no rows (no method finished); rerun compare")

    def check(where: str, value: Any, ok: bool, expected: str) -> None:
        if not ok:
            kind = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
                    float: "a number"}.get(type(value))
            shown = f"{kind} {json.dumps(value)[:40]}" if kind else "null"
            raise ReportError(f"{path}: {where} is {shown}, expected {expected}; {_DAMAGED}")

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    def ints(x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)

    for key in ("task", "primary_metric", "split"):
        if key in summary:
            check(key, summary[key], isinstance(summary[key], str), "a string")
    check("seeds", summary.get("seeds"), summary.get("seeds") is None or ints(summary["seeds"]), "a list of integers")
    grid = summary.get("grid")
    check("grid", grid, grid is None or (isinstance(grid, dict) and all(isinstance(v, list) for v in grid.values())),
          "an object of lists")
    config = summary.get("config")
    check("config", config, config is None or isinstance(config, dict), "an object")
    run = (config or {}).get("run")
    check("config.run", run, run is None or isinstance(run, dict), "an object")
    args = (run or {}).get("method_args")
    check("config.run.method_args", args, args is None or isinstance(args, dict), "an object")
    check("rows", summary["rows"], isinstance(summary["rows"], list), "a list of method rows")
    for i, row in enumerate(summary["rows"]):
        check(f"rows[{i}]", row, isinstance(row, dict), "an object")
        missing = [k for k in _ROW_KEYS if k not in row]
        if missing:
            raise ReportError(f"{path}: a row lacks {', '.join(missing)}; is it a compare summary?")
        check(f"rows[{i}].method", row["method"], isinstance(row["method"], str), "a string")
        for key in ("mean", "std"):
            check(f"rows[{i}].{key}", row[key], number(row[key]), "a number")
        for key in ("trainable_params", "total_params", "trainable_percent", "train_seconds", "eval_seconds"):
            if key in row and not (row[key] is None and key.endswith("_params")):  # params: None reads as 0
                check(f"rows[{i}].{key}", row[key], number(row[key]), "a number")
        check(f"rows[{i}].per_seed", row["per_seed"],
              isinstance(row["per_seed"], list) and all(number(x) for x in row["per_seed"]), "a list of numbers")
        check(f"rows[{i}].seeds", row.get("seeds"), row.get("seeds") is None or ints(row["seeds"]),
              "a list of integers")
        selected = row.get("selected")
        check(f"rows[{i}].selected", selected, selected is None or (
            isinstance(selected, list) and all(p is None or isinstance(p, dict) for p in selected)),
              "a list of grid points (objects)")
    return summary


def _grid_index(grid: dict[str, list[Any]], selected: dict[str, Any]) -> int:
    """Which grid point (compare's grid-<i> folder) a seed's selected settings were."""
    from ..protocol.compare import grid_points

    points = grid_points(grid) if grid else [{}]
    for i, point in enumerate(points):
        if point == selected:
            return i
    return 0


def _curve(results: dict[str, Any], seed: int, metric: str) -> Curve | None:
    history = results.get("history") or []
    if not history:
        return None
    steps, loss, dev_steps, dev = [], [], [], []
    for h in history:
        if "loss" in h:
            steps.append(int(h["step"]))
            loss.append(float(h["loss"]))
        if isinstance(h.get("dev"), dict) and metric in h["dev"]:
            dev_steps.append(int(h["step"]))
            dev.append(float(h["dev"][metric]))
    return Curve(seed=seed, steps=steps, loss=loss, dev_steps=dev_steps, dev=dev)


def run_dir(folder: Path, method: str, seed: int, grid: dict[str, list[Any]], selected: dict[str, Any]) -> Path:
    """Where compare put one seed's run: ``<folder>/<method>/seed-<s>[/grid-<i>]``."""
    base = folder / method / f"seed-{seed}"
    n_points = 1
    for values in (grid or {}).values():
        n_points *= len(values) if isinstance(values, list) else 1
    return base / f"grid-{_grid_index(grid, selected)}" if n_points > 1 else base


def load_compare_dir(folder: str | Path, labels: dict[str, str] | None = None) -> list[Cell]:
    """The cells of one compare output folder; ``labels`` renames methods (registered name -> label)."""
    folder = Path(folder)
    path = folder / SUMMARY
    if not path.is_file():
        raise ReportError(f"{folder} has no {SUMMARY}: pass a folder written by `transferlm compare` "
                          "or `transferlm reproduce`")
    summary = _read_summary(path)
    metric = summary["primary_metric"]
    run_cfg = (summary.get("config") or {}).get("run") or {}
    cells = []
    for row in summary["rows"]:
        seeds = [int(s) for s in row.get("seeds") or summary.get("seeds") or []]
        selected = row.get("selected") or [{} for _ in seeds]
        curves = []
        for seed, point, score in zip(seeds, selected, row["per_seed"], strict=False):
            res_path = run_dir(folder, row["method"], seed, summary.get("grid") or {}, point or {}) / RESULTS
            res = _read_json(res_path) if res_path.is_file() else {}
            try:
                curve = _curve(res, seed, metric) if _is_reported_run(res, summary, row["method"], seed, point or {},
                                                                      score) else None
            except (TypeError, ValueError, AttributeError, KeyError) as e:  # a value of the wrong type
                raise ReportError(f"{res_path}: unreadable run record ({type(e).__name__}: {e}); the file is "
                                  "damaged: rerun `transferlm compare` into that folder") from None
            if curve is not None:
                curves.append(curve)
        total = int(row.get("total_params") or 0)
        trainable = int(row.get("trainable_params") or 0)
        cells.append(Cell(
            task=str(summary["task"]), method=(labels or {}).get(row["method"], row["method"]),
            raw_method=row["method"], metric=metric, split=str(summary.get("split", "test")),
            model=str(summary.get("model", "")), shots=summary.get("shots"),
            mean=float(row["mean"]), std=float(row["std"]), per_seed=[float(x) for x in row["per_seed"]],
            seeds=seeds, trainable_params=trainable, total_params=total,
            trainable_percent=float(row.get("trainable_percent", 100.0 * trainable / max(total, 1))),
            train_seconds=float(row.get("train_seconds", 0.0)), eval_seconds=float(row.get("eval_seconds", 0.0)),
            source=str(folder), curves=curves, options=_options(row["method"], run_cfg.get("method_args") or {})))
    return cells


def _is_reported_run(res: dict[str, Any], summary: dict[str, Any], method: str, seed: int, point: dict[str, Any],
                     score: float) -> bool:
    """Whether a run's results.json is the run the summary reports: a compare rerun into the folder with
    other settings, stopped before its summary, rewrites results.json under the old summary. Its score must
    be the summary's, and its config (where both record one) the summary's run with the seed's grid point."""
    from ..config import set_dotted

    split = "metrics" if summary.get("split", "test") == "test" else "dev_metrics"
    if (res.get(split) or {}).get(summary["primary_metric"]) != score:
        return False
    run = (summary.get("config") or {}).get("run")
    if "config" not in res or not run:
        return True  # records from before the config: the score decides
    expected = json.loads(json.dumps(run))
    for key, value in {**point, "method": method, "seed": seed}.items():
        set_dotted(expected, key, value)
    try:
        return _run_settings(res["config"]) == _run_settings(expected)
    except TransferLMError:
        return False


def _options(method: str, args: dict[str, Any]) -> str:
    """``method``'s options as settings with defaults filled in (so {} and {"r": 8} agree), as JSON."""
    from ..methods import get_method

    try:
        settings = get_method(method).parse_config(dict(args)).settings()
    except (TransferLMError, TypeError, ValueError):
        settings = args  # a method or option this version lacks: compare as written
    return json.dumps(settings, sort_keys=True, default=str)


def _find(folder: Path) -> list[Path]:
    """Compare or suite folders under ``folder`` (the folder itself if it is one), sorted."""
    if (folder / SUITE).is_file() or (folder / SUMMARY).is_file():
        return [folder]
    found = set()
    for hit in sorted(folder.rglob(SUITE)) + sorted(folder.rglob(SUMMARY)):
        if not any(p in found for p in hit.parent.parents):
            found.add(hit.parent)
    # A suite folder's own compare folders are reported through the suite.
    suites = {p for p in found if (p / SUITE).is_file()}
    return sorted(p for p in found if not any(s in p.parents for s in suites))


def load_suite(folder: Path, suite: dict[str, Any] | None = None) -> tuple[list[Cell], dict[str, Any]]:
    """The cells of a reproduce output folder, labelled as its suite.json (or the manifest ``suite``) says."""
    suite = _read_json(folder / SUITE) if suite is None else suite
    cells: list[Cell] = []
    stale = []
    for entry in suite.get("entries", []):
        sub = folder / entry["dir"]
        if not (sub / SUMMARY).is_file():
            continue  # not run yet (an interrupted reproduce); the report shows what finished
        if not _of_entry(_read_summary(sub / SUMMARY), entry):
            stale.append(entry["dir"])  # a rerun with other settings stopped before it reached this entry
            continue
        cells.extend(load_compare_dir(sub, {entry["method"]: entry["label"]}))
    if stale:
        suite = {**suite, "notes": [*suite.get("notes", []), (
            f"Not shown: {', '.join(stale)} (results of earlier settings than this suite's; run "
            "`transferlm reproduce` again to compute them).")]}
    if not cells:
        raise ReportError(f"{folder}: none of the suite's runs has finished yet; run `transferlm reproduce` "
                          "again to continue")
    return cells, suite


def _of_entry(summary: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether a compare summary ran the suite entry's settings (seeds, and its run config as compare records
    it, less the keys that do not change results) on the model folder's current files (a dapt suite's models
    are folders its pretraining rewrites). Entries of a suite.json from before "run" are trusted."""
    from ..models.zoo import model_digest

    if "run" not in entry:
        return True
    if "seeds" in entry and list(summary.get("seeds") or []) != list(entry["seeds"]):
        return False
    recorded, model = summary.get("model_digest"), entry["run"].get("model")  # digest: None for a hub model
    if recorded is not None and model and model_digest(model) not in (recorded, None):
        return False  # None: the model is not on this machine (a report made elsewhere): the settings decide
    try:
        return _run_settings((summary.get("config") or {}).get("run") or {}) == _run_settings(entry["run"])
    except TransferLMError:  # a config this version cannot read is not this suite's
        return False


def _run_settings(run: dict[str, Any]) -> dict[str, Any]:
    from ..config import RunConfig
    from ..io import as_json
    from ..protocol.run import IGNORED, IGNORED_TRAIN

    d = as_json(RunConfig.from_dict(run, source="compare summary").to_dict())
    for key in IGNORED:
        d.pop(key, None)
    for key in IGNORED_TRAIN:
        d["train"].pop(key, None)
    return d


def load_pretraining(folder: Path, suite: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished pretraining phases of a suite folder (DAPT/TAPT), for the report's cost table."""
    rows = []
    for step in suite.get("pretrains", []):
        done = folder / step["dir"] / "pretrain.json"
        if not done.is_file():
            continue
        report = _read_json(done)
        sources = step.get("config", {}).get("texts", [])
        for i, phase in enumerate(report.get("phases", [])):
            # The phase's text source (two files named dev.json stay apart); else the name pretrain gave it.
            src = sources[i] if i < len(sources) else None
            label = src if not src or src.startswith("task:") else f"{Path(src).parent.name}/{Path(src).name}"
            rows.append({"step": step["name"], "phase": label or phase.get("phase"),
                         "steps": report.get("config", {}).get("steps"), "train_texts": phase.get("train_texts"),
                         "perplexity_before": phase.get("perplexity_before"),
                         "perplexity_after": phase.get("perplexity_after"), "seconds": phase.get("seconds"),
                         "tokens_per_second": phase.get("tokens_per_second"),
                         "resumed_from_step": phase.get("resumed_from_step")})
    return rows


def _disambiguate(cells: list[Cell]) -> None:
    """Give every table row one configuration, the same in every column.

    A label that stands for different method options in different folders (prompt-finetune with and
    without demonstrations) gets the folder name added in every cell, on every task, so that no row mixes
    the two. So does a label that two folders give on one task. Where folder names clash too, the path.
    """
    options: dict[str, set[str]] = {}
    sources: dict[tuple[str, str], set[str]] = {}
    for c in cells:
        options.setdefault(c.method, set()).add(c.options)
        sources.setdefault((c.task, c.method), set()).add(c.source)
    renamed = [len(options[c.method]) > 1 or len(sources[(c.task, c.method)]) > 1 for c in cells]
    for c, rename in zip(cells, renamed, strict=True):
        if rename:
            c.method = f"{c.method} ({Path(c.source).name})"
    keys = [(c.task, c.method) for c in cells]
    for c, rename in zip(cells, renamed, strict=True):
        if rename and keys.count((c.task, c.method)) > 1:
            c.method = f"{c.method.rsplit(' (', 1)[0]} ({c.source})"


def collect(folders: list[str | Path], *, title: str | None = None,
            suites: dict[Path, dict[str, Any]] | None = None) -> Collection:
    """Everything the report needs from the given folders, in the order given.

    ``suites``: manifests (``Plan.manifest``) by reproduce folder, read instead of the folder's suite.json: the
    report at the end of a reproduce is of its own plan, though another invocation on the folder (other tasks)
    may have written its suite.json since."""
    given = {Path(f).resolve(): m for f, m in (suites or {}).items()}

    def manifest(folder: Path) -> dict[str, Any]:
        return given.get(folder.resolve()) or _read_json(folder / SUITE)

    if not folders:
        raise ReportError("report needs at least one compare or reproduce output folder")
    cells: list[Cell] = []
    notes: list[str] = []
    reference = None
    order: list[str] = []
    suite_title = None
    pretraining: list[dict[str, Any]] = []
    seen: set[Path] = set()  # `report runs runs/sst2` names runs/sst2 twice: read it once (no duplicate rows)
    per_arg = []
    for raw in folders:
        folder = Path(raw)
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; pass the --output folder of `transferlm compare`")
        found = _find(folder)
        if not found:
            raise ReportError(f"{folder} has no {SUMMARY} (nor any below it): pass a folder written by "
                              "`transferlm compare` or `transferlm reproduce`")
        per_arg.append(found)
    # A suite's own compare folders, named beside it, are reported through the suite (its label, its checks).
    entries = {(f / e["dir"]).resolve() for found in per_arg for f in found if (f / SUITE).is_file()
               for e in manifest(f).get("entries", [])}
    for found in per_arg:
        for f in found:
            if f.resolve() in seen or (f.resolve() in entries and not (f / SUITE).is_file()):
                continue
            seen.add(f.resolve())
            if (f / SUITE).is_file():
                more, suite = load_suite(f, manifest(f))
                cells.extend(more)
                order.extend(e["label"] for e in suite.get("entries", []) if e["label"] not in order)
                notes.extend(suite.get("notes", []))
                pretraining.extend(load_pretraining(f, suite))
                suite_title = suite_title or suite.get("title")
                if suite.get("reference") and reference is None:
                    ref = suite["reference"]
                    reference = Reference(source=ref.get("source", ""), rows=list(ref.get("rows", [])),
                                          note=ref.get("note", ""))
            else:
                cells.extend(load_compare_dir(f))
    _disambiguate(cells)
    return Collection(cells=cells, title=title or suite_title or "transferlm report", notes=notes,
                      reference=reference, method_order=order, pretraining=pretraining)
