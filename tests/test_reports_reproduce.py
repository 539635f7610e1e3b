"""`reproduce`: the plans behind the lecture's tables (built, not run), caching and resume of a small
executed plan on tiny models, and the test-subset option the quick suites use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import transferlm.protocol.compare as compare_mod
import transferlm.reports.reproduce as reproduce_mod
from transferlm.cli import main
from transferlm.config import DataConfig, RunConfig
from transferlm.data.example import Example, TaskData
from transferlm.data.loading import DataOptions, limit_test, load_task
from transferlm.errors import ConfigError, DataError
from transferlm.reports.reproduce import Entry, Plan, PretrainStep, build_plan, execute

LMBFF_LABELS = ["Prompt-based zero-shot", '"GPT-3" in-context learning', "Fine-tuning", "Prompt-based FT (man)",
                "Prompt-based FT (man) + demonstrations", "Prompt-based FT (auto) + demonstrations"]


def test_lmbff_quick_plan() -> None:
    plan = build_plan("lmbff", quick=True, data_dir="/data")
    runs = plan.runs()
    assert [r["label"] for r in runs] == LMBFF_LABELS
    assert {r["task"] for r in runs} == {"SST-2"} and {r["seed"] for r in runs} == {13}
    assert [e.method for e in plan.entries] == ["prompt-zero-shot", "icl", "finetune", "prompt-finetune",
                                                "prompt-finetune", "prompt-finetune"]
    args = {e.label: e.run["method_args"] for e in plan.entries}
    assert args["Prompt-based FT (man)"] == {}
    assert args["Prompt-based FT (man) + demonstrations"] == {"demonstrations": True, "demo_eval_samples": 2}
    assert args["Prompt-based FT (auto) + demonstrations"]["auto"] == "templates"
    for e in plan.entries:
        assert e.run["model"] == "splade-tiny" and e.run["data"] == {"data_dir": "/data", "shots": 16,
                                                                     "max_test": 200}
        assert e.run["train"]["max_steps"] == 16
        RunConfig.from_dict(e.run)  # every entry is a valid run config
    assert len({e.dir for e in plan.entries}) == len(plan.entries)  # one folder per compare
    assert plan.output == "runs/reproduce-lmbff-quick" and not plan.pretrains


def test_lmbff_full_plan_is_the_lectures_table() -> None:
    plan = build_plan("lmbff", data_dir="/data")
    tasks = ["SST-2", "sst-5", "mr", "cr", "trec", "RTE", "MRPC", "QNLI"]
    assert list(dict.fromkeys(e.task for e in plan.entries)) == tasks
    assert len(plan.entries) == 6 * len(tasks) and len(plan.runs()) == 6 * len(tasks) * 5
    assert all(e.seeds == [13, 21, 42, 87, 100] for e in plan.entries)
    assert {e.run["model"] for e in plan.entries} == {"smollm2-135m"}
    assert all("max_test" not in e.run["data"] for e in plan.entries)  # the whole test sets
    # No quick-only shortcuts in the full suite.
    assert all("demo_eval_samples" not in e.run["method_args"] for e in plan.entries)
    ref = {(r["method"], r["task"]): r for r in plan.reference["rows"]}
    assert ref[("Fine-tuning", "SST-2")]["value"] == 81.4 and ref[("Fine-tuning", "SST-2")]["std"] == 3.8


def test_peft_plan_learning_rates_and_overrides() -> None:
    plan = build_plan("peft", quick=True, data_dir="/d", tasks=["RTE", "MRPC"], seeds=[1, 2],
                      overrides={"train.batch_size": 4})
    assert [e.method for e in plan.entries[:6]] == ["finetune", "bitfit", "adapter", "lora", "prefix", "prompt-tuning"]
    lrs = {e.method: e.run["train"]["learning_rate"] for e in plan.entries}
    assert lrs == {"finetune": 5e-5, "bitfit": 1e-3, "adapter": 1e-3, "lora": 1e-3, "prefix": 5e-4,
                   "prompt-tuning": 1e-2}
    assert {e.task for e in plan.entries} == {"RTE", "MRPC"} and len(plan.runs()) == 2 * 6 * 2
    assert all(e.run["train"]["batch_size"] == 4 and e.run["model"] == "minilm-l6" for e in plan.entries)


def test_plan_notes_say_what_the_command_line_changed() -> None:
    plan = build_plan("lmbff", data_dir="/d", max_test=500, overrides={"train.max_steps": 200})
    assert any("at most 500 test examples" in n for n in plan.notes), plan.notes
    assert any("train.max_steps=200" in n for n in plan.notes), plan.notes
    plain = build_plan("lmbff", data_dir="/d")
    assert not any("--set" in n or "--max-test" in n for n in plain.notes)


def test_dapt_plan_chains_pretraining(tmp_path: Path) -> None:
    plan = build_plan("dapt", output=str(tmp_path), data_dir="/d")
    names = [p.name for p in plan.pretrains]
    # acl-arc and sciie share the science-text DAPT model; DAPT + TAPT continues from it.
    assert names.count("DAPT on sci-cite") == 1 and len(plan.pretrains) == 8
    dapt = next(p for p in plan.pretrains if p.name == "DAPT on sci-cite")
    both = next(p for p in plan.pretrains if p.name == "acl-arc DAPT + TAPT")
    assert both.config["model"] == str(tmp_path / dapt.dir) and both.config["texts"] == ["task:acl-arc"]
    assert plan.pretrains.index(dapt) < plan.pretrains.index(both)
    assert dapt.config["texts"] == ["/d/unlabeled/scibert/sci-cite/train.txt"]
    models = {e.label: e.run["model"] for e in plan.entries if e.task == "acl-arc"}
    assert models == {"Base": "minilm-l6", "DAPT": str(tmp_path / dapt.dir),
                      "TAPT": str(tmp_path / "models/acl-arc/tapt"), "DAPT + TAPT": str(tmp_path / both.dir)}
    assert all(e.method == "finetune" for e in plan.entries)
    quick = build_plan("dapt", quick=True, data_dir="/d")
    assert {e.task for e in quick.entries} == {"acl-arc"} and quick.pretrains[0].config["steps"] == 10
    with pytest.raises(ConfigError, match="no domain text"):
        build_plan("dapt", tasks=["trec"], data_dir="/d")
    with pytest.raises(ConfigError, match="unknown suite"):
        build_plan("glue")


def test_reproduce_dry_run_prints_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--suite", "peft", "--dry-run", "--tasks", "RTE", "--seeds", "13,21",
                 "--data-dir", "/d"]) == 0
    out = capsys.readouterr().out
    assert "12 run(s)" in out and out.count("seed 21") == 6
    assert main(["reproduce", "--suite", "dapt", "--dry-run", "--tasks", "acl-arc", "--data-dir", "/d",
                 "--pretrain-set", "steps=7"]) == 0
    out = capsys.readouterr().out
    assert out.count("(7 steps)") == 3 and "(200 steps)" not in out
    assert main(["reproduce", "--suite", "dapt", "--dry-run", "--tasks", "acl-arc", "--data-dir", "/d",
                 "--pretrain-set", "steps"]) != 0
    assert "--pretrain-set expects KEY=VALUE, got 'steps'" in capsys.readouterr().err


# --- executing a small plan on tiny models ------------------------------------------------------------

def _tiny_plan(out: Path, model: Path, data: Path, mlm: Path | None = None) -> Plan:
    run: dict[str, Any] = {"task": "toy", "model": str(model), "quiet": True,
                           "data": {"data_dir": str(data), "shots": 8},
                           "train": {"max_steps": 4, "learning_rate": 3e-3, "eval_every": 2},
                           "method_args": {"dropout": 0}}
    entries = [Entry("FT", "toy", "finetune", "toy/ft", [13], run),
               Entry("BitFit", "toy", "bitfit", "toy/bitfit", [13], {**run, "method_args": {}})]
    pretrains = []
    if mlm is not None:
        pre_dir = "models/tapt"
        pretrains.append(PretrainStep("toy TAPT", pre_dir, {"model": str(mlm), "texts": ["task:toy"], "steps": 2,
                                                            "data_dir": str(data), "head_warmup_steps": 0,
                                                            "eval_every": 0, "batch_size": 4}))
        entries.append(Entry("TAPT", "toy", "finetune", "toy/tapt", [13],
                             {**run, "model": str(out / pre_dir)}))
    return Plan("test", True, str(out), "Tiny suite", entries, pretrains)


def _assert_interrupted_rerun_hides_bitfit(plan, out: Path, monkeypatch: pytest.MonkeyPatch, interrupt,
                                           what: str) -> None:
    """Rerun ``plan`` with compare's run replaced by ``interrupt`` (stopping in BitFit): the report that is
    written shows FT and leaves BitFit's stale summary out, saying so."""
    monkeypatch.setattr(compare_mod, "run", interrupt)
    with pytest.raises(KeyboardInterrupt):
        execute(plan, log=lambda s: None)
    text = (out / "report.md").read_text()
    assert "| FT |" in text
    assert "| BitFit |" not in text, f"{what} are reported as the suite's"
    assert "Not shown: toy/bitfit" in text


