"""Tasks from the Hugging Face hub (``--task hf:<dataset>[:<config>]``, e.g. ``hf:glue:sst2`` or
``hf:stanfordnlp/imdb``), for machines that are online.

Uses the ``datasets`` library (optional: ``pip install datasets``). Splits are train /
validation / test; a test split whose labels are hidden (-1, as in GLUE) is dropped. Columns
default to the first of ``sentence``/``text``/``sentence1``(+``sentence2``) and ``label``.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from .example import Example, TaskData
from .sampling import holdout, sample_kshot
from .tasks import TASKS, TaskSpec

PREFIX = "hf:"
# GLUE configs on the hub -> the registry's task: scored by its metric (LM-BFF: MRPC/QQP F1, CoLA MCC), as the
# local copy is, not by accuracy.
GLUE_TASKS = {"cola": "CoLA", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B"}


def is_hub_task(name: str) -> bool:
    return name.startswith(PREFIX)


def _load_dataset(name: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"task '{name}' comes from the Hugging Face hub and needs the datasets package: "
                        "pip install datasets") from None
    path, _, config = name[len(PREFIX):].partition(":")
    try:
        return datasets.load_dataset(path, config or None)
    except Exception as e:  # network, unknown name, ...: one line for the user
        raise DataError(f"cannot load hub dataset '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                        "check the name and that this machine is online") from None


def _columns(features: dict[str, Any], spec: TaskSpec | None) -> tuple[tuple[str, ...], str]:
    if spec is not None and spec.text_columns and spec.text_columns != ("sentence",):
        return tuple(str(c) for c in spec.text_columns), str(spec.label_column)
    names = list(features)
    for cand in (("sentence",), ("text",), ("sentence1", "sentence2"), ("question", "sentence"),
                 ("question1", "question2"), ("premise", "hypothesis")):
        if all(c in names for c in cand):
            return cand, (spec.label_column if spec and spec.label_column != "label" else "label")
    raise DataError(f"hub dataset columns {names}: cannot tell the text column; pass --text-columns")


def load_hub_task(name: str, shots: int | None, seed: int, spec: TaskSpec | None = None) -> tuple[TaskSpec, TaskData]:
    ds = _load_dataset(name)
    if "train" not in ds:
        raise DataError(f"hub dataset '{name}' has no train split (has {list(ds)})")
    features = ds["train"].features
    text_cols, label_col = _columns(dict(features), spec)
    if label_col not in features:
        raise DataError(f"hub dataset '{name}' has no column '{label_col}'; pass --label-column")
    feat = features[label_col]
    names = tuple(getattr(feat, "names", None) or ())
    regression = not names and "float" in str(getattr(feat, "dtype", ""))
    labels = tuple(str(i) for i in range(len(names)))
    path, _, config = name[len(PREFIX):].partition(":")
    known = TASKS[GLUE_TASKS[config]] if path.split("/")[-1] == "glue" and config in GLUE_TASKS else None
    metric = known.metric if known is not None and known.regression == regression else (
        "pearson" if regression else "accuracy")
    out = TaskSpec(name=name, labels=labels, label_names=names, text_columns=text_cols, label_column=label_col,
                   format="hub", family="hub", regression=regression, metric=metric)

    def convert(split: str) -> list[Example]:
        if split not in ds:
            return []
        rows = []
        for i, r in enumerate(ds[split]):
            y = r[label_col]
            if not regression and (y is None or int(y) < 0):
                continue  # hidden test labels
            texts = [str(r[c]) for c in text_cols]
            rows.append(Example(texts[0], texts[1] if len(texts) > 1 else None,
                                float(y) if regression else int(y), f"{split}:{i}"))
        return rows

    pool, dev, test = convert("train"), convert("validation"), convert("test")
    notes = [f"hub dataset {name}"]
    held_out = False
    if shots is not None:
        train, sampled_dev = sample_kshot(pool, shots, seed, regression=regression, source=f"{name} train",
                                          label_names=names)
        if not test:  # as LM-BFF does for GLUE: the official dev set becomes the test set
            test, notes = dev, notes + ["test = the hub's validation split"]
        dev = sampled_dev
    else:
        train = pool
        if not test:
            test, notes = dev, notes + ["test = the hub's validation split"]
            train, dev = holdout(pool, seed)
            held_out = True
    return out, TaskData(train=train, dev=dev, test=test, notes=notes, dev_held_out=held_out)
