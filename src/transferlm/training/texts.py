"""Unlabelled text for continued pretraining: files, folders, or a task's own training text."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config import DEFAULT_SEEDS, DEFAULT_SHOTS
from ..data.readers import read_texts
from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".tsv", ".csv")


def _check_text_file(path: Path) -> None:
    head = path.read_bytes()[:4096]
    if not head.strip():
        raise DataError(f"{path} is empty; give a file with one text per line (or a text field)")
    if b"\x00" in head:
        raise DataError(f"{path} looks binary (NUL bytes); give UTF-8 text (.txt, .jsonl, .json, .tsv, .csv)")


def _joined(ex) -> str:
    """An example's text as TAPT reads it (text_a and text_b, when there is one)."""
    return " ".join(t for t in (ex.text_a, ex.text_b) if t)


def task_texts(name: str, data_dir: str | None, dev_shots: int | None,
               dev_seeds: Sequence[int]) -> tuple[list[str], int]:
    """A task's training text for TAPT, without any text of the dev splits its downstream runs select on.

    The downstream runs are the protocol's (``dev_shots`` per class, or None for the full training set,
    over ``dev_seeds``). Their dev sets come from the same training text (a K-shot dev set is K per class
    of the training pool, drawn with the run's seed; a full-data run without a dev file holds out a seeded
    slice), so each is computed exactly as the run computes it (:func:`load_task`) and left out, compared
    by text. Returns (texts, how many training texts were left out for being dev text).
    """
    from ..data.loading import DataOptions, load_task

    _, data = load_task(name, data_dir, DataOptions(shots=None, seed=0))
    # The whole training pool: where the full-data split holds out a dev slice, that slice is training text too.
    pool = data.train + data.dev if data.dev_held_out else data.train
    texts = [t for t in map(_joined, pool) if t.strip()]
    dev: set[str] = set()
    for seed in dev_seeds:
        try:
            _, run_data = load_task(name, data_dir, DataOptions(shots=dev_shots, seed=seed))
        except DataError as e:
            k = "full" if dev_shots is None else dev_shots
            raise DataError(f"TAPT on task {name}: cannot compute the dev split of its downstream run (shots {k}, "
                            f"seed {seed}) to leave it out of the pretraining text: {e}. Set tapt_shots/tapt_seeds "
                            "(--tapt-shots, --tapt-seeds) to the runs' --shots and --seeds") from None
        dev.update(map(_joined, run_data.dev))
    kept = [t for t in texts if t not in dev]
    if not kept:
        raise DataError(f"TAPT on task {name}: every training text is in a dev split of the downstream runs "
                        f"(shots {dev_shots}, seeds {list(dev_seeds)}); nothing is left to pretrain on")
    return kept, len(texts) - len(kept)


def source_name(source: str) -> str:
    """A text source's own name: ``tapt-<task>``, or its file's stem or folder's name (``dev`` for
    ``.../amazon_review/dev.json``). Unique only among sources of unlike names: see :func:`phase_names`."""
    if source.startswith("task:"):
        return f"tapt-{source[5:]}"
    path = Path(source)
    return path.stem or path.name


def _qualified(source: str, depth: int, suffix: bool) -> str:
    """The last ``depth`` parts of a file or folder source's path (``amazon_review/dev``), its file suffix kept or
    not; a task source keeps its own name (its name is its task's, unique unless the task comes twice)."""
    if source.startswith("task:"):
        return source_name(source)
    parts = Path(os.path.abspath(source)).parts[1:]
    last = parts[-1] if suffix else source_name(parts[-1])
    return "/".join([*parts[-depth:-1], last])


def phase_names(sources: Sequence[str]) -> list[str]:
    """One distinct name per source, for pretrain's report and logs: its own name (:func:`source_name`) where
    no other source has it; else as many of its parent folders as tell the sources that share it apart
    (``amazon_review/dev`` and ``yelp_review/dev``, not ``dev`` twice), then the file suffix, and for one source
    given twice its phase number (``text (phase 2)``)."""
    names = [source_name(s) for s in sources]
    for own in dict.fromkeys(names):
        group = [i for i, n in enumerate(names) if n == own]
        if len(group) == 1:
            continue
        deepest = max(len(Path(os.path.abspath(sources[i])).parts) - 1 for i in group)
        tries = [(depth, suffix) for suffix in (False, True) for depth in range(2, deepest + 1)]
        for depth, suffix in tries:
            qualified = [_qualified(sources[i], depth, suffix) for i in group]
            if len(set(qualified)) == len(group):
                break
        else:  # the same source more than once: only its position tells the phases apart
            qualified = [f"{own} (phase {i + 1})" for i in group]
        for i, name in zip(group, qualified, strict=True):
            names[i] = name
    return names


def load_phase_texts(source: str, field: str, data_dir: str | None, *, dev_shots: int | None = DEFAULT_SHOTS,
                     dev_seeds: Sequence[int] = DEFAULT_SEEDS) -> tuple[str, list[str], int | None]:
    """(the source's own name, texts, dev texts left out) for one source: a file, a folder of files, or
    ``task:<name>``. The name is :func:`source_name`'s; pretrain names the phase with :func:`phase_names`.

    ``task:<name>`` reads the task's training text only (Gururangan et al.), less every text of the dev
    splits of the downstream runs (``dev_shots``, ``dev_seeds``: see :func:`task_texts`): dev text in the
    pretraining text would leak into the model selected on it. The count is None for other sources.
    """
    if source.startswith("task:"):
        name = source[5:]
        texts, excluded = task_texts(name, data_dir, dev_shots, dev_seeds)
        return source_name(source), texts, excluded
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"text source not found: {source}; give a file, a folder, or task:<name>")
    texts: list[str] = []
    for f in files:
        _check_text_file(f)
        texts.extend(read_texts(f, field))
    if not texts:
        raise DataError(f"{source}: no non-empty text found (text field '{field}'); check --text-field")
    return source_name(source), texts, None
