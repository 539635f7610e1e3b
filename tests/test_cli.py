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
