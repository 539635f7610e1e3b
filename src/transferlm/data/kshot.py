"""The LM-BFF K-shot sampler, byte-identical to the paper's.

Reimplements ``tools/generate_k_shot_data.py`` of princeton-nlp/LM-BFF (Gao et al., 2021)
so that ``generate_kshot`` reproduces the paper's published k-shot files (their md5 list)
from the original full files. The quirks that the md5s depend on are kept on purpose and
marked "paper:" below.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from transferlm.errors import DataError
from transferlm.io import atomic_dir, output_lock

log = logging.getLogger(__name__)

GLUE_TASKS = ("MNLI", "MRPC", "QNLI", "QQP", "RTE", "SNLI", "SST-2", "STS-B", "WNLI", "CoLA")
DEFAULT_SEEDS = (13, 21, 42, 87, 100)
# paper: the script's default seed order. It matters for CoLA (see _shuffled_glue_train).
PAPER_SEED_ORDER = (100, 13, 21, 42, 87)


def generate_kshot(
    task: str,
    original_dir: str | Path,
    output_dir: str | Path,
    k: int = 16,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> list[Path]:
    """Sample the LM-BFF k-shot splits of one task; return the files written.

    Writes ``output_dir/{k}-{seed}/{train,dev,test}.{tsv|csv}`` for each seed, each
    folder atomically. As in the paper, ``k`` examples per class go to train and the
    next ``k`` per class to dev (fewer if the class runs out), and the original
    dev/test file becomes ``test``.

    ``task`` is matched case-sensitively against the paper's names:

    * GLUE style (tsv, read line by line): MNLI MRPC QNLI QQP RTE SNLI SST-2 STS-B WNLI
      CoLA. ``original_dir`` holds ``train.tsv`` and ``dev.tsv`` (MNLI:
      ``dev_matched.tsv``, ``dev_mismatched.tsv``). The first line is a header except for
      CoLA; the label is column 0 for MRPC, column 1 for CoLA, ``score >= 2.5`` for STS-B
      and the last column otherwise. MNLI writes ``dev_matched.tsv``, ``test_matched.tsv``
      and ``test_mismatched.tsv``.
    * Any other name (sst-5 mr cr trec mpqa subj ..., or your own task) is treated by
      file format: ``train.tsv``/``dev.tsv`` are GLUE style with a header line and the
      label in the last column; otherwise ``train.csv``/``test.csv`` without header,
      label in the first column, read and written with pandas.

    If only the evaluation file exists (e.g. LM-BFF's QNLI ships ``dev.tsv`` only),
    only ``test`` is written and a warning is logged; if neither a training nor an
    evaluation file exists, :class:`DataError` is raised, as it is for ``k <= 0`` or a
    class with fewer than ``k`` training examples.

    CoLA follows the paper's in-place reshuffle across its default seed order
    100, 13, 21, 42, 87; a seed outside that list is shuffled as if run alone.
    """
    original_dir = Path(original_dir)
    output_dir = Path(output_dir)
    if k <= 0:
        raise DataError(
            f"k={k} is not a positive number of examples per class; pass k >= 1 (the paper uses 16)"
        )
    if any(not 0 <= s < 2**32 for s in seeds):
        raise DataError(f"seeds {list(seeds)} must be integers in [0, 2**32); pass e.g. 13 21 42 87 100")
    if not original_dir.is_dir():
        raise DataError(
            f"original data folder {original_dir} not found; pass the folder that holds {task}'s full train/dev files"
        )

    if _is_tsv(task, original_dir):
        writer = _GlueTask(task, original_dir, k)
    else:
        writer = _CsvTask(task, original_dir, k)
    if writer.train_missing:
        log.warning("%s: no training file in %s; writing the test split only", task, original_dir)

    written: list[Path] = []
    # After the checks (the writer has read the original files): one generator per output folder at a time.
    with output_lock(output_dir):
        for seed in seeds:
            setting = output_dir / f"{k}-{seed}"
            with atomic_dir(setting) as tmp:
                names = writer.write(seed, tmp)
            written.extend(setting / name for name in names)
    return written


def read_checksums(path: str | Path) -> dict[str, str]:
    """Read an ``md5sum``-style list (``<md5>  <relative path>``) into {path: md5}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checksum file {path} not found; pass the path to CHECKSUMS-lm-bff-k-shot.txt")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise DataError(f"{path}:{number} is not '<md5>  <path>'; fix or remove that line")
        sums[parts[1].strip().lstrip("*")] = parts[0].lower()  # '*' = md5sum's binary mode marker
    return sums


def verify_kshot(task_output_dir: str | Path, checksums: dict[str, str], task: str) -> tuple[int, list[str]]:
    """Compare generated files with ``checksums`` (keys like ``SST-2/16-13/train.tsv``).

    Only files that exist under ``task_output_dir`` are checked, so a task whose
    originals are partial (QNLI) checks just what was made. Returns
    ``(number checked, keys whose md5 differs)``.
    """
    task_output_dir = Path(task_output_dir)
    checked, mismatches = 0, []
    for key, expected in sorted(checksums.items()):
        name, _, rest = key.partition("/")
        target = task_output_dir / rest
        if name != task or not target.is_file():
            continue
        checked += 1
        if _md5(target) != expected:
            mismatches.append(key)
    return checked, mismatches


# --- internals --------------------------------------------------------------------


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _is_tsv(task: str, original_dir: Path) -> bool:
    if task in GLUE_TASKS:
        return True
    return any((original_dir / f"{split}.tsv").is_file() for split in ("train", "dev"))


def _require_some(task: str, original_dir: Path, train: Path, evals: list[Path]) -> None:
    if not train.is_file() and not any(p.is_file() for p in evals):
        names = ", ".join(p.name for p in [train, *evals])
        raise DataError(f"{original_dir} has none of {names} for task {task}; put the original files there")


def _check_counts(task: str, train_file: Path, groups: dict[object, list], k: int) -> None:
    if not groups:
        raise DataError(f"{train_file} has no examples for task {task}; pass a non-empty training file")
    for label, rows in groups.items():
        if len(rows) < k:
            raise DataError(
                f"{train_file}: class {label!r} of {task} has only {len(rows)} examples, fewer than "
                f"k={k}; pass k <= {min(len(r) for r in groups.values())}"
            )
        if len(rows) < 2 * k:
            log.warning(
                "%s: class %r has %d examples, dev gets only %d", task, label, len(rows), len(rows) - k
            )


def _group(rows: list, label_of: Callable[[Any], object], source: Path) -> dict[object, list]:
    # paper: classes in first-seen order of the shuffled rows; dict keeps insertion order.
    groups: dict[object, list] = {}
    for row in rows:
        try:
            label = label_of(row)
        except (IndexError, ValueError):
            raise DataError(
                f"{source}: no readable label in row {str(row)[:60]!r}; fix that row's columns"
            ) from None
        groups.setdefault(label, []).append(row)
    return groups


class _GlueTask:
    """tsv files handled as raw lines, so unchanged lines are written byte for byte."""

    def __init__(self, task: str, original_dir: Path, k: int) -> None:
        self.task, self.k = task, k
        eval_splits = ["dev_matched", "dev_mismatched"] if task == "MNLI" else ["dev"]
        train_file = original_dir / "train.tsv"
        evals = [original_dir / f"{s}.tsv" for s in eval_splits]
        _require_some(task, original_dir, train_file, evals)
        self.evals = {p.stem.replace("dev", "test"): _read_lines(p) for p in evals if p.is_file()}
        for p in evals:
            if not p.is_file():
                log.warning("%s: %s not found; no %s written", task, p, p.stem.replace("dev", "test"))
        self.train_missing = not train_file.is_file()
        self.header: list[str] = []
        self.lines: list[str] = []
        if not self.train_missing:
            lines = _read_lines(train_file)
            # paper: CoLA's file has no header; every other GLUE-style file has one.
            self.header, self.lines = ([], lines) if task == "CoLA" else (lines[:1], lines[1:])
            _check_counts(task, train_file, _group(self.lines, self._label, train_file), k)

    def _label(self, line: str) -> object:
        cols = line.strip().split("\t")
        if self.task == "CoLA":
            return cols[1]
        if self.task == "MRPC":
            return cols[0]
        if self.task == "STS-B":
            return 0 if float(cols[-1]) < 2.5 else 1
        return cols[-1]

    def _shuffled(self, seed: int) -> list[str]:
        lines = list(self.lines)
        if self.task != "CoLA":
            np.random.RandomState(seed).shuffle(lines)
            return lines
        # paper: for CoLA the header split returns the loaded list itself, so each seed
        # shuffles the previous seed's result in place, in the order 100, 13, 21, 42, 87.
        # Replay that chain so any seed gives the paper's file.
        chain = PAPER_SEED_ORDER[: PAPER_SEED_ORDER.index(seed)] if seed in PAPER_SEED_ORDER else ()
        for s in (*chain, seed):
            np.random.RandomState(s).shuffle(lines)
        return lines

    def write(self, seed: int, folder: Path) -> list[str]:
        names = []
        for split, lines in self.evals.items():
            _write_lines(folder / f"{split}.tsv", lines)
            names.append(f"{split}.tsv")
        if self.train_missing:
            return names
        groups = _group(self._shuffled(seed), self._label, folder)
        dev_name = "dev_matched.tsv" if self.task == "MNLI" else "dev.tsv"
        _write_lines(folder / "train.tsv", self.header + [ln for g in groups.values() for ln in g[: self.k]])
        _write_lines(
            folder / dev_name, self.header + [ln for g in groups.values() for ln in g[self.k : 2 * self.k]]
        )
        return [*names, "train.tsv", dev_name]


class _CsvTask:
    """csv files go through pandas both ways: the md5s depend on its exact round trip."""

    def __init__(self, task: str, original_dir: Path, k: int) -> None:
        self.task, self.k = task, k
        train_file, test_file = original_dir / "train.csv", original_dir / "test.csv"
        _require_some(task, original_dir, train_file, [test_file])
        self.test = _read_csv(test_file) if test_file.is_file() else None
        if self.test is None:
            log.warning("%s: %s not found; no test.csv written", task, test_file)
        self.train_missing = not train_file.is_file()
        if not self.train_missing:
            self.rows = _read_csv(train_file).values.tolist()
            _check_counts(task, train_file, _group(self.rows, _first, train_file), k)

    def write(self, seed: int, folder: Path) -> list[str]:
        names = []
        if self.test is not None:
            self.test.to_csv(folder / "test.csv", header=False, index=False, lineterminator="\n")
            names.append("test.csv")
        if self.train_missing:
            return names
        rows = list(self.rows)
        np.random.RandomState(seed).shuffle(rows)  # same stream as the paper's np.random.seed + shuffle
        groups = _group(rows, _first, folder)
        for name, part in (("train.csv", slice(0, self.k)), ("dev.csv", slice(self.k, 2 * self.k))):
            chosen = [row for g in groups.values() for row in g[part]]
            pd.DataFrame(chosen).to_csv(folder / name, header=False, index=False, lineterminator="\n")
            names.append(name)
        return names


def _first(row: list) -> object:
    return row[0]


def _read_lines(path: Path) -> list[str]:
    # paper: text mode with universal newlines, as its f.readlines() did on Linux.
    try:
        with open(path, encoding="utf-8") as f:
            return f.readlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, header=None)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"{path} is not a readable label,text csv ({reason}); fix or re-save the file"
        ) from None


def _write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:  # newline="": '\n' on every OS
        f.writelines(lines)
