"""The benchmarks' seed bookkeeping: rows grow by seeds and never mix runs of another model or budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from seed_rows import load_rows, merge_seeds  # noqa: E402

TRAIN = {"max_steps": 60, "learning_rate": 2e-5}


def _row(seeds: list[int], scores: list[float]) -> dict:
    return {"task": "SST-2", "variant": "finetune", "seeds": seeds, "per_seed": scores,
            "mean": float(np.mean(scores)), "std": float(np.std(scores)), "train_seconds_per_seed": 1.0}


def test_more_seeds_extend_a_row_and_recompute_mean_and_std() -> None:
    merged = merge_seeds(_row([13, 21, 42], [0.5, 0.6, 0.7]), _row([87, 100], [0.8, 0.9]))
    assert merged["seeds"] == [13, 21, 42, 87, 100]
    assert merged["per_seed"] == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert merged["mean"] == pytest.approx(0.7)
    assert merged["std"] == pytest.approx(np.std([0.5, 0.6, 0.7, 0.8, 0.9]))
    assert merged["seeds_from_previous_runs"] == [13, 21, 42]


def test_seconds_per_seed_average_over_every_seed_of_the_row() -> None:
    old, new = _row([13, 21, 42], [0.5, 0.6, 0.7]), _row([87, 100], [0.8, 0.9])
    old["eval_seconds_per_seed"], new["train_seconds_per_seed"], new["eval_seconds_per_seed"] = 10.0, 4.0, 20.0
    merged = merge_seeds(old, new)
    assert merged["train_seconds_per_seed"] == pytest.approx((1.0 * 3 + 4.0 * 2) / 5)
    assert merged["eval_seconds_per_seed"] == pytest.approx((10.0 * 3 + 20.0 * 2) / 5)
    old["timing_note"] = "seed 13 was paused"
    assert merge_seeds(old, new)["timing_note"] == "seed 13 was paused"  # kept with the seeds it explains
    rerun = merge_seeds(old, {**_row([42], [0.7]), "train_seconds_per_seed": 7.0})  # 42 counts once, as new
    assert rerun["train_seconds_per_seed"] == pytest.approx((1.0 * 2 + 7.0) / 3)


def test_a_rerun_seed_takes_the_new_score() -> None:
    merged = merge_seeds(_row([13, 21], [0.5, 0.6]), _row([21], [0.9]))
    assert merged["per_seed"] == [0.5, 0.9]
    assert merged["seeds_from_previous_runs"] == [13]
    assert merge_seeds(None, _row([13], [0.5]))["per_seed"] == [0.5]


def test_load_rows_reads_rows_of_the_same_model_and_budget(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert load_rows(out, "m", TRAIN) == ({}, {})
    # A row written before rows had their own seeds takes the file's list.
    old = {k: v for k, v in _row([13, 21], [0.5, 0.6]).items() if k != "seeds"}
    out.write_text(json.dumps({"model": "m", "train": TRAIN, "seeds": "13,21", "rows": [old]}))
    _, rows = load_rows(out, "m", TRAIN)
    assert rows[("SST-2", "finetune")]["seeds"] == [13, 21]


@pytest.mark.parametrize("model, train", [("other", TRAIN), ("m", {**TRAIN, "max_steps": 120})])
def test_load_rows_refuses_a_file_of_another_model_or_budget(tmp_path: Path, model: str, train: dict) -> None:
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"model": "m", "train": TRAIN, "rows": [_row([13], [0.5])]}))
    with pytest.raises(SystemExit, match="r.json: holds rows of model 'm'.*pass another --out"):
        load_rows(out, model, train)


def test_stability_borrows_the_finetune_row_of_an_lmbff_file(tmp_path: Path) -> None:
    from stability import borrowed_finetune_row

    src = tmp_path / "lmbff.json"
    src.write_text(json.dumps({"model": "m", "train": TRAIN, "rows": [_row([13, 21, 42], [0.5, 0.6, 0.9])]}))
    row = borrowed_finetune_row([str(src)], "SST-2", [13, 42], "m", TRAIN)
    assert row["per_seed"] == [0.5, 0.9] and row["seeds"] == [13, 42]
    assert row["mean"] == pytest.approx(0.7) and row["std"] == pytest.approx(0.2)
    assert "lmbff.json" in row["source"]
    with pytest.raises(SystemExit, match=r"lacks seeds \[87\]; run them there first"):
        borrowed_finetune_row([str(src)], "SST-2", [13, 87], "m", TRAIN)
    with pytest.raises(SystemExit, match="no cr finetune row"):
        borrowed_finetune_row([str(src)], "cr", [13], "m", TRAIN)
    with pytest.raises(SystemExit, match="absent.json does not exist"):
        borrowed_finetune_row([str(tmp_path / "absent.json")], "SST-2", [13], "m", TRAIN)
    with pytest.raises(SystemExit, match="pass another --out"):  # another budget is another run
        borrowed_finetune_row([str(src)], "SST-2", [13], "m", {"max_steps": 100})


def test_a_borrowed_finetune_row_says_whose_seeds_its_seconds_cover(tmp_path: Path) -> None:
    # LM-BFF rows keep one mean of the seconds over all their seeds; a subset borrowed took it as its own.
    from stability import borrowed_finetune_row

    src = tmp_path / "lmbff.json"
    row = {**_row([13, 21, 42], [0.5, 0.6, 0.9]), "train_seconds_per_seed": 30.0}
    src.write_text(json.dumps({"model": "m", "train": TRAIN, "rows": [row]}))
    whole = borrowed_finetune_row([str(src)], "SST-2", [42, 13, 21], "m", TRAIN)
    assert whole["train_seconds_per_seed"] == 30.0 and "timing_note" not in whole  # the seconds are its seeds'
    part = borrowed_finetune_row([str(src)], "SST-2", [13, 42], "m", TRAIN)
    assert part["train_seconds_per_seed"] == 30.0
    assert part["timing_note"].startswith("train_seconds_per_seed is the mean over seeds 13, 21, 42 of the source row")
    # The source's own note on its seconds (a paused seed) travels with them.
    src.write_text(json.dumps({"model": "m", "train": TRAIN, "rows": [{**row, "timing_note": "seed 21 was paused"}]}))
    assert borrowed_finetune_row([str(src)], "SST-2", [13, 21, 42], "m", TRAIN)["timing_note"] == (
        "source row's note: seed 21 was paused")
    assert borrowed_finetune_row([str(src)], "SST-2", [13], "m", TRAIN)["timing_note"].endswith(
        "not over the borrowed seeds alone; source row's note: seed 21 was paused")


def test_stability_records_a_borrowed_finetune_row_without_training(tmp_path: Path, monkeypatch) -> None:
    import stability

    src, out = tmp_path / "lmbff.json", tmp_path / "stability.json"
    src.write_text(json.dumps({"model": "m", "train": TRAIN, "rows": [_row([13, 21], [0.5, 0.7])]}))
    monkeypatch.setattr(sys, "argv", ["stability.py", "--tasks", "SST-2", "--model", "m", "--seeds", "13,21",
                                      "--variants", "finetune", "--finetune-from", str(src),
                                      "--train", json.dumps(TRAIN), "--out", str(out)])
    stability.main()
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["per_seed"]) for r in rows] == [("finetune", [0.5, 0.7])]


def test_peft_full_reuses_finished_runs_and_keeps_rows_it_did_not_run(tiny_bert: Path, toy_data: Path,
                                                                      tmp_path: Path, monkeypatch) -> None:
    import peft_full

    out, work = tmp_path / "peft.json", tmp_path / "work"

    def call(methods: str) -> dict:
        monkeypatch.setattr(sys, "argv", ["peft_full.py", "--task", "toy", "--model", str(tiny_bert), "--methods",
                                          methods, "--data-dir", str(toy_data), "--work", str(work), "--out", str(out)])
        peft_full.main()
        return {r["method"]: r for r in json.loads(out.read_text())["rows"]}

    first = call("bitfit,prefix")
    assert not first["bitfit"]["reused"] and first["prefix"]["options"]["init"] == "vocab"
    again = call("prefix")  # only prefix is asked for: it is reused, and the bitfit row stays
    assert again["prefix"]["reused"] and again["prefix"]["test"] == first["prefix"]["test"]
    assert again["prefix"]["wall_seconds"] == first["prefix"]["wall_seconds"]  # the time of the call that ran it
    assert again["bitfit"] == first["bitfit"]


def _results(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"model": "smollm2-135m", "shots": 16, "train": TRAIN, "rows": rows}))
    return path


def test_the_lmbff_table_shows_every_lecture_row_with_its_seed_count_and_fills_the_readme(tmp_path: Path) -> None:
    from lmbff_report import BEGIN, END, collection, load_cells, replace_between

    from transferlm.reports.tables import build_reference_table, build_table

    rows = [{**_row([13, 21, 42, 87, 100], [0.8] * 5), "variant": "prompt-finetune", "method": "prompt-finetune",
             "trainable_params": 100},
            {**_row([13, 21], [0.6, 0.7]), "variant": "icl", "method": "icl", "trainable_params": 0},
            {**_row([13], [0.9]), "variant": "prompt-finetune+lora", "method": "prompt-finetune"}]  # a PEFT row
    first = _results(tmp_path / "a.json", rows)
    later = _results(tmp_path / "b.json", [{**rows[1], **_row([13, 21, 42], [0.6, 0.7, 0.8]), "variant": "icl"}])
    zero = tmp_path / "z.json"
    zero.write_text(json.dumps({"model": "smollm2-135m", "method": "prompt-zero-shot", "rows": [
        {"task": "SST-2", "calibrate": True, "accuracy": 0.69, "eval_seconds": 9.0}]}))
    coll = collection(load_cells([first, later], zero))
    table = build_table(coll)
    by_label = {r[0].text: r[1].text for r in table.rows}
    assert by_label == {"Prompt-based zero-shot + calibration": "69.0 (0.0)", '"GPT-3" in-context learning':
                        "70.0 (8.2) [n=3]", "Prompt-based FT (man)": "80.0 (0.0)"}  # the later file's icl row wins
    assert [r[0].text for r in table.rows] == ["Prompt-based zero-shot + calibration", '"GPT-3" in-context learning',
                                               "Prompt-based FT (man)"]  # the lecture's order; no PEFT row
    assert build_reference_table(coll).rows[0][1].text == "50.9"  # the lecture's majority class on SST-2
    # A bf16 file's row is a row of its own under its float32 row, and the notes say what [bf16] means.
    bf16 = tmp_path / "bf16.json"
    bf16.write_text(json.dumps({"model": "smollm2-135m", "shots": 16, "train": {**TRAIN, "mixed_precision": "bf16"},
                                "rows": [{**rows[0], **_row([13], [0.7]), "variant": "prompt-finetune"}]}))
    mixed = collection(load_cells([first, later, bf16], zero))
    labels = [r[0].text for r in build_table(mixed).rows]
    assert labels[-2:] == ["Prompt-based FT (man)", "Prompt-based FT (man) [bf16]"]
    assert {r[0].text: r[1].text for r in build_table(mixed).rows}["Prompt-based FT (man)"] == "80.0 (0.0)"
    assert any(n.startswith("[bf16]:") for n in mixed.notes) and not any("[bf16]" in n for n in coll.notes)
    # So is a row averaging another number of demonstration sets; the default number gets no tag.
    demos = {**_row([13], [0.9]), "variant": "prompt-finetune+demos", "method": "prompt-finetune"}
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps({"model": "smollm2-135m", "shots": 16, "train": {**TRAIN, "mixed_precision": "bf16"},
                                "rows": [{**demos, "method_args": {"demonstrations": True, "demo_eval_samples": 16}}]}))
    plain = _results(tmp_path / "plain.json", [{**demos, "method_args": {"demonstrations": True,
                                                                          "demo_eval_samples": 2}}])
    bf16_demos = tmp_path / "bf16-demos.json"
    bf16_demos.write_text(json.dumps({"model": "smollm2-135m", "shots": 16, "train": {**TRAIN, "mixed_precision": "bf16"},
                                      "rows": [{**demos, "method_args": {"demonstrations": True,
                                                                         "demo_eval_samples": 2}}]}))
    labels = [r[0].text for r in build_table(collection(load_cells([sets, plain, bf16_demos], None))).rows]
    assert labels == ["Prompt-based FT (man) + demonstrations", "Prompt-based FT (man) + demonstrations [bf16]",
                      "Prompt-based FT (man) + demonstrations [bf16, 16 sets]"]  # the fewer tags, the higher
    assert any(n.startswith("[N sets]") for n in collection(load_cells([sets], None)).notes)
    readme = f"intro\n{BEGIN}\nold table\n{END}\nrest\n"
    assert replace_between(readme, "new", "R.md") == f"intro\n{BEGIN}\nnew\n{END}\nrest\n"
    with pytest.raises(SystemExit, match="R.md: no"):
        replace_between("no markers", "new", "R.md")


def test_calls_recording_other_seeds_into_one_file_keep_each_others_rows(tmp_path: Path) -> None:
    from seed_rows import record_row

    out = tmp_path / "r.json"
    assert record_row(out, "m", TRAIN, _row([13], [0.5]), header={"shots": 16})["seeds"] == [13]
    # Another call (started before the first wrote) records seed 21, then another variant: nothing is lost.
    assert record_row(out, "m", TRAIN, _row([21], [0.7]))["per_seed"] == [0.5, 0.7]
    record_row(out, "m", TRAIN, {**_row([13], [0.9]), "variant": "icl"})
    saved = json.loads(out.read_text())
    assert saved["shots"] == 16 and saved["model"] == "m" and saved["train"] == TRAIN
    rows = {(r["task"], r["variant"]): r for r in saved["rows"]}
    assert rows[("SST-2", "finetune")]["seeds"] == [13, 21] and rows[("SST-2", "icl")]["seeds"] == [13]
    assert record_row(out, "m", TRAIN, _row([87], [0.1]), whole=True)["seeds"] == [87]  # replaced, not merged
    with pytest.raises(SystemExit, match="pass another --out"):
        record_row(out, "other", TRAIN, _row([13], [0.5]))
    # Seeds run with other method options never join a row (e.g. 8 demonstration sets at inference instead of 2).
    record_row(out, "m", TRAIN, {**_row([13], [0.5]), "variant": "demos", "method_args": {"demo_eval_samples": 2}})
    with pytest.raises(SystemExit, match="demos holds seeds run with method_args"):
        record_row(out, "m", TRAIN, {**_row([21], [0.6]), "variant": "demos", "method_args": {"demo_eval_samples": 8}})
    assert record_row(out, "m", TRAIN, {**_row([21], [0.6]), "variant": "demos",
                                        "method_args": {"demo_eval_samples": 2}})["seeds"] == [13, 21]


def _record_seed(out: str, seed: int) -> None:
    from seed_rows import record_row

    record_row(Path(out), "m", TRAIN, _row([seed], [seed / 1000]))


def test_parallel_processes_recording_seeds_lose_none(tmp_path: Path) -> None:
    import multiprocessing

    out = tmp_path / "r.json"
    seeds = list(range(1, 25))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        pool.starmap(_record_seed, [(str(out), s) for s in seeds])
    row = json.loads(out.read_text())["rows"][0]
    assert row["seeds"] == seeds and row["per_seed"] == [s / 1000 for s in seeds]


def test_demo_sets_change_only_the_rows_with_demonstrations() -> None:
    from lmbff import variant_run

    assert variant_run("SST-2", "m", "d", "prompt-finetune+demos", demo_sets=16).method_args["demo_eval_samples"] == 16
    assert variant_run("SST-2", "m", "d", "prompt-finetune+demos").method_args["demo_eval_samples"] == 2
    assert "demo_eval_samples" not in variant_run("SST-2", "m", "d", "prompt-finetune", demo_sets=16).method_args
    bf16 = variant_run("SST-2", "m", "d", "prompt-finetune", {"max_steps": 60, "mixed_precision": "bf16"})
    assert bf16.train.mixed_precision == "bf16"



def test_each_precision_and_demonstration_count_caches_its_runs_in_its_own_folder() -> None:
    from lmbff import work_slug

    slugs = [work_slug("prompt-finetune+demos"), work_slug("prompt-finetune+demos", "fp32", 2),
             work_slug("prompt-finetune+demos", "bf16", 2), work_slug("prompt-finetune+demos", "bf16", 8),
             work_slug("prompt-finetune", "bf16")]
    assert slugs == ["prompt-finetune-demos", "prompt-finetune-demos", "prompt-finetune-demos-bf16",
                     "prompt-finetune-demos-bf16-8sets", "prompt-finetune-bf16"]
