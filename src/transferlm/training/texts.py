"""Unlabelled text for continued pretraining: files, folders, or a task's own training text."""

from __future__ import annotations

from pathlib import Path

from ..data.readers import read_texts
from ..errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".tsv", ".csv")


def _check_text_file(path: Path) -> None:
    head = path.read_bytes()[:4096]
    if not head.strip():
        raise DataError(f"{path} is empty; give a file with one text per line (or a text field)")
    if b"\x00" in head:
        raise DataError(f"{path} looks binary (NUL bytes); give UTF-8 text (.txt, .jsonl, .json, .tsv, .csv)")


def load_phase_texts(source: str, field: str, data_dir: str | None) -> tuple[str, list[str]]:
    """(phase name, texts) for one source: a file, a folder of files, or ``task:<name>``."""
    if source.startswith("task:"):
        from ..data.loading import DataOptions, load_task

        name = source[5:]
        _, data = load_task(name, data_dir, DataOptions(shots=None, seed=0))
        # The training split only (Gururangan et al.): dev text would leak into the model selected on it.
        texts = [" ".join(t for t in (e.text_a, e.text_b) if t) for e in data.train]
        return f"tapt-{name}", [t for t in texts if t.strip()]
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
    return path.stem or path.name, texts
