"""Task registry: what each benchmark's files look like and how it is scored.

Knowledge about tasks is kept as data (one :class:`TaskSpec` per task). Columns are
names where the files have a header, and 0-based indices where they do not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import DataError

Column = str | int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # Raw label values as they appear in the files, in class-index order.
    labels: tuple[str, ...] = ()
    # Human-readable names (used by reports and, later, verbalizers).
    label_names: tuple[str, ...] = ()
    text_columns: tuple[Column, ...] = ("sentence",)
    label_column: Column = "label"
    # "tsv" | "csv" | "jsonl" | "json" (json: a dict of records, as in the USB subsets)
    format: str = "tsv"
    header: bool = True
    metric: str = "accuracy"
    regression: bool = False
    family: str = "lm-bff"
    # Split name -> file name inside the task folder (k-shot folders or the task root).
    files: dict[str, str] = field(default_factory=dict)
    # Where the full training pool lives, relative to the task folder (for --shots full and resampling).
    original: dict[str, str] = field(default_factory=dict)
    description: str = ""
    # What to do with blank text rows: error | drop | keep (see readers.read_examples).
    empty_text: str = "error"

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.labels)

    def with_overrides(self, **kwargs: Any) -> TaskSpec:
        clean = {k: v for k, v in kwargs.items() if v is not None}
        for key in ("labels", "label_names", "text_columns"):
            if key in clean:
                clean[key] = tuple(clean[key])
        return replace(self, **clean)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["is_pair"] = self.is_pair
        return d


def _glue(name: str, text: tuple[Column, ...], label: Column, labels: tuple[str, ...], names: tuple[str, ...],
          metric: str = "accuracy", dev: str = "dev.tsv", test: str | None = "test.tsv",
          original: dict[str, str] | None = None, header: bool = True, regression: bool = False,
          description: str = "") -> TaskSpec:
    files = {"train": "train.tsv", "dev": dev}
    if test:
        files["test"] = test
    return TaskSpec(name=name, labels=labels, label_names=names, text_columns=text, label_column=label,
                    format="tsv", header=header, metric=metric, regression=regression, family="lm-bff",
                    files=files, original=original or {}, description=description, empty_text="keep")


def _sent(name: str, labels: tuple[str, ...], names: tuple[str, ...], description: str) -> TaskSpec:
    # LM-BFF's single-sentence csv tasks: no header, columns (label, text).
    return TaskSpec(name=name, labels=labels, label_names=names, text_columns=(1,), label_column=0,
                    format="csv", header=False, family="lm-bff",
                    files={"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                    original={"train": "train.csv", "test": "test.csv"}, description=description,
                    empty_text="keep")


def _domain(name: str, labels: tuple[str, ...], metric: str, description: str) -> TaskSpec:
    return TaskSpec(name=name, labels=labels, label_names=labels, text_columns=("text",), label_column="label",
                    format="jsonl", header=True, metric=metric, family="domain",
                    files={"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"},
                    description=description)


_NLI = ("contradiction", "entailment", "neutral")

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _glue("SST-2", ("sentence",), "label", ("0", "1"), ("negative", "positive"),
          original={"train": "train.tsv", "test": "dev.tsv"}, description="binary movie-review sentiment"),
    _sent("sst-5", ("0", "1", "2", "3", "4"),
          ("very negative", "negative", "neutral", "positive", "very positive"), "5-way movie-review sentiment"),
    _sent("mr", ("0", "1"), ("negative", "positive"), "movie-review polarity"),
    _sent("cr", ("0", "1"), ("negative", "positive"), "customer-review polarity"),
    _sent("trec", ("0", "1", "2", "3", "4", "5"),
          ("Description", "Entity", "Expression", "Human", "Location", "Number"), "question type"),
    _glue("CoLA", (3,), 1, ("0", "1"), ("unacceptable", "acceptable"), metric="mcc", header=False,
          original={"train": "train.tsv", "test": "dev.tsv"}, description="grammatical acceptability"),
    _glue("RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
          ("entailment", "not entailment"), original={"train": "train.tsv", "test": "dev.tsv"},
          description="textual entailment"),
    # MRPC's header starts with a byte-order mark, so columns go by position.
    _glue("MRPC", (3, 4), 0, ("0", "1"), ("not equivalent", "equivalent"), metric="f1",
          original={"train": "train.tsv", "test": "dev.tsv"}, description="paraphrase"),
    _glue("QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
          ("entailment", "not entailment"), original={"test": "dev.tsv"}, description="question entailment"),
    _glue("MNLI", ("sentence1", "sentence2"), "gold_label", _NLI, _NLI, dev="dev_matched.tsv",
          test="test_matched.tsv", description="multi-genre NLI (no test file here)"),
    # SNLI rows hold one to five annotator labels before gold_label (11 or 15 fields under an 11-name header):
    # the gold label is the last field, as LM-BFF's SnliProcessor (line[-1]) and kshot.py read it; by header
    # name a 15-field row would give its second annotator's label.
    _glue("SNLI", ("sentence1", "sentence2"), -1, _NLI, _NLI, description="NLI (no test file here)"),
    _glue("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("not duplicate", "duplicate"),
          metric="f1", description="question paraphrase (no test file here)"),
    _glue("STS-B", ("sentence1", "sentence2"), "score", (), (), metric="pearson", regression=True,
          original={"train": "train.tsv", "test": "dev.tsv"}, description="semantic similarity 0..5"),
    # Gururangan et al. 2020 report micro-F1 (= accuracy) for ChemProt and macro-F1 for the others.
    _domain("chemprot", ("ACTIVATOR", "AGONIST", "AGONIST-ACTIVATOR", "AGONIST-INHIBITOR", "ANTAGONIST",
                         "DOWNREGULATOR", "INDIRECT-DOWNREGULATOR", "INDIRECT-UPREGULATOR", "INHIBITOR",
                         "PRODUCT-OF", "SUBSTRATE", "SUBSTRATE_PRODUCT-OF", "UPREGULATOR"),
            "accuracy", "biomedical chemical-protein relations"),
    _domain("acl-arc", ("Background", "CompareOrContrast", "Extends", "Future", "Motivation", "Uses"),
            "macro_f1", "citation intent (computer science)"),
    _domain("sciie", ("COMPARE", "CONJUNCTION", "EVALUATE-FOR", "FEATURE-OF", "HYPONYM-OF", "PART-OF",
                      "USED-FOR"), "macro_f1", "scientific relation types (SciERC)"),
    # The USB subset has no train split: its dev file is the training pool and dev is held out of it.
    TaskSpec(name="imdb", labels=("0", "1"), label_names=("negative", "positive"), text_columns=("ori",),
             label_column="label", format="json", family="domain", metric="macro_f1",
             files={"train": "usb_subset/dev.json", "test": "usb_subset/test.json"},
             description="movie-review sentiment (USB subset)"),
]}


def get_task(name: str) -> TaskSpec:
    if name in TASKS:
        return TASKS[name]
    lowered = {k.lower(): k for k in TASKS}
    if name.lower() in lowered:
        return TASKS[lowered[name.lower()]]
    raise DataError(f"unknown task '{name}': known tasks are {', '.join(TASKS)}; "
                    "for your own data pass --train-file/--test-file or a task folder with --data-dir")


def list_tasks() -> list[TaskSpec]:
    return list(TASKS.values())
