"""The command line: help, listings, compare, and bad input (one line, exit 2, no partial output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_cli, toy_run_args
from transferlm.errors import ConfigError
from transferlm.protocol.compare import wall_time


@pytest.mark.parametrize("cmd", ["run", "compare", "tasks", "models", "methods", "kshot", "probe", "pretrain",
                                 "multitask", "search", "serve", "report",
                                 "reproduce"])
def test_every_command_has_help_with_examples(cmd: str) -> None:
    proc = run_cli(cmd, "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout


def test_tasks_and_methods_listings(data_dir: Path) -> None:
    out = run_cli("tasks", "--data-dir", str(data_dir), check=True).stdout
    for name in ("SST-2", "CoLA", "STS-B", "chemprot", "imdb"):
        assert name in out
    assert "all tasks present" in out
    assert "finetune" in run_cli("methods", check=True).stdout


def test_python_module_entry_point_and_version() -> None:
    proc = run_cli("--version", check=True)
    assert proc.stdout.startswith("transferlm ")


def test_compare_writes_summary_and_table(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = run_cli("compare", "--task", "toy", "--data-dir", str(toy_data), "--shots", "8", "--model",
                   str(tiny_bert), "--methods", "finetune", "--seeds", "13,21", "--output", str(out), "--quiet",
                   "--steps", "6", "--grid", "train.learning_rate=1e-3,3e-3", check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "toy" and summary["model"] == str(tiny_bert)
    (row,) = summary["rows"]
    assert row["method"] == "finetune" and len(row["per_seed"]) == 2
    assert row["mean"] == pytest.approx(sum(row["per_seed"]) / 2)
    assert {"std", "trainable_params", "train_seconds"} <= set(row)
    assert "finetune" in proc.stdout and "(" in proc.stdout  # mean (std) table
    # Per-seed selection on dev picked one grid point per seed, recorded in the summary.
    assert len(row["selected"]) == 2 and all("train.learning_rate" in s for s in row["selected"])
    # Everything was computed now: 2 seeds x 2 grid points, none from the cache, wall time measured.
    assert row["runs"] == 4 and row["reused_runs"] == 0 and row["computed_wall_seconds"] > 0
    # A rerun reuses finished runs instead of training again, and says so (its wall time is not the runs').
    before = (out / "finetune" / "seed-13" / "grid-0" / "results.json").stat().st_mtime_ns
    (out / "finetune" / "seed-21" / "grid-1" / "results.json").unlink()
    proc = run_cli("compare", "--task", "toy", "--data-dir", str(toy_data), "--shots", "8", "--model",
                   str(tiny_bert), "--methods", "finetune", "--seeds", "13,21", "--output", str(out), "--quiet",
                   "--steps", "6", "--grid", "train.learning_rate=1e-3,3e-3", check=True)
    assert (out / "finetune" / "seed-13" / "grid-0" / "results.json").stat().st_mtime_ns == before
    (again,) = json.loads((out / "summary.json").read_text())["rows"]
    assert again["per_seed"] == row["per_seed"]  # same config and seed, same numbers
    assert again["runs"] == 4 and again["reused_runs"] == 3 and again["computed_wall_seconds"] > 0
    assert "3 of 4 runs reused from the cache" in proc.stdout
    assert wall_time(again)["wall_seconds"] is None and wall_time(row)["wall_seconds"] == row["computed_wall_seconds"]


def _assert_clean_error(proc, out: Path, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("transferlm: error:")
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists(), "no partial output on error"


def test_bad_missing_data_dir(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = run_cli(*toy_run_args(tiny_bert, tmp_path / "missing", out))
    _assert_clean_error(proc, out, "data directory not found")


def test_bad_unknown_task(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = toy_run_args(tiny_bert, toy_data, out)
    args[args.index("toy")] = "nosuchtask"
    _assert_clean_error(run_cli(*args), out, "nosuchtask")


def test_bad_unknown_model(toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    _assert_clean_error(run_cli(*toy_run_args(Path("./no/such/model"), toy_data, out)), out, "no/such/model")


def test_bad_missing_columns(tiny_bert: Path, tmp_path: Path) -> None:
    f = tmp_path / "train.csv"
    f.write_text("text,label\nhi,a\nyo,b\n")
    out = tmp_path / "o"
    proc = run_cli("run", "--task", "mine", "--train-file", str(f), "--text-columns", "review", "--label-column",
                   "label", "--model", str(tiny_bert), "--shots", "1", "--output", str(out))
    _assert_clean_error(proc, out, "missing column 'review'")


def test_bad_labels_outside_declared_set(tiny_bert: Path, tmp_path: Path) -> None:
    f = tmp_path / "train.csv"
    f.write_text("text,label\nhi,a\nyo,c\n")
    out = tmp_path / "o"
    proc = run_cli("run", "--task", "mine", "--train-file", str(f), "--text-columns", "text", "--label-column",
                   "label", "--labels", "a,b", "--model", str(tiny_bert), "--shots", "1", "--output", str(out))
    _assert_clean_error(proc, out, "'c'", "declared label set")


def test_bad_empty_text_rows(tiny_bert: Path, tmp_path: Path) -> None:
    f = tmp_path / "train.csv"
    f.write_text('text,label\nhi,a\n"",b\nyo,b\n')
    out = tmp_path / "o"
    base = ["run", "--task", "mine", "--train-file", str(f), "--text-columns", "text", "--label-column", "label",
            "--model", str(tiny_bert), "--shots", "1", "--output", str(out), "--steps", "2", "--quiet"]
    _assert_clean_error(run_cli(*base), out, "empty text", "--empty-text drop")
    run_cli(*base, "--empty-text", "drop", check=True)
    assert json.loads((out / "results.json").read_text())["data"]["sizes"]["train"] == 2


def test_bad_shots_larger_than_class(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = toy_run_args(tiny_bert, toy_data, out)
    args[args.index("--shots") + 1] = "50"
    _assert_clean_error(run_cli(*args), out, "larger than class")


def test_bad_config_key(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 0.1\n")
    out = tmp_path / "o"
    _assert_clean_error(run_cli(*toy_run_args(tiny_bert, toy_data, out), "--config", str(cfg)), out, "lr")


def test_prompt_flags_reach_method_args(tmp_path) -> None:
    from transferlm.cli import build_parser, build_run_dict

    found = tmp_path / "label_words.json"
    found.write_text(json.dumps({"best": {"template": "{sentence} A {answer} one.",
                                          "label_words": {"0": "bad", "1": "good"}}}))
    args = build_parser().parse_args(["run", "--task", "SST-2", "--method", "prompt-finetune", "--template",
                                      "{sentence} It was {answer}.", "--label-words", str(found), "--auto", "templates"])
    margs = build_run_dict(args)["run"]["method_args"]
    assert margs == {"template": "{sentence} It was {answer}.", "label_words": {"0": "bad", "1": "good"},
                     "auto": "templates"}
    args = build_parser().parse_args(["run", "--template", str(found), "--label-words", '["no", "yes"]', "--auto"])
    margs = build_run_dict(args)["run"]["method_args"]
    assert margs == {"template": "{sentence} A {answer} one.", "label_words": ["no", "yes"], "auto": "both"}
    bad = build_parser().parse_args(["run", "--label-words", "{not json"])
    with pytest.raises(ConfigError, match="--label-words"):
        build_run_dict(bad)


def _in_process_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``transferlm argv`` in this process: a traceback raises here; else the one error line and exit 2."""
    from transferlm.cli import main

    rc = main(list(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and lines and lines[-1].startswith("transferlm: error:"), (rc, lines[-5:])
    return lines[-1]


# (files to write under tmp: name -> text, argv with {tmp}/{model}/{data} filled in, needles of the error line)
BAD_INPUT = {
    "yaml data scalar": ({"c.yaml": "data: 5\n"}, ["run", "--config", "{tmp}/c.yaml", "--output", "{tmp}/o"],
                         ["c.yaml.data must be a mapping"]),
    "yaml data null": ({"c.yaml": "data: null\n"}, ["run", "--config", "{tmp}/c.yaml", "--output", "{tmp}/o"],
                       ["no data directory"]),
    "yaml method_args scalar": ({"c.yaml": "method_args: 5\n"},
                                ["run", "--config", "{tmp}/c.yaml", "--data-dir", "{data}", "--output", "{tmp}/o"],
                                ["c.yaml.method_args must be a mapping"]),
    "yaml task list": ({"c.yaml": "task: [a, b]\n"}, ["run", "--config", "{tmp}/c.yaml", "--output", "{tmp}/o"],
                       ["c.yaml.task must be a single str"]),
    "yaml shots named as the file's": ({"c.yaml": "data:\n  shots: -1\n"},
                                       ["run", "--config", "{tmp}/c.yaml", "--output", "{tmp}/o"],
                                       ["c.yaml.data.shots must be a positive integer"]),
    "set empty key": ({}, ["run", "--set", "=3", "--output", "{tmp}/o"], ["bad key ''"]),
    "compare yaml grid list": ({"c.yaml": "grid: [1]\n"}, ["compare", "--config", "{tmp}/c.yaml", "--output",
                                                           "{tmp}/o"], ["c.yaml.grid must be a mapping"]),
    "compare yaml seeds": ({"c.yaml": "seeds: 13x\n"}, ["compare", "--config", "{tmp}/c.yaml", "--output", "{tmp}/o"],
                           ["c.yaml.seeds: bad value '13x'"]),
    "compare later grid value": ({}, ["compare", "--task", "toy", "--data-dir", "{data}", "--model", "{model}",
                                      "--seeds", "13", "--steps", "1", "--quiet", "--grid", "train.batch_size=4,0",
                                      "--output", "{tmp}/o"], ["train.batch_size must be > 0"]),
    "multitask yaml data scalar": ({"c.yaml": "data: 5\ntasks: [a, b]\n"},
                                   ["multitask", "--config", "{tmp}/c.yaml", "--output", "{tmp}/o"],
                                   ["c.yaml.data must be a mapping"]),
    "pretrain yaml texts scalar": ({"c.yaml": "texts: 5\n"}, ["pretrain", "--config", "{tmp}/c.yaml", "--output",
                                                              "{tmp}/o"], ["c.yaml.texts must be a list"]),
    "train file missing": ({}, ["run", "--task", "mine", "--train-file", "{tmp}/nope.csv", "--output", "{tmp}/o"],
                           ["--train-file", "nope.csv: not found"]),
    "csv row with an unquoted comma": ({"mine/train.csv": "0,plain\n1,a fine, funny film\n", "mine/test.csv": "0,ok\n"},
                                       ["run", "--task", "mine", "--data-dir", "{tmp}", "--model", "{model}",
                                        "--steps", "1", "--quiet", "--output", "{tmp}/o"],
                                       ["train.csv:2: 3 fields, expected 2 as on line 1", "double quotes"]),
    "model typo of a built-in": ({}, ["run", "--task", "toy", "--data-dir", "{data}", "--model", "minilm-l7",
                                      "--steps", "1", "--quiet", "--output", "{tmp}/o"],
                                 ["model 'minilm-l7' not found", "did you mean 'minilm-l6'?"]),
    "model folder missing": ({}, ["run", "--task", "toy", "--data-dir", "{data}", "--model", "./no/such",
                                  "--steps", "1", "--quiet", "--output", "{tmp}/o"],
                             ["model folder './no/such' does not exist"]),
    "run output is a file": ({"o": "keep"}, ["run", "--task", "toy", "--data-dir", "{data}", "--model", "{model}",
                                             "--steps", "1", "--quiet", "--output", "{tmp}/o"],
                             ["--output", "is an existing file"]),
    "kshot output is a file": ({"o": "keep"}, ["kshot", "--task", "toy", "--data-dir", "{data}", "--seeds", "13",
                                               "--output", "{tmp}/o"], ["is a file, so no folder can be made"]),
    "pretrain output holds other files": ({"o/notes.txt": "keep"},
                                          ["pretrain", "--model", "{model}", "--text", "{tmp}/t.txt", "--steps", "1",
                                           "--quiet", "--output", "{tmp}/o"], ["is a folder with other files"]),
    "model without tokenizer": ({}, ["run", "--task", "toy", "--data-dir", "{data}", "--model", "{tmp}/notok",
                                     "--steps", "1", "--quiet", "--output", "{tmp}/o"], ["has no tokenizer files"]),
    "model with truncated weights": ({}, ["run", "--task", "toy", "--data-dir", "{data}", "--model", "{tmp}/cut",
                                          "--steps", "1", "--quiet", "--output", "{tmp}/o"],
                                     ["weights file is damaged"]),
    "report summary not utf-8": ({}, ["report", "{tmp}/bin", "--output", "{tmp}/o"], ["not UTF-8 text"]),
    "serve task twice": ({}, ["serve", "--task", "a={tmp}/x", "--task", "a={tmp}/y"], ["--task a is given twice"]),
    "serve task without folder": ({}, ["serve", "--task", "a="], ["no folder after '='"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_leaves_nothing(case: str, tiny_bert: Path, toy_data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    files, argv, needles = BAD_INPUT[case]
    monkeypatch.delenv("TRANSFERLM_DATA", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a model name cases may try must not reach the hub
    monkeypatch.chdir(tmp_path)
    for name, text in {"t.txt": "good movie\nbad film\n", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "notok").mkdir()  # config and weights, no tokenizer files
    (tmp_path / "cut").mkdir()  # tokenizer and config, weights cut short
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, tmp_path / "notok" / name)
    for p in tiny_bert.iterdir():
        if p.name != "model.safetensors":
            shutil.copy(p, tmp_path / "cut" / p.name)
    (tmp_path / "cut" / "model.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes()[:1000])
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "summary.json").write_bytes(b"\xff\xfe{}")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    dirs = {p for p in tmp_path.rglob("*") if p.is_dir()}
    line = _in_process_error(capsys, *(a.format(tmp=tmp_path, model=tiny_bert, data=toy_data) for a in argv))
    for n in needles:
        assert n in line, line
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, "bad input must write nothing and delete nothing"
    assert {p for p in tmp_path.rglob("*") if p.is_dir()} == dirs, "no folders made either"


def test_run_in_a_folder_another_process_works_in_fails_fast(tiny_bert: Path, toy_data: Path, tmp_path: Path) -> None:
    from helpers import hold_lock

    out = tmp_path / "o"
    holder = hold_lock(out)  # the first `transferlm run --output o`, still training
    try:
        proc = run_cli(*toy_run_args(tiny_bert, toy_data, out, "--steps", "2"))
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("transferlm: error:") and str(out) in line
        assert f"in use by another transferlm process (pid {holder.pid}); wait for it to finish" in line
        assert [p.name for p in out.iterdir()] == [".transferlm.lock"], "the second wrote nothing"
    finally:
        holder.stdin.close()  # the first finishes
        holder.wait()
    run_cli(*toy_run_args(tiny_bert, toy_data, out, "--steps", "2"), check=True)
    assert (out / "results.json").is_file()


# The other writers lock their output folder too, after their checks: (argv, the folder locked).
OTHER_LOCKED = {
    "probe": (["probe", "--task", "toy", "--data-dir", "{data}", "--model", "{model}", "--shots", "8", "--steps", "1",
               "--layers", "0,1", "--quiet", "--output", "{tmp}/o"], "o"),
    "kshot": (["kshot", "--task", "toy", "--data-dir", "{data}", "--seeds", "13", "--output", "{tmp}/o"], "o/toy"),
    "report": (["report", "{tmp}/in/sst2", "{tmp}/in/cr", "--output", "{tmp}/o"], "o"),
}


@pytest.mark.parametrize("cmd", list(OTHER_LOCKED))
def test_other_writers_in_a_folder_another_process_holds_fail_fast(cmd: str, tiny_bert: Path, toy_data: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import hold_lock
    from reports_fixtures import two_task_dirs
    from transferlm.cli import main

    two_task_dirs(tmp_path / "in")
    argv, locked = OTHER_LOCKED[cmd]
    argv = [a.format(tmp=tmp_path, model=tiny_bert, data=toy_data) for a in argv]
    holder = hold_lock(tmp_path / locked)
    try:
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        dirs = {p for p in tmp_path.rglob("*") if p.is_dir()}
        line = _in_process_error(capsys, *argv)
        assert str(tmp_path / locked) in line, line
        assert f"in use by another transferlm process (pid {holder.pid}); wait for it to finish" in line, line
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, "the second wrote nothing"
        assert {p for p in tmp_path.rglob("*") if p.is_dir()} == dirs, "nor made a folder"
    finally:
        holder.stdin.close()
        holder.wait()
    assert main(argv) == 0, capsys.readouterr().err  # once the holder is gone
    capsys.readouterr()