def test_rerun_computes_nothing_and_interrupted_plan_continues(tiny_bert: Path, tiny_mlm: Path, toy_data: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    out = tmp_path / "suite"
    plan = _tiny_plan(out, tiny_bert, toy_data, tiny_mlm)
    real_run = compare_mod.run
    calls: list[tuple[str, int]] = []

    def interrupt_on_second(cfg, **kw):
        calls.append((cfg.method, cfg.seed))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(cfg, **kw)

    monkeypatch.setattr(compare_mod, "run", interrupt_on_second)
    first: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        execute(plan, log=first.append)
    assert calls == [("finetune", 13), ("bitfit", 13)]
    # Each pretraining phase reports its perplexity change and speed: the cost the dapt suite measures.
    phase_line = next(line for line in first if "perplexity" in line)
    assert "tapt-toy: perplexity" in phase_line and "tokens/s" in phase_line, first
    assert (out / "suite.json").is_file() and (out / "report.html").is_file()  # the report of what finished

    # Rerun: the finished run and the pretraining are reused; only the rest is computed.
    calls.clear()
    monkeypatch.setattr(compare_mod, "run", lambda cfg, **kw: (calls.append((cfg.method, cfg.seed)),
                                                               real_run(cfg, **kw))[1])
    execute(plan, log=lambda s: None)
    assert calls == [("bitfit", 13), ("finetune", 13)]  # bitfit, then the TAPT model's fine-tuning

    # A second complete call computes nothing at all.
    def fail(*a, **k):
        raise AssertionError("recomputed a finished run")

    monkeypatch.setattr(compare_mod, "run", fail)
    monkeypatch.setattr("transferlm.training.pretrain.pretrain", fail)
    lines: list[str] = []
    files = execute(plan, log=lines.append)
    # The log says which rows came from the cache, so their times are not read as this call's.
    assert sum("1 run(s) reused from the cache" in line for line in lines) == len(plan.entries), lines
    text = files.markdown.read_text()
    assert "| FT |" in text and "| BitFit |" in text and "| TAPT |" in text
    # The pretraining's cost and perplexity, from its pretrain.json, in both report forms.
    phase = json.loads((out / "models" / "tapt" / "pretrain.json").read_text())["phases"][0]
    assert "## Pretraining" in text
    row = next(line for line in text.splitlines() if line.startswith("| toy TAPT |"))
    assert f"| task:toy | 2 | {phase['train_texts']:,} | {phase['perplexity_before']:.1f} → " in row
    assert f"| {phase['tokens_per_second']:.0f} |" in row
    assert 'id="pretraining"' in files.html.read_text() and "toy TAPT" in files.html.read_text()
    assert (out / "toy" / "ft" / "summary.json").is_file()
    from transferlm.reports import collect

    assert all(len(c.curves) == 1 for c in collect([out]).cells), "every trained row has its run's curve"


def test_changed_setting_recomputes_only_that_entry(tiny_bert: Path, toy_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "suite"
    plan = _tiny_plan(out, tiny_bert, toy_data)
    execute(plan, log=lambda s: None, report=False)
    plan.entries[1].run["train"] = {**plan.entries[1].run["train"], "max_steps": 3}
    real_run, calls = compare_mod.run, []
    monkeypatch.setattr(compare_mod, "run", lambda cfg, **kw: (calls.append(cfg.method), real_run(cfg, **kw))[1])
    execute(plan, log=lambda s: None, report=False)
    assert calls == ["bitfit"]


def test_interrupted_rerun_with_a_changed_setting_reports_no_earlier_numbers(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "suite"
    plan = _tiny_plan(out, tiny_bert, toy_data)
    execute(plan, log=lambda s: None, report=False)
    # Rerun with BitFit's steps changed, interrupted while BitFit recomputes: FT comes from the cache (so a
    # report is written), BitFit's folder still holds the summary of its old settings.
    plan.entries[1].run["train"] = {**plan.entries[1].run["train"], "max_steps": 3}

    def interrupt(cfg, **kw):
        raise KeyboardInterrupt

    _assert_interrupted_rerun_hides_bitfit(plan, out, monkeypatch, interrupt, "the old settings' numbers")


def test_bad_plan_fails_before_writing(tmp_path: Path, toy_data: Path) -> None:
    plan = Plan("t", True, str(tmp_path / "o"), "T", [Entry("X", "toy", "no-such-method", "x", [13],
                                                            {"task": "toy", "data": {"data_dir": str(toy_data)}})])
    with pytest.raises(ConfigError):
        execute(plan)
    assert not (tmp_path / "o").exists()


# --- the test-subset option ---------------------------------------------------------------------------

def test_max_test_is_a_fixed_subset_for_every_seed(data_dir: Path) -> None:
    _, a = load_task("SST-2", data_dir, DataOptions(shots=16, seed=13, max_test=50))
    _, b = load_task("SST-2", data_dir, DataOptions(shots=16, seed=21, max_test=50))
    _, full = load_task("SST-2", data_dir, DataOptions(shots=16, seed=13))
    assert len(a.test) == 50 and [e.text_a for e in a.test] == [e.text_a for e in b.test]
    order = {e.text_a: i for i, e in enumerate(full.test)}
    assert [order[e.text_a] for e in a.test] == sorted(order[e.text_a] for e in a.test)  # file order kept
    assert any("max_test" in n for n in a.notes) and len(a.train) == len(full.train)
    data = TaskData([], [], [Example("x", label=0)] * 3)
    assert limit_test(data, 10).test == data.test
    with pytest.raises(DataError):
        limit_test(data, 0)


def test_max_test_in_config_round_trip_and_old_caches_still_match() -> None:
    cfg = RunConfig(data=DataConfig(max_test=100))
    assert RunConfig.from_dict(cfg.to_dict()).data.max_test == 100
    # Unset, the key is left out, so results.json files written before it existed match the config.
    assert "max_test" not in RunConfig().to_dict()["data"]
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


def test_pretrain_settings_override_every_step_and_are_checked() -> None:
    plan = build_plan("dapt", tasks=["acl-arc", "SST-2"], data_dir="/data",
                      pretrain_overrides={"steps": 80, "max_length": 64})
    assert plan.pretrains and all(p.config["steps"] == 80 and p.config["max_length"] == 64 for p in plan.pretrains)
    assert plan.pretrains[0].config["model"] == "minilm-l6", "the steps' own keys are not overridable"
    assert any("steps=80, max_length=64" in n for n in plan.notes), "the report says the budget was changed"
    with pytest.raises(ConfigError, match="unknown pretraining setting 'step'.*steps"):
        build_plan("dapt", tasks=["acl-arc"], data_dir="/data", pretrain_overrides={"step": 80})
    with pytest.raises(ConfigError, match="unknown pretraining setting 'texts'"):
        build_plan("dapt", tasks=["acl-arc"], data_dir="/data", pretrain_overrides={"texts": ["x"]})


def test_pretrain_reuse_needs_the_same_settings(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "pretrain.json").write_text('{"config": {"model": "a", "steps": 10, "quiet": false, "output": "x"}}')
    assert reproduce_mod._pretrain_done(folder, {"model": "a", "steps": 10, "quiet": True})
    assert not reproduce_mod._pretrain_done(folder, {"model": "a", "steps": 20})


def test_pretrain_reuse_compares_dropped_overrides_at_their_defaults(tmp_path: Path) -> None:
    from dataclasses import asdict

    from transferlm.training.pretrain import PretrainConfig

    # Run with --pretrain-set max_length=64, rerun without it: the 64-token model is not the default's.
    short = build_plan("dapt", tasks=["acl-arc"], data_dir="/d", pretrain_overrides={"steps": 80, "max_length": 64})
    plain = build_plan("dapt", tasks=["acl-arc"], data_dir="/d", pretrain_overrides={"steps": 80})
    folder = tmp_path / "dapt"
    folder.mkdir()
    record = asdict(PretrainConfig(**{**short.pretrains[0].config, "output": str(folder), "quiet": True}))
    (folder / "pretrain.json").write_text(json.dumps({"config": record}))
    assert reproduce_mod._pretrain_done(folder, short.pretrains[0].config)
    assert not reproduce_mod._pretrain_done(folder, plain.pretrains[0].config)


def test_a_dapt_pretraining_is_reused_whatever_names_its_phases_were_recorded_under(tiny_bert: Path,
                                                                                   tmp_path: Path) -> None:
    from transferlm.training.pretrain import PretrainConfig, pretrain

    data = tmp_path / "data"
    small = {"steps": 2, "head_warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0, "batch_size": 4,
             "max_eval_texts": 2}
    plan = build_plan("dapt", tasks=["imdb"], model=str(tiny_bert), data_dir=str(data), pretrain_overrides=small)
    step = plan.pretrains[0]
    for text in step.config["texts"]:  # the suite's two dev.json corpora, a few texts each
        Path(text).parent.mkdir(parents=True)
        Path(text).write_text(json.dumps({str(i): {"ori": f"{Path(text).parent.name} review {i} was good"}
                                          for i in range(8)}))
    folder = tmp_path / step.dir
    pretrain(PretrainConfig(**{**step.config, "output": str(folder), "quiet": True}))
    record = json.loads((folder / "pretrain.json").read_text())
    assert [p["phase"] for p in record["phases"]] == ["amazon_review/dev", "yelp_review/dev"]
    assert reproduce_mod._pretrain_done(folder, step.config)
    # Recorded before phases got distinct names (both "dev"): the settings decide reuse, not the names.
    for phase in record["phases"]:
        phase["phase"] = "dev"
    (folder / "pretrain.json").write_text(json.dumps(record))
    assert reproduce_mod._pretrain_done(folder, step.config)


def test_pretraining_rows_name_each_phase_by_its_text_source(tmp_path: Path) -> None:
    from transferlm.reports.collect import load_pretraining

    (tmp_path / "m").mkdir()
    phase = {"phase": "dev", "train_texts": 9, "perplexity_before": 9.0, "perplexity_after": 3.0, "seconds": 2.0,
             "tokens_per_second": 50.0}
    (tmp_path / "m" / "pretrain.json").write_text(json.dumps({"phases": [phase, phase], "config": {"steps": 5}}))
    suite = {"pretrains": [{"name": "DAPT", "dir": "m", "config": {"texts": ["/d/amazon/dev.json", "/d/yelp/dev.json"]}},
                           {"name": "not run yet", "dir": "missing", "config": {"texts": ["task:x"]}}]}
    rows = load_pretraining(tmp_path, suite)
    assert [r["phase"] for r in rows] == ["amazon/dev.json", "yelp/dev.json"]
    assert rows[0]["steps"] == 5 and rows[0]["perplexity_after"] == 3.0


def test_interrupted_rerun_before_anything_is_current_removes_the_old_report(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "suite"
    plan = _tiny_plan(out, tiny_bert, toy_data)
    execute(plan, log=lambda s: None)
    assert "| FT |" in (out / "report.md").read_text()
    for e in plan.entries:  # every entry changes: nothing on disk is of the new settings
        e.run["train"] = {**e.run["train"], "max_steps": 3}

    def interrupt(cfg, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_mod, "run", interrupt)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # the interruption, not a report error, reaches the caller
        execute(plan, log=lines.append)
    assert not (out / "report.md").exists() and not (out / "report.html").exists(), \
        "the old settings' report is left as the suite's"
    assert any("earlier report, of other settings, was removed" in line for line in lines), lines


def test_a_pretraining_on_a_model_folder_rewritten_since_is_not_reused(tiny_bert: Path, tmp_path: Path) -> None:
    # DAPT + TAPT continues from the DAPT folder. Rerun with another --model: DAPT trains again into the same
    # folder, and DAPT + TAPT (same settings: the same folder name) must not be reused from the old DAPT model.
    from transferlm.training.pretrain import PretrainConfig, pretrain

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["the movie was good", "the plot is boring", "a fun story", "I hate it"] * 4) + "\n")
    small = {"texts": [str(text)], "steps": 2, "batch_size": 4, "eval_every": 0, "checkpoint_every": 0,
             "head_warmup_steps": 0, "max_eval_texts": 2, "quiet": True}
    dapt, both = tmp_path / "models" / "dapt", tmp_path / "models" / "dapt-tapt"
    pretrain(PretrainConfig(model=str(tiny_bert), output=str(dapt), **small))
    both_config = {"model": str(dapt), **small}
    pretrain(PretrainConfig(output=str(both), **both_config))
    assert reproduce_mod._pretrain_done(both, both_config)
    pretrain(PretrainConfig(model=str(tiny_bert), output=str(dapt), **{**small, "seed": 21}))  # DAPT again
    assert not reproduce_mod._pretrain_done(both, both_config), "reused a continuation of the old DAPT model"


def test_interrupted_rerun_on_a_rewritten_model_folder_reports_no_earlier_numbers(
        tiny_bert: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    # The dapt suite's entries name their model by folder (models/dapt-...): a rerun that trains that folder
    # again (another --model) keeps every entry's settings. Interrupted while BitFit recomputes, BitFit's
    # folder still holds the summary of the old model: it must not be reported as the suite's.
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    out = tmp_path / "suite"
    plan = _tiny_plan(out, model, toy_data)
    execute(plan, log=lambda s: None, report=False)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rewritten": True}))  # another model, same name
    real_run = compare_mod.run

    def interrupt_bitfit(cfg, **kw):
        if cfg.method == "bitfit":
            raise KeyboardInterrupt
        return real_run(cfg, **kw)

    _assert_interrupted_rerun_hides_bitfit(plan, out, monkeypatch, interrupt_bitfit, "the old model's numbers")


def test_dapt_plan_tapt_leaves_out_the_dev_texts_of_its_own_runs(tmp_path: Path) -> None:
    """Each TAPT step gets the K and seeds of the task's fine-tuning runs, whose dev texts it leaves out."""
    plan = build_plan("dapt", tasks=["acl-arc", "imdb"], data_dir="/d", seeds=[13, 21], shots=8)
    tapt = [p for p in plan.pretrains if p.config["texts"][0].startswith("task:")]
    assert len(tapt) == 4 and all(p.config["tapt_seeds"] == [13, 21] and p.config["tapt_shots"] == 8 for p in tapt)
    assert all(e.seeds == [13, 21] and e.run["data"]["shots"] == 8 for e in plan.entries)
    dapt = [p for p in plan.pretrains if p not in tapt]
    assert dapt and not any("tapt_seeds" in p.config for p in dapt), "DAPT reads no task text: its cache ignores them"
    default = build_plan("dapt", tasks=["acl-arc"], data_dir="/d")
    assert {(p.config.get("tapt_shots"), tuple(p.config.get("tapt_seeds", ()))) for p in default.pretrains[1:]} \
        == {(16, (13, 21, 42, 87, 100))}
    assert build_plan("dapt", quick=True, data_dir="/d").pretrains[1].config["tapt_seeds"] == [13]
    full = build_plan("dapt", tasks=["acl-arc"], data_dir="/d", overrides={"data.shots": "full"})
    assert full.pretrains[1].config["tapt_shots"] is None, "--set data.shots=full: the runs' dev is a full-data one"
    with pytest.raises(ConfigError, match="unknown pretraining setting 'tapt_seeds'"):
        build_plan("dapt", tasks=["acl-arc"], data_dir="/d", pretrain_overrides={"tapt_seeds": [1]})


def test_pretrain_reuse_needs_the_same_tapt_protocol(tmp_path: Path) -> None:
    from dataclasses import asdict

    from transferlm.training.pretrain import PretrainConfig

    step = build_plan("dapt", tasks=["acl-arc"], data_dir="/d", seeds=[13, 21]).pretrains[1]
    folder = tmp_path / "tapt"
    folder.mkdir()
    record = asdict(PretrainConfig(**{**step.config, "output": str(folder)}))
    (folder / "pretrain.json").write_text(json.dumps({"config": record}))
    assert reproduce_mod._pretrain_done(folder, step.config)
    assert not reproduce_mod._pretrain_done(folder, {**step.config, "tapt_seeds": [13, 21, 42]})
    assert not reproduce_mod._pretrain_done(folder, {**step.config, "tapt_shots": 8})
    # A TAPT model from before the dev texts were left out trained on them: redone, even at the defaults.
    old = {k: v for k, v in record.items() if k not in ("tapt_shots", "tapt_seeds")}
    (folder / "pretrain.json").write_text(json.dumps({"config": old}))
    default = build_plan("dapt", tasks=["acl-arc"], data_dir="/d").pretrains
    assert not reproduce_mod._pretrain_done(folder, default[1].config)
    dapt_record = {k: v for k, v in asdict(PretrainConfig(**{**default[0].config, "output": "x"})).items()
                   if k not in ("tapt_shots", "tapt_seeds")}
    (folder / "pretrain.json").write_text(json.dumps({"config": dapt_record}))
    assert reproduce_mod._pretrain_done(folder, default[0].config), "a DAPT record of before is still good"


def test_report_at_the_end_is_of_this_invocations_plan(tiny_bert: Path, toy_data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two invocations for other tasks on one folder: the other's suite.json, written while this one runs, does
    not turn this one's finished runs into 'none of the suite's runs has finished yet'."""
    out = tmp_path / "suite"
    plan = _tiny_plan(out, tiny_bert, toy_data)
    other = Plan("test", True, str(out), "Tiny suite", [Entry("FT", "toy2", "finetune", "toy2/ft", [13],
                                                              {**plan.entries[0].run, "task": "toy2"})])
    real_run = compare_mod.run

    def meanwhile(cfg, **kw):  # the other invocation starts: its suite.json replaces this one's
        reproduce_mod.write_json(out / "suite.json", other.manifest())
        return real_run(cfg, **kw)

    monkeypatch.setattr(compare_mod, "run", meanwhile)
    lines: list[str] = []
    files = execute(plan, log=lines.append)
    assert files is not None, lines
    text = files.markdown.read_text()
    assert "| FT |" in text and "| BitFit |" in text


def test_a_step_another_invocation_is_running_fails_fast_and_says_a_rerun_reuses_it(
        tiny_bert: Path, tiny_mlm: Path, toy_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import hold_lock

    out = tmp_path / "suite"
    plan = _tiny_plan(out, tiny_bert, toy_data, tiny_mlm)

    def fail(*a, **k):
        raise AssertionError("trained a step another invocation is running")

    monkeypatch.setattr("transferlm.training.pretrain.pretrain", fail)
    holder = hold_lock(out / plan.pretrains[0].dir, beside=True)  # the other invocation, in the shared step
    try:
        with pytest.raises(ConfigError) as e:
            execute(plan, log=lambda s: None)
    finally:
        holder.kill()
        holder.wait()
    msg = str(e.value)
    assert f"models/tapt is in use by another transferlm process (pid {holder.pid})" in msg
    assert "run this command again: it reuses the finished step" in msg
    # A compare entry too (the same tasks started twice).
    plan = _tiny_plan(out, tiny_bert, toy_data)
    holder = hold_lock(out / plan.entries[0].dir)
    monkeypatch.setattr(compare_mod, "run", fail)
    try:
        with pytest.raises(ConfigError, match=rf"toy/ft is in use by another transferlm process \(pid {holder.pid}\)"):
            execute(plan, log=lambda s: None)
    finally:
        holder.kill()
        holder.wait()
