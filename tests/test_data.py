"""Task registry, file readers, the LM-BFF sampler and every data error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transferlm.data.loading import DataOptions, load_task
from transferlm.data.readers import read_examples
from transferlm.data.sampling import sample_kshot
from transferlm.data.tasks import TASKS, TaskSpec, get_task
from transferlm.errors import DataError

LM_BFF = ["SST-2", "sst-5", "mr", "cr", "trec", "CoLA", "RTE", "MRPC", "QNLI", "MNLI", "SNLI", "QQP", "STS-B"]
DOMAIN = ["chemprot", "acl-arc", "sciie", "imdb"]
METRICS = {"CoLA": "mcc", "MRPC": "f1", "QQP": "f1", "STS-B": "pearson", "acl-arc": "macro_f1",
           "sciie": "macro_f1", "imdb": "macro_f1"}


def test_registry_covers_every_task_with_its_metric() -> None:
    assert set(LM_BFF + DOMAIN) <= set(TASKS)
    for name in LM_BFF + DOMAIN:
        assert TASKS[name].metric == METRICS.get(name, "accuracy"), name
    assert TASKS["RTE"].is_pair and not TASKS["SST-2"].is_pair
    assert TASKS["STS-B"].regression and TASKS["STS-B"].num_labels == 1
    assert get_task("sst-2").name == "SST-2"


@pytest.mark.parametrize("task", LM_BFF)
def test_kshot_splits_load(data_dir: Path, task: str) -> None:
    spec, data = load_task(task, data_dir, DataOptions(shots=16, seed=42))
    n_classes = 2 if spec.regression else len(spec.labels)
    assert len(data.train) == 16 * n_classes
    assert len(data.dev) == 16 * n_classes
    assert all(ex.text_a is not None for ex in data.train)
    assert all((ex.text_b is not None) == spec.is_pair for ex in data.train)
    if task in ("MNLI", "SNLI", "QQP"):
        assert data.test == [] and any("no test split" in n for n in data.notes)
    else:
        assert len(data.test) > 0


def test_in_memory_sampler_reproduces_the_paper_split(data_dir: Path) -> None:
    spec = TASKS["SST-2"]
    pool = read_examples(data_dir / "lm-bff/SST-2/original/train.tsv", spec)
    train, dev = sample_kshot(pool, 16, 87)
    _, paper = load_task("SST-2", data_dir, DataOptions(shots=16, seed=87))
    assert [e.text_a for e in train] == [e.text_a for e in paper.train]
    assert [e.text_a for e in dev] == [e.text_a for e in paper.dev]


def test_sampler_leaves_numpy_global_state_alone() -> None:
    from transferlm.data.example import Example

    pool = [Example(text_a=f"t{i}", label=i % 2) for i in range(40)]
    np.random.seed(0)
    expected = np.random.rand()
    np.random.seed(0)
    train, _ = sample_kshot(pool, 4, 13)
    assert np.random.rand() == expected  # the caller's draw is the one it seeded
    # ... and the split is still the paper's seed-13 stream.
    order = list(pool)
    np.random.RandomState(13).shuffle(order)
    assert [e.text_a for e in train] == [e.text_a for e in order if e.label == order[0].label][:4] + \
        [e.text_a for e in order if e.label != order[0].label][:4]


def test_other_k_and_full_data(data_dir: Path) -> None:
    _, data = load_task("cr", data_dir, DataOptions(shots=4, seed=13))
    assert len(data.train) == 8 and len(data.dev) == 8 and len(data.test) == 2000
    _, full = load_task("SST-2", data_dir, DataOptions(shots=None, seed=13))
    assert len(full.train) + len(full.dev) == 6920 and len(full.test) == 872


@pytest.mark.parametrize("task", DOMAIN)
def test_domain_tasks_load_full(data_dir: Path, task: str) -> None:
    spec, data = load_task(task, data_dir, DataOptions(shots=None, seed=13))
    assert data.train and data.dev and data.test
    assert {ex.label for ex in data.train} <= set(range(len(spec.labels)))


def test_unknown_folder_in_lmbff_layout_loads_by_name(tmp_path: Path) -> None:
    kdir = tmp_path / "mytask" / "k-shot" / "2-13"
    kdir.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (kdir / f"{split}.tsv").write_text("sentence\tlabel\nhappy day\tpos\nsad day\tneg\nnice\tpos\nugly\tneg\n")
    spec, data = load_task("mytask", tmp_path, DataOptions(shots=2, seed=13))
    assert spec.labels == ("neg", "pos") and len(data.train) == 4 and data.train[0].label == 1


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_user_files_with_column_mapping(tmp_path: Path, fmt: str) -> None:
    rows = [("great stuff", "b", "good"), ("awful", "b", "bad"), ("lovely", "c", "good"), ("bad one", "c", "bad")]
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        import json

        path.write_text("".join(json.dumps({"review": r, "x": x, "stars": s}) + "\n" for r, x, s in rows))
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text(f"review{sep}x{sep}stars\n" + "".join(f"{r}{sep}{x}{sep}{s}\n" for r, x, s in rows))
    spec = TaskSpec(name="mine", text_columns=("review",), label_column="stars", format=fmt, family="user")
    spec, data = load_task(spec, None, DataOptions(shots=1, seed=13, train_file=str(path)))
    assert spec.labels == ("bad", "good")
    assert len(data.train) == 2 and len(data.dev) == 2
    assert {e.text_a for e in data.train} | {e.text_a for e in data.dev} == {r for r, _, _ in rows}


# --- bad input: one clear line each --------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_task("SST-2", tmp_path / "nope", DataOptions())
    assert "data directory not found" in _one_line(e) and "--data-dir" in str(e.value)


def test_unknown_task(data_dir: Path) -> None:
    with pytest.raises(DataError) as e:
        load_task("no-such-task", data_dir, DataOptions())
    assert "no-such-task" in _one_line(e)


def test_missing_columns(tmp_path: Path) -> None:
    p = tmp_path / "train.csv"
    p.write_text("text,label\nhello,a\n")
    spec = TaskSpec(name="x", text_columns=("review",), label_column="label", format="csv", labels=("a",))
    with pytest.raises(DataError) as e:
        read_examples(p, spec)
    assert "missing column 'review'" in _one_line(e) and str(p) in str(e.value)


def _check_rows(p: Path, spec: TaskSpec, content: str, want: list[str] | tuple[str, ...]) -> None:
    """Write ``content`` to ``p``: its texts read are ``want`` (a list), or reading it is one error line naming
    the file and holding every needle of ``want`` (a tuple)."""
    p.write_text(content)
    if isinstance(want, list):
        assert [x.text_a for x in read_examples(p, spec)] == want
        return
    with pytest.raises(DataError) as e:
        read_examples(p, spec)
    line = _one_line(e)
    assert line.startswith(f"{p}:"), line
    for needle in want:
        assert needle in line, line


_SENT = TaskSpec(name="x", text_columns=(1,), label_column=0, format="csv", header=False, labels=("0", "1"))
_HEADED = TaskSpec(name="x", text_columns=("text",), label_column="label", format="csv", labels=("0", "1"))


# (spec, file content, texts read | the error's needles): an unquoted comma in a csv row used to be
# cut silently (headerless: the text became its part before the comma; with a header: the rest was dropped).
@pytest.mark.parametrize("spec, content, want", [
    (_SENT, '0,"a fine, funny film"\n1,plain\n', ["a fine, funny film", "plain"]),
    (_SENT, '0,plain\n\n1,"say ""hi"", then go"\n', ["plain", 'say "hi", then go']),
    (_SENT, "0,plain\n1,a fine, funny film\n", (":2: 3 fields, expected 2 as on line 1", "double quotes")),
    (_SENT, "0,a fine, funny film\n1,plain\n", (":2: 2 fields, expected 3 as on line 1", "line 1's text")),
    (_SENT, "0,plain\n\n0,ok\n1,x,y,z\n", (":4: 4 fields, expected 2 as on line 1",)),
    (_HEADED, 'text,label\n"a, b",1\n', ["a, b"]),
    (_HEADED, "text,label\nplain,0\na, b,1\n", (":3: 3 fields, expected 2 as in the header", "double quotes")),
])
def test_csv_rows_with_another_field_count(tmp_path: Path, spec: TaskSpec, content: str,
                                           want: list[str] | tuple[str, ...]) -> None:
    _check_rows(tmp_path / "train.csv", spec, content, want)


_TSV_NAMED = TaskSpec(name="x", text_columns=("sentence",), label_column="label", format="tsv", labels=("0", "1"))
_TSV_TAIL = TaskSpec(name="x", text_columns=("a", "b"), label_column=-1, format="tsv", labels=("0", "1"))
_TSV_NOHEAD = TaskSpec(name="x", text_columns=(3,), label_column=1, format="tsv", header=False, labels=("0", "1"))


# tsv rows may have more fields than the header (GLUE SNLI: 11 or 15); one too short for a column the task
# reads would be misread, so it is an error naming the file, the line and the counts.
@pytest.mark.parametrize("spec, content, want", [
    (_TSV_NAMED, "sentence\tlabel\nfine\t1\n\nplain\t0\n", ["fine", "plain"]),
    (_TSV_NAMED, "sentence\tlabel\textra\nfine\t1\n", ["fine"]),  # short, but not for the columns read
    (_TSV_TAIL, "a\tb\tx\tlabel\np\tq\tx\t1\np\tq\tx\ty1\ty2\t0\n", ["p", "p"]),  # SNLI-like
    (_TSV_NOHEAD, "s\t1\t\tgood\ns\t0\t\tbad\n", ["good", "bad"]),
    (_TSV_NAMED, "sentence\tlabel\nfine\t1\nno label here\n", (":3: the row has 1 fields, too few for column 'label' (needs 2 fields)", "tab")),
    (_TSV_TAIL, "a\tb\tlabel\np\tq\t1\np\n", (":3: the row has 1 fields, too few for column 'b' (needs 2 fields)",)),
    (_TSV_NOHEAD, "s\t1\t\tgood\ns\t0\tbad\n", (":2: the row has 3 fields, too few for column 3 (needs 4 fields)",
                                                   "remove the tab or use CSV/JSONL")),
])
def test_tsv_rows_with_another_field_count(tmp_path: Path, spec: TaskSpec, content: str,
                                           want: list[str] | tuple[str, ...]) -> None:
    _check_rows(tmp_path / "train.tsv", spec, content, want)


def test_snli_reads_the_gold_label_of_rows_with_five_annotator_labels(data_dir: Path) -> None:
    # 16-42/train.tsv has 4 rows of 15 fields (label1..label5, gold_label) under an 11-name header; by name,
    # 2 of them read their second annotator's label and the classes came out 16/18/14.
    path = data_dir / "lm-bff/SNLI/k-shot/16-42/train.tsv"
    spec = TASKS["SNLI"]
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    assert sum(len(line.split("\t")) == 15 for line in lines) == 4
    got = [ex.label for ex in read_examples(path, spec)]
    assert got == [spec.labels.index(line.split("\t")[-1]) for line in lines]
    assert sorted(got.count(c) for c in range(3)) == [16, 16, 16]


def test_label_outside_declared_set(tmp_path: Path) -> None:
    p = tmp_path / "train.csv"
    p.write_text("text,label\nhello,a\nbye,z\n")
    spec = TaskSpec(name="x", text_columns=("text",), label_column="label", format="csv", labels=("a", "b"))
    with pytest.raises(DataError) as e:
        read_examples(p, spec)
    assert "'z'" in _one_line(e) and ":3" in str(e.value)


def test_empty_text_rows_error_or_drop(tmp_path: Path) -> None:
    p = tmp_path / "train.csv"
    p.write_text('text,label\nhello,a\n"  ",b\nbye,b\n')
    spec = TaskSpec(name="x", text_columns=("text",), label_column="label", format="csv", labels=("a", "b"))
    with pytest.raises(DataError) as e:
        read_examples(p, spec)
    assert "empty text" in _one_line(e) and "--empty-text drop" in str(e.value)
    assert [x.text_a for x in read_examples(p, spec, empty_text="drop")] == ["hello", "bye"]
    assert len(read_examples(p, spec, empty_text="keep")) == 3


def test_shots_larger_than_a_class(data_dir: Path) -> None:
    with pytest.raises(DataError) as e:
        load_task("chemprot", data_dir, DataOptions(shots=16, seed=13))
    assert "larger than class" in _one_line(e) and "--shots full" in str(e.value)


def test_read_texts_formats(tmp_path: Path) -> None:
    from transferlm.data.readers import read_texts

    plain = tmp_path / "a.txt"
    plain.write_text("first doc\n\nsecond doc\n")
    assert read_texts(plain) == ["first doc", "second doc"]
    jsonl_as_txt = tmp_path / "b.txt"  # the SciBERT corpora are JSON lines named .txt
    jsonl_as_txt.write_text('{"text": "one", "label": "x"}\n{"text": "two"}\n')
    assert read_texts(jsonl_as_txt) == ["one", "two"]
    usb = tmp_path / "c.json"
    usb.write_text('{"0": {"ori": "review one", "label": "1"}, "1": {"ori": "review two", "label": "0"}}')
    assert read_texts(usb, "ori") == ["review one", "review two"]


class _FakeSplit(list):
    def __init__(self, rows, features):
        super().__init__(rows)
        self.features = features


def test_hub_task_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    class ClassLabel:
        names = ["negative", "positive"]

    rows = [{"sentence": f"text {i}", "label": i % 2} for i in range(40)]
    fake = types.ModuleType("datasets")
    seen = {}

    def load_dataset(path, config=None):
        seen["args"] = (path, config)
        feats = {"sentence": object(), "label": ClassLabel()}
        return {"train": _FakeSplit(rows, feats), "validation": _FakeSplit(rows[:10], feats),
                "test": _FakeSplit([{"sentence": "hidden", "label": -1}], feats)}

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    spec, data = load_task("hf:glue:sst2", None, DataOptions(shots=4, seed=13))
    assert seen["args"] == ("glue", "sst2")
    assert spec.label_names == ("negative", "positive") and len(data.train) == 8 and len(data.dev) == 8
    assert len(data.test) == 10, "hidden test labels dropped; validation becomes test"


def test_hub_task_without_datasets_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="pip install datasets"):
        load_task("hf:imdb", None, DataOptions())


@pytest.mark.parametrize("content,record", [("[1, 2]", "record 1 is int"),
                                            ('[{"text": "hi", "label": "a"}, "oops"]', "record 2 is str"),
                                            ('{"x": {"text": "hi", "label": "a"}, "y": 3.5}', "record 2 is float")])
def test_json_records_that_are_not_objects(tmp_path: Path, content: str, record: str) -> None:
    p = tmp_path / "train.json"
    p.write_text(content)
    spec = TaskSpec(name="x", text_columns=("text",), label_column="label", format="json", labels=("a",))
    with pytest.raises(DataError) as e:
        read_examples(p, spec)
    assert _one_line(e).startswith(f"{p}: {record}") and "object with named fields" in str(e.value)


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_regression_labels_must_be_finite(tmp_path: Path, bad: str) -> None:
    p = tmp_path / "train.tsv"
    p.write_text(f"sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\t{bad}\n")
    spec = TaskSpec(name="sts", text_columns=("sentence1", "sentence2"), label_column="score", regression=True,
                    metric="pearson")
    with pytest.raises(DataError) as e:
        read_examples(p, spec)
    assert f"{p}:3: label '{bad}' is not a finite number" in _one_line(e)


# --- the user's column/label settings on a task folder ------------------------------------------


def _run_data(task: str, **data: object):
    from transferlm.config import RunConfig
    from transferlm.protocol.run import load_run_data

    return load_run_data(RunConfig.from_dict({"task": task, "data": data}))


def test_labels_on_an_unknown_task_folder_keep_its_files(tmp_path: Path) -> None:
    # Was a KeyError traceback: the overrides replaced the folder's inferred file names with none.
    kdir = tmp_path / "mine" / "k-shot" / "2-13"
    kdir.mkdir(parents=True)
    for split in ("train", "dev", "test"):
        (kdir / f"{split}.csv").write_text("0,bad movie\n0,awful\n1,great\n1,fine film\n")
    spec, data = _run_data("mine", data_dir=str(tmp_path), shots=2, labels=["1", "0"])
    assert spec.labels == ("1", "0") and spec.files["train"] == "train.csv"
    assert data.sizes() == {"train": 4, "dev": 4, "test": 4}
    assert [e.label for e in data.train] == [1, 1, 0, 0]


@pytest.mark.parametrize("ext, sep", [("tsv", "\t"), ("csv", ",")])
def test_text_columns_on_an_unknown_folder(tmp_path: Path, ext: str, sep: str) -> None:
    # --text-columns names a header column the inference does not know (review): tsv and csv alike.
    (tmp_path / "rev").mkdir()
    for split in ("train", "dev", "test"):
        rows = ["review", "stars"], ["good", "1"], ["bad", "0"], ["fine", "1"], ["awful", "0"]
        (tmp_path / "rev" / f"{split}.{ext}").write_text("".join(sep.join(r) + "\n" for r in rows))
    spec, data = _run_data("rev", data_dir=str(tmp_path), shots=None, text_columns=["review"],
                           label_column="stars")
    assert spec.text_columns == ("review",) and len(data.train) == 4 and len(data.test) == 4
    assert data.test[1].text_a == "bad" and spec.labels == ("0", "1")


def test_overrides_on_a_registry_task_named_in_other_case(data_dir: Path) -> None:
    spec, data = _run_data("sst-2", data_dir=str(data_dir), shots=16, labels=["0", "1"])
    assert spec.name == "SST-2" and data.sizes() == {"train": 32, "dev": 32, "test": 872}


@pytest.mark.parametrize("key", ["dev_file", "test_file"])
def test_dev_or_test_file_without_train_file_is_an_error(data_dir: Path, tmp_path: Path, key: str) -> None:
    # Was silently ignored: the run scored the task's own test split, not the file the user named.
    other = tmp_path / "mine.tsv"
    other.write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError) as e:
        load_task("SST-2", data_dir, DataOptions(**{key: str(other)}))
    assert key in _one_line(e) and "--train-file" in str(e.value)


def test_empty_tsv_in_an_unknown_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train.tsv").write_text("")
    with pytest.raises(DataError) as e:
        load_task("t", tmp_path, DataOptions(shots=None))
    assert "empty" in _one_line(e)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_unknown_folder_columns_come_from_the_header(tmp_path: Path, fmt: str) -> None:
    # README: a folder the registry does not know has its columns inferred from the header. A csv with a
    # header was read as LM-BFF's headerless label,text: the header row became an example and every text a label.
    (tmp_path / "mine").mkdir()
    rows = [("good film", "pos"), ("bad film", "neg"), ("great", "pos"), ("awful", "neg")]
    for split in ("train", "dev", "test"):
        path = tmp_path / "mine" / f"{split}.{fmt}"
        if fmt == "csv":
            path.write_text("sentence,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
        elif fmt == "json":  # a JSON array of records
            path.write_text(json.dumps([{"sentence": t, "label": y} for t, y in rows]))
        else:
            path.write_text("".join(json.dumps({"sentence": t, "label": y}) + "\n" for t, y in rows))
    spec, data = load_task("mine", tmp_path, DataOptions(shots=None))
    assert spec.labels == ("neg", "pos") and spec.text_columns == ("sentence",)
    assert len(data.test) == 4 and data.test[1].text_a == "bad film" and data.test[1].label == 0


@pytest.mark.parametrize("name, metric", [("hf:glue:mrpc", "f1"), ("hf:nyu-mll/glue:qqp", "f1"),
                                          ("hf:glue:cola", "mcc"), ("hf:glue:sst2", "accuracy")])
def test_hub_glue_tasks_are_scored_by_their_registry_metric(monkeypatch: pytest.MonkeyPatch, name: str,
                                                            metric: str) -> None:
    # The same task read from the hub is scored as the local copy is (LM-BFF: MRPC/QQP F1, CoLA MCC), not by
    # accuracy, so the two routes report comparable numbers.
    import sys
    import types

    class ClassLabel:
        names = ["no", "yes"]

    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 2} for i in range(40)]
    fake = types.ModuleType("datasets")

    def load_dataset(path, config=None):
        feats = {"sentence1": object(), "sentence2": object(), "label": ClassLabel()}
        return {"train": _FakeSplit(rows, feats), "validation": _FakeSplit(rows[:10], feats)}

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    spec, _ = load_task(name, None, DataOptions(shots=4, seed=13))
    assert spec.metric == metric


@pytest.mark.parametrize("name, content, needle", [
    ("train.json", "5", "the top level is int 5"),  # was a TypeError
    ("train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', "train.jsonl:2: empty label"),
    ("train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": ["x"]}\n', "train.jsonl:2: column 'label' holds a list"),
    ("train.jsonl", '{"text": {"t": 1}, "label": "x"}\n', "train.jsonl:1: column 'text' holds a JSON object"),
    ("train.csv", "text,label\n", "train.csv has no data rows"),  # was "could not find any labels"
])
def test_bad_user_file_contents(tmp_path: Path, name: str, content: str, needle: str) -> None:
    f = tmp_path / name
    f.write_text(content)
    spec = TaskSpec(name="mine", text_columns=("text",), label_column="label", format="", family="user")
    with pytest.raises(DataError, match=needle.replace("[", r"\[")):
        load_task(spec, options=DataOptions(train_file=str(f), shots=None))


def test_empty_train_file_in_a_task_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "t" / "original").mkdir(parents=True)
    (tmp_path / "t" / "original" / "train.csv").write_text("")
    with pytest.raises(DataError, match="train.csv has no data rows"):
        load_task("t", tmp_path)


@pytest.mark.parametrize("which", ["train_file", "dev_file", "test_file"])
def test_missing_user_file_names_its_flag(tmp_path: Path, which: str) -> None:
    f = tmp_path / "train.csv"
    f.write_text("text,label\na,x\nb,y\n")
    files = {"train_file": str(f), which: str(tmp_path / "nope.csv")}
    flag = "--" + which.replace("_", "-")
    with pytest.raises(DataError, match=f"{flag} .*nope.csv: not found"):
        load_task("mine", options=DataOptions(shots=None, **files))
    files[which] = str(tmp_path)  # a folder
    with pytest.raises(DataError, match=f"{flag} .*: is a folder, not a file"):
        load_task("mine", options=DataOptions(shots=None, **files))
