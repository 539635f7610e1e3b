"""The LM-BFF k-shot sampler: byte-identical to the paper's files, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from transferlm.data.kshot import generate_kshot, read_checksums, verify_kshot
from transferlm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
# The tasks whose original/ files ship in shared/data; the others (mpqa, subj, MNLI, SNLI, QQP)
# have only the paper's k-shot files, which test_original_files_present_as_documented pins down.
LM_BFF_TASKS = ["SST-2", "sst-5", "mr", "cr", "trec", "CoLA", "MRPC", "STS-B", "QNLI", "RTE"]
WITHOUT_ORIGINAL = ["MNLI", "SNLI", "QQP"]
SEEDS = (13, 21, 42, 87, 100)


@pytest.fixture(scope="module")
def lm_bff() -> Path:
    data = Path(os.environ.get("TRANSFERLM_DATA") or REPO.parent / "shared" / "data")
    if not (data / "lm-bff" / "CHECKSUMS-lm-bff-k-shot.txt").is_file():
        pytest.fail(
            f"LM-BFF data not found at {data}/lm-bff (with CHECKSUMS-lm-bff-k-shot.txt); "
            "set TRANSFERLM_DATA to the folder that holds lm-bff/"
        )
    return data / "lm-bff"


@pytest.mark.parametrize("task", LM_BFF_TASKS)
def test_matches_paper_md5s(lm_bff: Path, task: str, tmp_path: Path) -> None:
    original = lm_bff / task / "original"
    assert original.is_dir(), f"{task}: {original} is missing"
    checksums = read_checksums(lm_bff / "CHECKSUMS-lm-bff-k-shot.txt")

    written = generate_kshot(task, original, tmp_path / task, k=16, seeds=SEEDS)

    checked, mismatches = verify_kshot(tmp_path / task, checksums, task)
    assert mismatches == []
    assert checked > 0
    # Every file we wrote is one the paper lists, so each of them was checked.
    assert checked == len(written)


def test_original_files_present_as_documented(lm_bff: Path) -> None:
    have = sorted(p.parent.name for p in lm_bff.glob("*/original"))
    assert have == sorted(LM_BFF_TASKS)
    for task in WITHOUT_ORIGINAL:
        assert (lm_bff / task / "k-shot" / "16-13").is_dir()


# --- synthetic data ---------------------------------------------------------------


def _tsv_task(folder: Path, per_class: dict[str, int]) -> Path:
    folder.mkdir(parents=True)
    rows = [f"{i}\tsentence {label} {i}\t{label}\n" for label, n in per_class.items() for i in range(n)]
    (folder / "train.tsv").write_text("id\tsentence\tlabel\n" + "".join(rows), encoding="utf-8")
    (folder / "dev.tsv").write_text("id\tsentence\tlabel\n0\tan eval line\tyes\n", encoding="utf-8")
    return folder


def _csv_task(folder: Path, per_class: dict[int, int]) -> Path:
    folder.mkdir(parents=True)
    rows = [(label, f"text, with comma {label} {i}") for label, n in per_class.items() for i in range(n)]
    pd.DataFrame(rows).to_csv(folder / "train.csv", header=False, index=False)
    pd.DataFrame([(0, "a test text"), (1, 'a "quoted" one')]).to_csv(
        folder / "test.csv", header=False, index=False
    )
    return folder


def _assert_one_line(err: pytest.ExceptionInfo[DataError], *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


def test_unknown_tsv_task_uses_header_and_last_column(tmp_path: Path) -> None:
    original = _tsv_task(tmp_path / "orig", {"yes": 10, "no": 7})
    written = generate_kshot("my-task", original, tmp_path / "out", k=3, seeds=[1, 2])

    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        f"3-{s}/{n}.tsv" for s in (1, 2) for n in ("dev", "test", "train")
    ]
    for seed in (1, 2):
        folder = tmp_path / "out" / f"3-{seed}"
        train = (folder / "train.tsv").read_text().splitlines()
        dev = (folder / "dev.tsv").read_text().splitlines()
        assert train[0] == dev[0] == "id\tsentence\tlabel"
        for lines in (train, dev):
            labels = [line.split("\t")[-1] for line in lines[1:]]
            assert sorted(labels) == ["no"] * 3 + ["yes"] * 3
        assert not set(train[1:]) & set(dev[1:])
        assert (folder / "test.tsv").read_bytes() == (original / "dev.tsv").read_bytes()
    # Different seeds draw different samples; the same seed draws the same one.
    assert (tmp_path / "out/3-1/train.tsv").read_text() != (tmp_path / "out/3-2/train.tsv").read_text()
    generate_kshot("my-task", original, tmp_path / "again", k=3, seeds=[1])
    assert (tmp_path / "again/3-1/train.tsv").read_bytes() == (tmp_path / "out/3-1/train.tsv").read_bytes()


def test_unknown_csv_task_uses_first_column_label(tmp_path: Path) -> None:
    original = _csv_task(tmp_path / "orig", {0: 5, 1: 9, 2: 4})
    written = generate_kshot("my-csv", original, tmp_path / "out", k=2, seeds=[7])

    assert sorted(p.name for p in written) == ["dev.csv", "test.csv", "train.csv"]
    folder = tmp_path / "out" / "2-7"
    for name in ("train.csv", "dev.csv"):
        frame = pd.read_csv(folder / name, header=None)
        assert sorted(frame[0]) == [0, 0, 1, 1, 2, 2]
        assert frame[1].str.startswith("text, with comma").all()
    assert (folder / "test.csv").read_bytes() == (original / "test.csv").read_bytes()


def test_only_eval_file_writes_test_only(tmp_path: Path) -> None:
    original = tmp_path / "QNLI"
    original.mkdir()
    (original / "dev.tsv").write_text("index\tq\ts\tlabel\n0\ta\tb\tentailment\n", encoding="utf-8")

    written = generate_kshot("QNLI", original, tmp_path / "out", seeds=[13])

    assert written == [tmp_path / "out" / "16-13" / "test.tsv"]
    assert sorted(p.name for p in (tmp_path / "out" / "16-13").iterdir()) == ["test.tsv"]


def test_missing_original_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        generate_kshot("SST-2", tmp_path / "nowhere", tmp_path / "out")
    _assert_one_line(err, str(tmp_path / "nowhere"))


def test_original_dir_without_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        generate_kshot("mr", tmp_path / "empty", tmp_path / "out")
    _assert_one_line(err, "train.csv", "test.csv")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("k", [0, -1])
def test_k_must_be_positive(tmp_path: Path, k: int) -> None:
    original = _csv_task(tmp_path / "orig", {0: 5, 1: 5})
    with pytest.raises(DataError) as err:
        generate_kshot("my-csv", original, tmp_path / "out", k=k)
    _assert_one_line(err, f"k={k}")


def test_k_larger_than_a_class(tmp_path: Path) -> None:
    original = _tsv_task(tmp_path / "orig", {"yes": 10, "no": 3})
    with pytest.raises(DataError) as err:
        generate_kshot("my-task", original, tmp_path / "out", k=4, seeds=[1])
    _assert_one_line(err, "'no'", "only 3", "k=4", "train.tsv")
    assert not (tmp_path / "out" / "4-1").exists()  # nothing half-written


def test_unreadable_label_names_the_row(tmp_path: Path) -> None:
    original = tmp_path / "STS-B"
    original.mkdir()
    (original / "train.tsv").write_text("a\tscore\nx\t4.0\ny\tnot-a-number\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        generate_kshot("STS-B", original, tmp_path / "out", k=1)
    _assert_one_line(err, "train.tsv", "not-a-number")


def test_verify_reports_a_changed_file(tmp_path: Path) -> None:
    original = _csv_task(tmp_path / "orig", {0: 4, 1: 4})
    generate_kshot("toy", original, tmp_path / "out", k=2, seeds=[3])
    sums_file = tmp_path / "sums.txt"
    lines = [f"{'0' * 32}  toy/2-3/train.csv", f"{'0' * 32}  other/2-3/train.csv"]
    sums_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert verify_kshot(tmp_path / "out", read_checksums(sums_file), "toy") == (1, ["toy/2-3/train.csv"])

    sums_file.write_text("not a checksum line\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_checksums(sums_file)
    _assert_one_line(err, f"{sums_file}:1")
