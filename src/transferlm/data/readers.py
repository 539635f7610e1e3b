"""Read one data file (tsv, csv, jsonl, json) into :class:`Example` objects.

The task spec says which columns hold the text(s) and the label; every problem is a
one-line :class:`DataError` naming the file, the row and the fix.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from .example import Example
from .tasks import Column, TaskSpec

EMPTY_POLICIES = ("error", "drop", "keep")


def read_examples(path: str | Path, spec: TaskSpec, *, empty_text: str | None = None) -> list[Example]:
    """Read ``path`` as described by ``spec``.

    ``empty_text`` says what to do with rows whose text is empty: ``"error"`` (the error names
    the row and suggests ``--empty-text drop``), ``"drop"`` (skip the row) or ``"keep"`` (keep
    it as an empty string). ``None`` uses the task's own policy: ``keep`` for the registry's
    LM-BFF tasks, whose published splits contain a few blank rows (cr), ``error`` otherwise.
    """
    empty_text = empty_text or spec.empty_text
    path = Path(path)
    if empty_text not in EMPTY_POLICIES:
        raise DataError(f"empty_text must be one of {EMPTY_POLICIES}, got '{empty_text}'")
    if not path.is_file():
        raise DataError(f"data file not found: {path}; check --data-dir and the task name")
    fmt = spec.format or _format_from_suffix(path)
    rows = list(iter_rows(path, fmt, spec.header))
    if not rows:
        raise DataError(f"{path} has no data rows")
    examples = []
    for lineno, row in rows:
        texts = [cell(row, col, path, lineno) for col in spec.text_columns]
        if empty_text != "keep" and any(not t.strip() for t in texts):
            if empty_text == "drop":
                continue
            raise DataError(f"{path}:{lineno}: empty text in column {spec.text_columns}; "
                            "fix the row or set empty_text: drop (--empty-text drop) to skip such rows")
        raw = cell(row, spec.label_column, path, lineno)
        examples.append(Example(text_a=texts[0], text_b=texts[1] if len(texts) > 1 else None,
                                label=_label(raw, spec, path, lineno), guid=f"{path.name}:{lineno}"))
    if not examples:
        raise DataError(f"{path}: every row has empty text; nothing to load")
    return examples


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Unlabelled text: .txt (one document per line), .jsonl/.json (``field``), .tsv/.csv (column ``field``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}")
    if path.suffix == ".txt":
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason}); convert the file to UTF-8") from None
        if not _is_json_lines(lines):
            return lines
        fmt = "jsonl"  # JSON lines saved as .txt (as the SciBERT corpora are)
    else:
        fmt = _format_from_suffix(path)
    texts = []
    for lineno, row in iter_rows(path, fmt, header=True):
        texts.append(cell(row, field, path, lineno))
    return [t for t in texts if t.strip()]


def _is_json_lines(lines: list[str]) -> bool:
    if not lines or not lines[0].startswith("{"):
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def _format_from_suffix(path: Path) -> str:
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("tsv", "csv", "jsonl", "json"):
        raise DataError(f"{path}: unsupported file type '{path.suffix}'; use .tsv, .csv, .jsonl or .json")
    return fmt


def iter_rows(path: Path, fmt: str, header: bool) -> Iterator[tuple[int, Any]]:
    try:
        if fmt == "jsonl":
            with path.open(encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        yield i, _json_obj(line, path, i)
        elif fmt == "json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict | list):
                raise DataError(f"{path}: the top level is {type(data).__name__} {data!r:.40}, not a list of records "
                                "(or an object of them); write [{\"text\": ..., \"label\": ...}, ...]")
            records = data.values() if isinstance(data, dict) else data
            for i, rec in enumerate(records, 1):
                yield i, _json_record(rec, path, i)
        elif fmt == "tsv":
            # GLUE files are not quoted: split on tabs like the LM-BFF reader does. Unlike csv rows (checked
            # below), a row may have more fields than the header: GLUE's SNLI rows carry one to five annotator
            # labels before gold_label (11 or 15 fields under an 11-name header), so the field count is not
            # checked here; a row too short for a column the task reads fails in ``cell`` (file, line, counts).
            with path.open(encoding="utf-8-sig") as f:
                lines = f.read().splitlines()
            names = lines[0].split("\t") if header and lines else None
            for i, line in enumerate(lines[1:] if header else lines, 2 if header else 1):
                if line.strip():
                    cells = line.split("\t")
                    yield i, _split_row(names, cells)
        elif fmt == "csv":
            with path.open(encoding="utf-8-sig", newline="") as f:
                reader = csv.reader(f)
                names = next(reader, None) if header else None
                # Every row must have as many fields as the header (or, headerless, the first row): an unquoted
                # comma in the text otherwise adds a field, and the text column would silently get only its
                # first part. LM-BFF reads these files with pandas.read_csv(header=None), which refuses an extra
                # field too ("Expected 2 fields in line N, saw 3"); a short row it pads with NaN, here an error.
                width, first = (len(names), None) if names else (None, 0)
                for i, cells in enumerate(reader, 2 if header else 1):
                    if not cells:
                        continue
                    if width is None:
                        width, first = len(cells), i
                    elif len(cells) != width:
                        raise DataError(_csv_width_message(path, i, len(cells), width, first))
                    yield i, _split_row(names, cells)
        else:
            raise DataError(f"{path}: unknown format '{fmt}'; use tsv, csv, jsonl or json")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); convert the file to UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def _csv_width_message(path: Path, lineno: int, found: int, width: int, first: int | None) -> str:
    # first: the line that set the width (None: the header did).
    where = "in the header" if first is None else f"on line {first}"
    if found > width:
        fix = 'a field holds an unquoted comma: put that text in double quotes ("like, this")'
    else:
        fix = (f"give every row {width} fields"
               + ("" if first is None else f" (if line {first}'s text holds an unquoted comma, quote that one)")
               + ', and put text with commas in double quotes ("like, this")')
    return f"{path}:{lineno}: {found} fields, expected {width} as {where}; {fix}"


# The keys a split (tsv/csv) row with a header carries beside its named fields.
_SPLIT_KEYS = ("__cells__", "__header__")


def _split_row(names: list[str] | None, cells: list[str]) -> dict[str, Any] | list[str]:
    if not names:
        return cells
    return dict(zip(names, cells, strict=False)) | {"__cells__": cells, "__header__": names}


def _short_row(row: Any, col: Column) -> tuple[int, int] | None:
    """(fields, fields needed) when ``row`` is a split tsv/csv row too short for ``col``, else None."""
    if isinstance(row, dict) and "__cells__" in row:
        cells, names = row["__cells__"], row["__header__"]
    elif isinstance(row, list) and all(isinstance(c, str) for c in row):
        cells, names = row, []
    else:
        return None
    if isinstance(col, int):
        need = col + 1 if col >= 0 else -col
    elif col in names:
        need = names.index(col) + 1
    else:
        return None  # a name not in the header: the "missing column" message lists the header's names
    return (len(cells), need) if len(cells) < need else None


def _json_obj(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: each JSON line must be an object with named fields")
    return obj


def _json_record(rec: Any, path: Path, number: int) -> dict[str, Any] | list[Any]:
    # Columns are looked up by name (an object) or index (a list); a bare number or string has neither.
    if not isinstance(rec, dict | list):
        raise DataError(f"{path}: record {number} is {type(rec).__name__} {rec!r:.40}, not an object with named "
                        "fields; make each record an object like {\"text\": ..., \"label\": ...}")
    return rec


def cell(row: Any, col: Column, path: Path, lineno: int) -> str:
    try:
        if isinstance(col, int):
            cells = row["__cells__"] if isinstance(row, dict) and "__cells__" in row else row
            value = cells[col]
        else:
            value = row[col]
    except (KeyError, IndexError, TypeError):
        short = _short_row(row, col)
        if short is not None:
            found, need = short
            raise DataError(f"{path}:{lineno}: the row has {found} fields, too few for column {col!r} (needs {need} fields); "
                            "a text with a tab in it must not be split: remove the tab or use CSV/JSONL, or fix the "
                            "row's missing fields") from None
        have = [k for k in row if k not in _SPLIT_KEYS] if isinstance(row, dict) else f"{len(row)} columns"
        raise DataError(f"{path}:{lineno}: missing column {col!r} (found {have}); "
                        "set text/label columns with --text-columns/--label-column") from None
    if isinstance(value, dict | list):
        # str() would make "['pos']" a label (or text) of its own.
        raise DataError(f"{path}:{lineno}: column {col!r} holds a {'list' if isinstance(value, list) else 'JSON object'} "
                        f"{value!r:.40}, not a text or label value; fix the row or point --text-columns/--label-column "
                        "at another column")
    return "" if value is None else str(value)


def _label(raw: str, spec: TaskSpec, path: Path, lineno: int) -> int | float:
    raw = raw.strip()
    if spec.regression:
        return _regression_label(raw, spec, path, lineno)
    try:
        return spec.labels.index(raw)
    except ValueError:
        raise DataError(f"{path}:{lineno}: label {raw!r} is not in the declared label set {list(spec.labels)}; "
                        "fix the file or declare the labels with --labels") from None


def _regression_label(raw: str, spec: TaskSpec, path: Path, lineno: int) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{path}:{lineno}: label {raw!r} is not a number (task {spec.name} is regression)") from None
    # float() accepts nan and inf, which would poison the loss and the correlation metrics.
    if not math.isfinite(value):
        raise DataError(f"{path}:{lineno}: label {raw!r} is not a finite number (task {spec.name} is regression); "
                        "fix or drop the row")
    return value
