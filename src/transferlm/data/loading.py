"""Find a task's files under a data directory and build its train/dev/test splits.

Layouts understood (``D`` is ``--data-dir`` or ``$TRANSFERLM_DATA``):

* LM-BFF: ``D/[lm-bff/]<task>/k-shot/<K>-<seed>/{train,dev,test}.{tsv,csv}`` with the
  full files in ``D/[lm-bff/]<task>/original/``;
* flat: ``D/[domain/]<task>/{train,dev,test}.{jsonl,tsv,csv}``;
* user files named directly (``train_file``/``dev_file``/``test_file``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .example import Example, TaskData
from .hub import is_hub_task, load_hub_task
from .readers import cell, iter_rows, read_examples
from .sampling import holdout, sample_kshot
from .tasks import TASKS, Column, TaskSpec

DATA_ENV = "TRANSFERLM_DATA"


@dataclass(frozen=True)
class DataOptions:
    """Everything beyond the task name that decides which examples are loaded."""

    shots: int | None = 16  # None = the whole training set
    seed: int = 13
    empty_text: str | None = None  # None: the task's own policy
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    max_test: int | None = None  # a fixed random subset of at most this many test examples (quick runs)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    raw = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not raw:
        raise DataError(f"no data directory: pass --data-dir or set {DATA_ENV} (e.g. ../shared/data)")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory not found: {path}; pass an existing folder with --data-dir")
    return path


def find_task_dir(name: str, root: Path) -> Path:
    for candidate in (root / "lm-bff" / name, root / "domain" / name, root / name):
        if candidate.is_dir():
            return candidate
    raise DataError(f"task folder '{name}' not found under {root} (looked in lm-bff/, domain/ and the root); "
                    "check --data-dir and the task name (see `transferlm tasks`)")


def infer_spec(name: str, task_dir: Path, overrides: dict[str, Any] | None = None) -> TaskSpec:
    """Describe a task folder the registry does not know, from its files; ``overrides`` (the user's
    columns, labels, ...) replace what is inferred."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    sample = _first_existing(task_dir, ["k-shot/*/train.*", "original/train.*", "train.*"])
    if sample is None:
        raise DataError(f"{task_dir}: no train file found (expected k-shot/<K>-<seed>/train.*, original/train.* "
                        "or train.*)")
    fmt = sample.suffix.lstrip(".")
    if fmt == "csv":
        header = _csv_header(sample)
        text = _text_columns(header)
        named = overrides.get("text_columns") or ()
        if text is None and named and all(isinstance(c, str) and c in header for c in named):
            text = tuple(named)  # --text-columns review: a header row with that name
        if text is None:
            # LM-BFF csv layout: label,text without a header.
            spec = TaskSpec(name=name, text_columns=(1,), label_column=0, format="csv", header=False, family="user")
        else:  # a header naming its columns, as a tsv's does
            spec = TaskSpec(name=name, text_columns=text, label_column="label" if "label" in header else header[-1],
                            format="csv", header=True, family="user")
    elif fmt == "tsv":
        lines = _first_lines(sample)
        if not lines:
            raise DataError(f"{sample} is empty; put a header line and data rows in it")
        header = lines[0].split("\t")
        text = _text_columns(header)
        if text is None and "text_columns" in overrides:
            text = tuple(overrides["text_columns"])
        if text is None:
            raise DataError(f"{sample}: cannot tell the text column from header {header}; "
                            "pass --text-columns (and --label-column)")
        spec = TaskSpec(name=name, text_columns=text, label_column="label" if "label" in header else header[-1],
                        format="tsv", header=True, family="user")
    elif fmt in ("jsonl", "json"):
        # The first record's fields name the columns (sentence1/sentence2, sentence or text); default text.
        rows = iter_rows(sample, fmt, header=True)
        first = next(rows, (0, {}))[1]
        rows.close()
        fields_ = list(first) if isinstance(first, dict) else []
        spec = TaskSpec(name=name, text_columns=_text_columns(fields_) or ("text",), label_column="label", format=fmt,
                        family="user")
    else:
        raise DataError(f"{sample}: unsupported file type; use tsv, csv, jsonl or json")
    ext = f".{fmt}"
    return spec.with_overrides(files={"train": f"train{ext}", "dev": f"dev{ext}", "test": f"test{ext}"},
                               original={"train": f"train{ext}", "test": f"test{ext}"}, **overrides)


def _first_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); convert the file to UTF-8") from None


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f), [])
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); convert the file to UTF-8") from None


def _text_columns(header: list[str]) -> tuple[Column, ...] | None:
    """The text columns a header names (``sentence1``/``sentence2``, ``sentence`` or ``text``), else None."""
    if "sentence1" in header and "sentence2" in header:
        return ("sentence1", "sentence2")
    for name in ("sentence", "text"):
        if name in header:
            return (name,)
    return None


def known_task(name: str) -> TaskSpec | None:
    """The registry's spec for ``name`` (case-insensitive, as ``--task sst-2`` finds SST-2), else None."""
    return TASKS.get(name) or next((t for t in TASKS.values() if t.name.lower() == name.lower()), None)


def spec_with_overrides(name: str, data_dir: str | os.PathLike[str] | None, options: DataOptions,
                        overrides: dict[str, Any]) -> TaskSpec:
    """The spec of task ``name`` with the user's column/label/format settings on top.

    A task folder the registry does not know is described from its files first (file names, format), so
    ``--labels`` or ``--text-columns`` on such a folder only change what they name.
    """
    known = known_task(name)
    if known is not None:
        return known.with_overrides(**overrides)
    if options.train_file or is_hub_task(name):
        return TaskSpec(name=name, family="user", format=overrides.get("format") or "").with_overrides(**overrides)
    return infer_spec(name, find_task_dir(name, resolve_data_dir(data_dir)), overrides)


def _first_existing(task_dir: Path, patterns: list[str]) -> Path | None:
    for pattern in patterns:
        hits = sorted(task_dir.glob(pattern))
        if hits:
            return hits[0]
    return None


def with_inferred_labels(spec: TaskSpec, files: list[Path]) -> TaskSpec:
    """Fill in the label set from the files when the user did not declare it."""
    if spec.labels or spec.regression:
        return spec
    # Read with a permissive spec: every raw label becomes its own class, in sorted order.
    seen: set[str] = set()
    present = [path for path in files if path.is_file()]
    for path in present:
        fmt = spec.format or path.suffix.lstrip(".")
        for i, row in iter_rows(path, fmt, spec.header):
            label = cell(row, spec.label_column, path, i).strip()
            if not label:  # would become a class "" of its own
                raise DataError(f"{path}:{i}: empty label in column {spec.label_column!r}; fill it in or remove the row")
            seen.add(label)
    if not seen:
        if present:
            raise DataError(f"{present[0]} has no data rows; put a row per example in it")
        raise DataError(f"task {spec.name}: could not find any labels; declare them with --labels")
    labels = tuple(sorted(seen, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s)))
    return spec.with_overrides(labels=labels, label_names=spec.label_names or labels)


def resolve_spec(task: str | TaskSpec, data_dir: str | os.PathLike[str] | None,
                 options: DataOptions) -> tuple[TaskSpec, Path | None]:
    """The task's spec and folder (None when the user named the files directly)."""
    if isinstance(task, TaskSpec):
        spec = task
    elif options.train_file:
        spec = TaskSpec(name=task, family="user", format="")
    else:
        spec = None
    if options.train_file:
        return spec, None
    root = resolve_data_dir(data_dir)
    name = spec.name if spec else task
    known = known_task(str(name))
    task_dir = find_task_dir(known.name if known else name, root)
    if spec is None:
        spec = known or infer_spec(name, task_dir)
    return spec, task_dir


def load_task(task: str | TaskSpec, data_dir: str | os.PathLike[str] | None = None,
              options: DataOptions | None = None) -> tuple[TaskSpec, TaskData]:
    """Load a task's splits for one (shots, seed) setting of the few-shot protocol."""
    options = options or DataOptions()
    spec, data = _load_task(task, data_dir, options)
    return spec, limit_test(data, options.max_test)


def limit_test(data: TaskData, max_test: int | None) -> TaskData:
    """Keep a random subset of at most ``max_test`` test examples, in file order.

    The subset depends only on the test split and ``max_test`` (not on the run's seed), so every method
    and seed is scored on the same examples.
    """
    if max_test is not None and max_test < 1:
        raise DataError(f"data.max_test must be >= 1, got {max_test}")
    if max_test is None or len(data.test) <= max_test:
        return data
    keep = sorted(np.random.RandomState(0).choice(len(data.test), size=max_test, replace=False).tolist())
    data.notes.append(f"test = fixed random {max_test} of {len(data.test)} examples (data.max_test)")
    data.test = [data.test[i] for i in keep]
    return data


def _load_task(task: str | TaskSpec, data_dir: str | os.PathLike[str] | None,
               options: DataOptions) -> tuple[TaskSpec, TaskData]:
    name = task.name if isinstance(task, TaskSpec) else task
    if (options.dev_file or options.test_file) and not options.train_file:
        # Without a train file the task's own splits are read: the named file would be silently unused.
        named = "data.dev_file (--dev-file)" if options.dev_file else "data.test_file (--test-file)"
        raise DataError(f"{named} is read only together with data.train_file: pass --train-file too, or drop it "
                        f"to use task {name}'s own splits")
    if is_hub_task(name) and not options.train_file:
        return load_hub_task(name, options.shots, options.seed, task if isinstance(task, TaskSpec) else None)
    spec, task_dir = resolve_spec(task, data_dir, options)
    if task_dir is None:
        return _load_user_files(spec, options)

    def read(path: Path) -> list[Example]:
        return read_examples(path, spec, empty_text=options.empty_text)

    original = task_dir / "original"
    kdir = task_dir / "k-shot" / f"{options.shots}-{options.seed}"
    notes: list[str] = []
    held_out = False
    if options.shots is not None and kdir.is_dir():
        spec = with_inferred_labels(spec, [kdir / spec.files.get("train", "")])
        train, dev = read(kdir / spec.files["train"]), read(kdir / spec.files["dev"])
        test_path = kdir / spec.files.get("test", "")
        test = read(test_path) if "test" in spec.files and test_path.is_file() else []
        notes.append(f"k-shot files {kdir}")
    else:
        pool_path = _pool_path(spec, task_dir, original)
        spec = with_inferred_labels(spec, [pool_path])
        pool = read(pool_path)
        test_path = _test_path(spec, task_dir, original)
        test = read(test_path) if test_path else []
        if options.shots is None:
            dev_path = task_dir / spec.files["dev"] if "dev" in spec.files else None
            if dev_path is not None and dev_path.is_file() and not original.is_dir():
                train, dev = pool, read(dev_path)
            else:
                train, dev = holdout(pool, options.seed)
                held_out = True
                notes.append(f"dev = seeded {len(dev)}-example hold-out of {pool_path.name}")
        else:
            train, dev = sample_kshot(pool, options.shots, options.seed, regression=spec.regression,
                                      source=str(pool_path), label_names=spec.label_names or spec.labels)
            notes.append(f"K={options.shots} sampled from {pool_path} with the LM-BFF procedure (seed {options.seed})")
    if not test:
        notes.append("no test split available: test metrics are not reported")
    return spec, TaskData(train=train, dev=dev, test=test, notes=notes, dev_held_out=held_out)


def _pool_path(spec: TaskSpec, task_dir: Path, original: Path) -> Path:
    if original.is_dir():
        name = spec.original.get("train") or spec.files.get("train", "train.tsv")
        path = original / name
    else:
        path = task_dir / spec.files.get("train", "train.tsv")
    if not path.is_file():
        raise DataError(f"task {spec.name}: the full training file {path} is absent, so only the provided "
                        "k-shot splits can be used; pass --shots 16 with a seed that has a k-shot folder")
    return path


def _test_path(spec: TaskSpec, task_dir: Path, original: Path) -> Path | None:
    candidates = []
    if original.is_dir() and spec.original.get("test"):
        candidates.append(original / spec.original["test"])
    if spec.files.get("test"):
        candidates.append(task_dir / spec.files["test"])
    return next((p for p in candidates if p.is_file()), None)


def _load_user_files(spec: TaskSpec, options: DataOptions) -> tuple[TaskSpec, TaskData]:
    train_path = Path(options.train_file)
    for flag, name in (("--train-file", options.train_file), ("--dev-file", options.dev_file),
                       ("--test-file", options.test_file)):
        if name and not Path(name).is_file():
            what = "is a folder, not a file" if Path(name).is_dir() else "not found"
            raise DataError(f"{flag} {name}: {what}; give a .csv, .tsv, .jsonl or .json file")
    if not spec.format:
        spec = spec.with_overrides(format=train_path.suffix.lstrip(".").lower())
    paths = [Path(p) for p in (options.train_file, options.dev_file, options.test_file) if p]
    spec = with_inferred_labels(spec, paths)

    def read(p: str | None) -> list[Example]:
        return read_examples(p, spec, empty_text=options.empty_text) if p else []

    pool, dev, test = read(options.train_file), read(options.dev_file), read(options.test_file)
    notes = [f"user files: train={options.train_file}"]
    held_out = False
    if options.shots is not None:
        train, sampled_dev = sample_kshot(pool, options.shots, options.seed, regression=spec.regression,
                                          source=str(train_path), label_names=spec.label_names or spec.labels)
        dev = dev or sampled_dev
    else:
        train = pool
        if not dev:
            train, dev = holdout(pool, options.seed)
            held_out = True
            notes.append(f"dev = seeded {len(dev)}-example hold-out of the train file")
    return spec, TaskData(train=train, dev=dev, test=test, notes=notes, dev_held_out=held_out)
